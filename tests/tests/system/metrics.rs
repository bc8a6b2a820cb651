//! Prometheus metrics (DESIGN §8): two nodes on 127.0.0.1, calls and a find, then
//! `GET /metrics` over plain HTTP/1.1 and the values checked against what was done.

use std::{net::SocketAddr, time::Duration};

use capmesh_exec::Builtin;
use capmesh_market::CallRequest;
use capmesh_mesh::FindEvent;
use capmesh_testkit::{TestNode, Testnet, wait_for};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::cap_of;

const T: Duration = Duration::from_secs(30);

/// `GET /metrics` on `node`: the body, after checking status and content type.
async fn scrape(node: &TestNode) -> String {
    let addr = node.node.metrics_addr.expect("metrics are on by default");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains(
            "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
        ),
        "{head}"
    );
    assert!(head.contains("content-length:"), "a whole body, not chunks: {head}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.to_string()
}

/// The value of `series` (name and labels exactly as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of every sample of the family whose lines start with `prefix`.
fn total(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_libp2p_and_capmesh_metrics_that_match_what_it_did() {
    let net =
        Testnet::line(2, |i, o| if i == 0 { o.serve_builtin(Builtin::Echo, 0, 5) } else { o })
            .await
            .unwrap();
    let (provider, caller) = (net.node(0), net.node(1));
    let cap = cap_of(Builtin::Echo);
    wait_for("the advert in the caller's replica", T, || async {
        let have = caller.adverts(&cap);
        if have >= 1 { Ok(()) } else { Err(have) }
    })
    .await;

    // The address file names the endpoint.
    let file =
        std::fs::read_to_string(caller.data_dir().join(capmesh::metrics::ADDR_FILE)).unwrap();
    assert_eq!(file.trim().parse::<SocketAddr>().ok(), caller.node.metrics_addr);

    const CALLS: u64 = 3;
    for n in 0..CALLS {
        let outcome =
            caller.node.market.call(CallRequest::new(cap, json!({"n": n}))).await.unwrap();
        assert_eq!(outcome.output, Some(json!({"n": n})));
    }
    let mut found = caller.node.mesh.find(cap, 5, None);
    let mut hits = 0;
    while let Some(event) = found.recv().await {
        match event {
            FindEvent::Found(_) => hits += 1,
            FindEvent::Done { .. } => break,
        }
    }
    assert!(hits >= 1);

    let text = scrape(caller).await;
    // libp2p's own: swarm, identify, Kademlia, gossipsub (events and its mesh), bandwidth.
    assert!(total(&text, "libp2p_swarm_connections_established_total{") >= 1.0, "{text}");
    for family in [
        "libp2p_identify_",
        "libp2p_kad_",
        "libp2p_gossipsub_",
        "libp2p_bandwidth_bytes_total{",
        "libp2p_ping_",
    ] {
        assert!(text.lines().any(|l| l.starts_with(family)), "no {family} in\n{text}");
    }
    // capmesh's: every call counted as ok, with its duration; no failure.
    let n = CALLS as f64;
    assert_eq!(sample(&text, r#"capmesh_calls_total{outcome="ok"}"#), Some(n), "{text}");
    assert!(!text.contains(r#"capmesh_calls_total{outcome="failed""#), "{text}");
    assert_eq!(
        sample(&text, r#"capmesh_call_duration_seconds_count{outcome="ok"}"#),
        Some(n),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"capmesh_call_duration_seconds_bucket{le="+Inf",outcome="ok"}"#),
        Some(n),
        "{text}"
    );
    let seconds = sample(&text, r#"capmesh_call_duration_seconds_sum{outcome="ok"}"#).unwrap();
    assert!(seconds > 0.0 && seconds < T.as_secs_f64() * n, "{seconds}");
    assert!(sample(&text, "capmesh_find_first_hit_seconds_count").unwrap() >= 1.0, "{text}");
    assert!(sample(&text, "capmesh_find_duration_seconds_count").unwrap() >= 1.0, "{text}");
    assert!(sample(&text, "capmesh_peers_connected").unwrap() >= 1.0, "{text}");
    assert!(sample(&text, "capmesh_routing_table_peers").unwrap() >= 1.0, "{text}");
    assert!(sample(&text, "capmesh_replica_records").unwrap() >= 1.0, "{text}");

    // The provider ran them all, and counts a refusal by its code: a TaskStart under an offer
    // it never made.
    let before = scrape(provider).await;
    assert_eq!(sample(&before, r#"capmesh_runs_total{outcome="ok"}"#), Some(n), "{before}");
    let refused_before =
        sample(&before, r#"capmesh_refusals_total{code="NotFound"}"#).unwrap_or(0.0);
    let raw = capmesh_wire::TaskStart {
        call: capmesh_wire::CallId::random().unwrap(),
        capability: cap,
        offer: cap,
        args: json!({"n": 0}),
        deadline: capmesh::now_ms() + 10_000,
    };
    let refused = caller
        .node
        .mesh
        .request(provider.peer_id(), Vec::new(), raw, Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, capmesh_mesh::MeshError::Remote { code, .. } if *code == capmesh_wire::Code::NotFound),
        "{refused}"
    );
    let after = scrape(provider).await;
    assert_eq!(
        sample(&after, r#"capmesh_refusals_total{code="NotFound"}"#),
        Some(refused_before + 1.0),
        "{after}"
    );

    // Stopped cleanly, the node takes its address file with it.
    let mut net = net;
    let (dir, _) = net.stop(1).await.unwrap();
    assert!(!dir.path().join(capmesh::metrics::ADDR_FILE).exists());
    net.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_listen_address_serves_no_metrics() {
    let net = Testnet::line(1, |_, mut o| {
        o.config.metrics.listen = String::new();
        o
    })
    .await
    .unwrap();
    let node = net.node(0);
    assert_eq!(node.node.metrics_addr, None);
    assert!(!node.data_dir().join(capmesh::metrics::ADDR_FILE).exists());
    net.shutdown().await.unwrap();
}
