//! libp2p's metrics, recorded by the service into the registry its config names.

use std::sync::{Arc, Mutex};

use capmesh_net::{Registry, SharedRegistry};

use crate::{
    init_logs,
    util::{GUARD, Node, cfg, guard, tcp, wait_for},
};

fn encode(registry: &SharedRegistry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry.lock().expect("registry"))
        .expect("encodable");
    text
}

/// The sum of the samples on lines starting with `prefix`.
fn total(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_identify_and_bandwidth_are_recorded_in_the_given_registry() {
    init_logs();
    let registry: SharedRegistry = Arc::new(Mutex::new(Registry::default()));
    let a = Node::start(41, cfg().with_metrics(registry.clone()), &[tcp()]).await;
    // A node without a registry talks to it as usual.
    let b = Node::start(42, cfg(), &[tcp()]).await;
    b.connect(&a).await;
    let resp = guard("request", b.handle.request(a.id, vec![], b"metered".to_vec())).await;
    assert_eq!(resp.expect("echo"), b"metered".to_vec());

    let text = wait_for("identify recorded", GUARD, async || {
        let text = encode(&registry);
        if total(&text, "libp2p_identify_received_total") >= 1.0 { Ok(text) } else { Err(text) }
    })
    .await;
    assert_eq!(total(&text, "libp2p_swarm_connections_established_total{"), 1.0, "{text}");
    assert!(text.contains(r#"role="Listener""#), "{text}");
    assert!(total(&text, "libp2p_swarm_new_listen_addr_total{") >= 1.0, "{text}");
    // The request's bytes went through the metered transport both ways.
    for direction in ["Inbound", "Outbound"] {
        let bytes: f64 = text
            .lines()
            .filter(|l| l.starts_with("libp2p_bandwidth_bytes_total{") && l.contains(direction))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        assert!(bytes >= "metered".len() as f64, "{direction}: {text}");
    }
    // Gossipsub's own metrics sit under the same prefix.
    assert!(text.contains("libp2p_gossipsub_topic_subscription_status{"), "{text}");
    assert!(text.ends_with("# EOF\n"));
}
