//! Prometheus metrics (DESIGN §8) at `GET /metrics` on loopback, in the OpenMetrics text
//! format. One registry holds two kinds:
//!
//! - **libp2p's own** (`libp2p_*`): registered and recorded by the network service
//!   (`capmesh_net::Config::with_metrics`): swarm, identify, ping, Kademlia, gossipsub,
//!   relay-server and DCUtR events, gossipsub's mesh metrics, bandwidth by transport.
//! - **capmesh's** (`capmesh_*`): a collector that encodes, at each scrape, a snapshot of the
//!   counters the crates already keep — the market's (calls by outcome, call latency, refusals),
//!   the mesh's (find latency), the replica's (records, ingest) and the network's (peers,
//!   gossip verdicts). The crates keep plain counts and histograms (`capmesh_mesh::Latency`)
//!   and know nothing of Prometheus; this module is the only place that does.
//!
//! The bound address is written to `<data dir>/metrics.addr` and removed at shutdown. There is
//! no token: the endpoint is read-only, loopback only, and says nothing a local user could not
//! learn from `capmesh status`.

use std::{
    io,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use capmesh_market::{Market, MarketStats};
use capmesh_mesh::{Latency, Mesh, MeshStats};
use capmesh_net::{NetInfo, NetworkHandle, SharedRegistry};
use capmesh_store::{StatsSnapshot, Store};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::{Registry, Unit},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The file holding the metrics endpoint's address (`127.0.0.1:PORT`).
pub const ADDR_FILE: &str = "metrics.addr";
/// What `GET /metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry for one node, handed to the network service before it starts.
pub(crate) fn new_registry() -> SharedRegistry {
    Arc::new(Mutex::new(Registry::default()))
}

/// Everything capmesh reports, read at one scrape.
#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    pub(crate) market: MarketStats,
    pub(crate) mesh: MeshStats,
    /// `None` when the network task did not answer (shutting down).
    pub(crate) net: Option<NetInfo>,
    pub(crate) replica_records: Option<u64>,
    pub(crate) replica: StatsSnapshot,
}

/// Serves a node's metrics: collects a [`Snapshot`] per scrape and encodes the registry.
#[derive(Debug)]
pub(crate) struct Exporter {
    registry: SharedRegistry,
    snapshot: Arc<Mutex<Snapshot>>,
    market: Market,
    mesh: Mesh,
    store: Store,
    net: NetworkHandle,
}

impl Exporter {
    /// Registers capmesh's collector (prefix `capmesh_`) in `registry`, next to libp2p's.
    pub(crate) fn new(
        registry: SharedRegistry,
        market: Market,
        mesh: Mesh,
        store: Store,
        net: NetworkHandle,
    ) -> Self {
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        lock(&registry)
            .sub_registry_with_prefix("capmesh")
            .register_collector(Box::new(Capmesh { snapshot: snapshot.clone() }));
        Self { registry, snapshot, market, mesh, store, net }
    }

    /// The whole exposition, `# EOF` included.
    async fn scrape(&self) -> Result<String, std::fmt::Error> {
        let snapshot = Snapshot {
            market: self.market.stats(),
            mesh: self.mesh.stats(),
            net: self.net.info().await.ok(),
            // One sled read of a counter: cheap enough for the async task.
            replica_records: self.store.len().ok(),
            replica: self.store.stats(),
        };
        // Concurrent scrapes may encode each other's snapshot: both are current.
        *lock(&self.snapshot) = snapshot;
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &lock(&self.registry))?;
        Ok(body)
    }
}

/// Binds the metrics endpoint (loopback only, checked again here).
pub(crate) async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("metrics are served on loopback only, not {addr}"),
        ));
    }
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` until `shutdown` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    exporter: Arc<Exporter>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let app = Router::new().route("/metrics", get(scrape)).with_state(exporter);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

async fn scrape(State(exporter): State<Arc<Exporter>>) -> Response {
    match exporter.scrape().await {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics\n").into_response()
        }
    }
}

/// Writes `<dir>/metrics.addr` (through a temporary file and a rename: a reader never sees half
/// an address).
pub(crate) fn write_addr(dir: &Path, addr: SocketAddr) -> io::Result<()> {
    let tmp = dir.join(format!(".{ADDR_FILE}.tmp"));
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, dir.join(ADDR_FILE)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Removes `<dir>/metrics.addr`; a file already gone is fine.
pub(crate) fn remove_addr(dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir.join(ADDR_FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// capmesh's metrics, encoded from the last snapshot.
#[derive(Debug)]
struct Capmesh {
    snapshot: Arc<Mutex<Snapshot>>,
}

impl Collector for Capmesh {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = lock(&self.snapshot).clone();
        encode(&snapshot, encoder)
    }
}

/// Every `capmesh_*` metric (the prefix comes from the sub-registry). Counters get `_total`,
/// and units a suffix, from the encoder.
fn encode(s: &Snapshot, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
    let m = &s.market;
    {
        let mut calls = e.encode_descriptor(
            "calls",
            "Calls this node made (caller side), by outcome; failed ones by code",
            None,
            MetricType::Counter,
        )?;
        counter(&mut calls, &[("outcome", "ok")], m.calls_ok)?;
        for (code, n) in &m.calls_failed_by {
            counter(&mut calls, &[("outcome", "failed"), ("code", code)], *n)?;
        }
    }
    {
        let mut latency = e.encode_descriptor(
            "call_duration",
            "Duration of whole calls (caller side: validation, discovery, offers, failovers, receipt), by outcome",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        histogram(&mut latency, &[("outcome", "ok")], &m.call_ok_latency)?;
        histogram(&mut latency, &[("outcome", "failed")], &m.call_failed_latency)?;
    }
    {
        let mut refusals = e.encode_descriptor(
            "refusals",
            "Refusals this node sent to callers (provider side), by code",
            None,
            MetricType::Counter,
        )?;
        for (code, n) in &m.refused {
            counter(&mut refusals, &[("code", code)], *n)?;
        }
    }
    {
        let mut runs = e.encode_descriptor(
            "runs",
            "Capability runs this node made for callers (provider side), by outcome",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in
            [("ok", m.runs_ok), ("failed", m.runs_failed), ("cancelled", m.runs_cancelled)]
        {
            counter(&mut runs, &[("outcome", outcome)], n)?;
        }
    }
    {
        let mut first = e.encode_descriptor(
            "find_first_hit",
            "Time from the start of a find to its first result (finds with one)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        histogram(&mut first, &[] as &[(&str, &str)], &s.mesh.find_first_hit)?;
    }
    {
        let mut whole = e.encode_descriptor(
            "find_duration",
            "Time from the start of a find to its end (done, or its reader gone)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        histogram(&mut whole, &[] as &[(&str, &str)], &s.mesh.find_duration)?;
    }
    if let Some(records) = s.replica_records {
        let mut g = e.encode_descriptor(
            "replica_records",
            "Records held in the replica",
            None,
            MetricType::Gauge,
        )?;
        g.encode_gauge(&records)?;
    }
    {
        let r = &s.replica;
        let mut ingest = e.encode_descriptor(
            "replica_ingested",
            "Records offered to the replica (gossip, sync, find, own), by result",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in [
            ("stored", r.stored),
            ("duplicate", r.duplicates),
            ("invalid", r.refused_verify),
            ("stale", r.refused_stale),
            ("refused", r.refused_other),
            ("over_signer_cap", r.dropped_signer_cap),
            ("over_total_cap", r.dropped_total_cap),
        ] {
            counter(&mut ingest, &[("result", result)], n)?;
        }
    }
    if let Some(net) = &s.net {
        for (name, help, value) in [
            ("peers_connected", "Peers with an established connection", net.connected_peers),
            ("routing_table_peers", "Peers in the Kademlia routing table", net.routing_table_peers),
            ("gossip_peers", "Peers subscribed to the registry topic", net.gossip_peers),
        ] {
            e.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(&value)?;
        }
        let g = &net.gossip;
        {
            let mut gossip = e.encode_descriptor(
                "gossip_messages",
                "Registry gossip messages judged before forwarding, by verdict (ignored includes those dropped for rate or load)",
                None,
                MetricType::Counter,
            )?;
            for (verdict, n) in
                [("accepted", g.accepted), ("ignored", g.ignored), ("rejected", g.rejected)]
            {
                counter(&mut gossip, &[("verdict", verdict)], n)?;
            }
        }
        let h = &net.hole_punch;
        e.encode_descriptor(
            "hole_punch_attempts",
            "Relayed connections this node accepted, on each of which DCUtR starts a hole punch",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&h.attempts, None)?;
        {
            let mut punches = e.encode_descriptor(
                "hole_punches",
                "DCUtR hole punches that ended, by outcome (failed_dial: no direct dial got through; failed_protocol: the DCUtR exchange failed)",
                None,
                MetricType::Counter,
            )?;
            for (outcome, n) in [
                ("succeeded", h.succeeded),
                ("failed_dial", h.failed_dial),
                ("failed_protocol", h.failed_protocol),
            ] {
                counter(&mut punches, &[("outcome", outcome)], n)?;
            }
        }
        let reservations = net.relay_reservations.len() as u64;
        e.encode_descriptor(
            "relay_reservations",
            "Relay reservations held (circuit addresses the relays accepted)",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&reservations)?;
    }
    Ok(())
}

fn counter(
    metric: &mut prometheus_client::encoding::MetricEncoder<'_>,
    labels: &[(&str, &str)],
    value: u64,
) -> Result<(), std::fmt::Error> {
    metric.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn histogram(
    metric: &mut prometheus_client::encoding::MetricEncoder<'_>,
    labels: &[(&str, &str)],
    latency: &Latency,
) -> Result<(), std::fmt::Error> {
    let buckets: Vec<(f64, u64)> = latency.buckets().collect();
    let (sum, count) = (latency.sum_secs(), latency.count);
    if labels.is_empty() {
        return metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None);
    }
    metric.encode_family(&labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use capmesh_net::GossipCounters;
    use capmesh_types::NodeKey;

    use super::*;

    /// The value of the sample `series` (name and labels exactly as printed) in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_snapshot_is_encoded_under_capmesh_names_with_labels_and_values() {
        let registry = new_registry();
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        lock(&registry)
            .sub_registry_with_prefix("capmesh")
            .register_collector(Box::new(Capmesh { snapshot: snapshot.clone() }));
        {
            let mut s = lock(&snapshot);
            s.market.calls_ok = 3;
            s.market.calls_failed = 2;
            s.market.calls_failed_by.insert("Timeout".into(), 2);
            for ms in [3, 4, 40] {
                s.market.call_ok_latency.observe(Duration::from_millis(ms));
            }
            s.market.refused.insert("RateLimited".into(), 4);
            s.mesh.find_first_hit.observe(Duration::from_micros(300));
            s.mesh.find_duration.observe(Duration::from_secs(2));
            s.replica_records = Some(7);
            s.replica.stored = 9;
            s.net = Some(NetInfo {
                peer_id: NodeKey::from_seed([1; 32]).peer_id(),
                listen_addrs: Vec::new(),
                external_addrs: Vec::new(),
                connected_peers: 2,
                kad_server: true,
                routing_table_peers: 5,
                gossip_peers: 1,
                gossip: GossipCounters { accepted: 6, ..Default::default() },
                rpc_dropped: 0,
                providers_dropped: 0,
                reachability: capmesh_net::Reachability::Private,
                relay_reservations: vec!["/ip4/127.0.0.1/tcp/1/p2p-circuit".parse().unwrap()],
                hole_punch: capmesh_net::HolePunchCounters {
                    attempts: 3,
                    succeeded: 2,
                    failed_dial: 1,
                    failed_protocol: 0,
                },
            });
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &lock(&registry)).unwrap();
        for (series, want) in [
            (r#"capmesh_calls_total{outcome="ok"}"#, 3.0),
            (r#"capmesh_calls_total{outcome="failed",code="Timeout"}"#, 2.0),
            (r#"capmesh_call_duration_seconds_count{outcome="ok"}"#, 3.0),
            (r#"capmesh_call_duration_seconds_sum{outcome="ok"}"#, 0.047),
            (r#"capmesh_call_duration_seconds_bucket{le="0.005",outcome="ok"}"#, 2.0),
            (r#"capmesh_call_duration_seconds_bucket{le="+Inf",outcome="ok"}"#, 3.0),
            (r#"capmesh_call_duration_seconds_count{outcome="failed"}"#, 0.0),
            (r#"capmesh_refusals_total{code="RateLimited"}"#, 4.0),
            (r#"capmesh_runs_total{outcome="ok"}"#, 0.0),
            ("capmesh_find_first_hit_seconds_count", 1.0),
            (r#"capmesh_find_first_hit_seconds_bucket{le="0.0005"}"#, 1.0),
            ("capmesh_find_duration_seconds_sum", 2.0),
            ("capmesh_replica_records", 7.0),
            (r#"capmesh_replica_ingested_total{result="stored"}"#, 9.0),
            ("capmesh_peers_connected", 2.0),
            ("capmesh_routing_table_peers", 5.0),
            ("capmesh_gossip_peers", 1.0),
            (r#"capmesh_gossip_messages_total{verdict="accepted"}"#, 6.0),
            ("capmesh_hole_punch_attempts_total", 3.0),
            (r#"capmesh_hole_punches_total{outcome="succeeded"}"#, 2.0),
            (r#"capmesh_hole_punches_total{outcome="failed_dial"}"#, 1.0),
            (r#"capmesh_hole_punches_total{outcome="failed_protocol"}"#, 0.0),
            ("capmesh_relay_reservations", 1.0),
        ] {
            assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
        }
        assert!(text.contains("# TYPE capmesh_calls counter\n"), "{text}");
        assert!(text.contains("# TYPE capmesh_call_duration_seconds histogram\n"), "{text}");
        assert!(text.contains("# UNIT capmesh_call_duration_seconds seconds\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn without_an_answer_from_the_network_its_gauges_are_left_out() {
        let mut text = String::new();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Capmesh {
            snapshot: Arc::new(Mutex::new(Snapshot::default())),
        }));
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("peers_connected"), "{text}");
        assert!(!text.contains("replica_records"), "{text}");
        assert!(text.contains("calls_total"), "{text}");
    }

    #[test]
    fn the_address_file_is_written_whole_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        write_addr(dir.path(), addr).unwrap();
        let text = std::fs::read_to_string(dir.path().join(ADDR_FILE)).unwrap();
        assert_eq!(text.trim().parse::<SocketAddr>().unwrap(), addr);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
        remove_addr(dir.path()).unwrap();
        remove_addr(dir.path()).unwrap();
        assert!(!dir.path().join(ADDR_FILE).exists());
    }
}
