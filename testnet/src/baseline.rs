//! The baseline a run's figures are read against, measured in the same run: the round trip of
//! bare libp2p request-response between two capmesh-net services on 127.0.0.1 (TCP, Noise,
//! Yamux, the `/capmesh/rpc/1.0.0` codec), with a warm call's message sizes and no work behind
//! the answer. A call or a find cannot be faster than one such round trip.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use capmesh_net::{Handler, NetworkService, Verdict};
use capmesh_types::{NodeKey, PeerId};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{replicas::latency, run::Latency};

/// A warm call's TaskStart and TaskDone envelopes (echo builtin), in bytes.
pub(crate) const REQUEST_BYTES: usize = 466;
pub(crate) const RESPONSE_BYTES: usize = 824;
/// Round trips measured.
const SAMPLES: usize = 500;

/// The baseline figures of a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    /// Bare request-response round trip, ms.
    pub bare_rpc_ms: Latency,
    pub samples: usize,
    pub request_bytes: usize,
    pub response_bytes: usize,
}

/// Answers every request with a fixed frame (also the lab's baseline, `lab/run.rs`).
pub(crate) struct Fixed(pub(crate) Arc<Vec<u8>>);

impl Handler for Fixed {
    async fn request(&self, _peer: PeerId, _request: Vec<u8>) -> Option<Vec<u8>> {
        Some(self.0.to_vec())
    }
    async fn gossip(&self, _source: PeerId, _data: Vec<u8>) -> Verdict {
        Verdict::Ignore
    }
}

/// Measures [`SAMPLES`] sequential round trips (after one that connects).
pub async fn measure() -> anyhow::Result<Baseline> {
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let listen: capmesh_net::Multiaddr = "/ip4/127.0.0.1/tcp/0".parse()?;
    let config =
        || capmesh_net::Config::default().with_listen(vec![listen.clone()]).with_gossip(false);
    let (a_key, b_key) = (NodeKey::from_seed([0xa1; 32]), NodeKey::from_seed([0xb2; 32]));
    let (svc_a, a) = NetworkService::new(&a_key, config())?;
    let (svc_b, b) = NetworkService::new(&b_key, config())?;
    tokio::spawn(svc_a.run(Fixed(Arc::new(Vec::new())), cancel.child_token()));
    tokio::spawn(svc_b.run(Fixed(Arc::new(vec![7; RESPONSE_BYTES])), cancel.child_token()));
    let started = Instant::now();
    let addr = loop {
        if let Some(addr) = b.listen_addrs().await?.first().cloned() {
            break addr;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "the baseline never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let body = vec![5; REQUEST_BYTES];
    a.request(b_key.peer_id(), vec![addr], body.clone()).await?;
    let mut rtt = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        a.request(b_key.peer_id(), Vec::new(), body.clone()).await?;
        rtt.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    rtt.sort_by(f64::total_cmp);
    Ok(Baseline {
        bare_rpc_ms: latency(&rtt),
        samples: SAMPLES,
        request_bytes: REQUEST_BYTES,
        response_bytes: RESPONSE_BYTES,
    })
}
