//! Measures calls (issue 5), all in one run on this machine:
//! 1. bare request-response: two capmesh-net services, a handler that answers a fixed frame of
//!    the size of a `TaskDone` envelope — libp2p request-response with no envelope work;
//! 2. the floor a warm call cannot avoid, timed alone: caller signs `TaskStart`, provider
//!    verifies it, signs the Receipt and the `TaskDone` envelope, caller verifies both, plus one
//!    ledger append with its flush;
//! 3. the warm call between two nodes (echo builtin), sequential: p50 / p99;
//! 4. throughput with 64 calls in flight, beside bare throughput with 64 requests in flight and
//!    the crypto-bound limit (cores ÷ all signing and verifying a call causes, countersignature
//!    included).
//!
//! Prints a report; asserts nothing.
//! `cargo run --release -p capmesh-testkit --example calls -- [SEQUENTIAL] [PARALLEL_TOTAL]`

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use capmesh_exec::Builtin;
use capmesh_market::CallRequest;
use capmesh_net::{Handler, NetworkService, Verdict};
use capmesh_store::LedgerKind;
use capmesh_testkit::{NodeOpts, Testnet, wait_for};
use capmesh_types::{Cid, NodeKey, PeerId};
use capmesh_wire::{
    CallId, CallStatus, Countersignature, Envelope, Price, Receipt, ReceiptCountersign, Receiver,
    Signed, TaskDone, TaskStart, Validation,
};
use serde_json::json;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Answers every request with the same bytes.
#[derive(Clone)]
struct Fixed(Arc<Vec<u8>>);

impl Handler for Fixed {
    async fn request(&self, _peer: PeerId, _request: Vec<u8>) -> Option<Vec<u8>> {
        Some(self.0.to_vec())
    }
    async fn gossip(&self, _source: PeerId, _data: Vec<u8>) -> Verdict {
        Verdict::Ignore
    }
}

/// A warm call's messages, built as the nodes build them.
struct Sample {
    caller: NodeKey,
    provider: NodeKey,
    start: TaskStart,
    done_output: serde_json::Value,
}

impl Sample {
    fn new() -> Self {
        let caller = NodeKey::from_seed([1; 32]);
        let provider = NodeKey::from_seed([2; 32]);
        let cap = capmesh_contract::check(&Builtin::Echo.contract()).unwrap();
        let args = json!({"text": "hello, mesh", "n": 42});
        let start = TaskStart {
            call: CallId::random().unwrap(),
            capability: cap,
            offer: Cid::of(capmesh_types::Codec::DagCbor, b"offer"),
            args: args.clone(),
            deadline: capmesh::now_ms() + 30_000,
        };
        Self { caller, provider, start, done_output: args }
    }

    fn receipt(&self) -> Receipt {
        let now = capmesh::now_ms();
        Receipt {
            call: self.start.call,
            capability: self.start.capability,
            caller: self.caller.peer_id(),
            provider: self.provider.peer_id(),
            offer: self.start.offer,
            input: capmesh_market::json_digest(&self.start.args).unwrap(),
            output: Some(capmesh_market::json_digest(&self.done_output).unwrap()),
            price: Price { amount: 0, unit: "free".into() },
            started: now,
            ended: now,
            status: CallStatus::Ok,
            validation: Validation::Passed,
        }
    }

    /// The `TaskDone` envelope a provider answers with.
    fn done_envelope(&self) -> Vec<u8> {
        let done = TaskDone {
            call: self.start.call,
            output: Some(self.done_output.clone()),
            error: None,
            receipt: Signed::sign(&self.provider, &self.receipt()).unwrap(),
        };
        Envelope::builder(done)
            .to(self.caller.peer_id())
            .ttl_ms(60_000)
            .sign(&self.provider, capmesh::now_ms())
            .unwrap()
            .to_bytes()
    }

    /// The critical path's crypto: 3 signatures, 3 verifications (envelope, envelope, receipt).
    fn critical_crypto(&self, to_provider: &mut Receiver, to_caller: &mut Receiver) {
        let now = capmesh::now_ms();
        let start = Envelope::builder(self.start.clone())
            .to(self.provider.peer_id())
            .ttl_ms(60_000)
            .sign(&self.caller, now)
            .unwrap()
            .to_bytes();
        to_provider.accept(&start, now).unwrap();
        let done = self.done_envelope();
        let opened = to_caller.accept(&done, now).unwrap();
        let capmesh_wire::Body::TaskDone(d) = opened.payload.body else { unreachable!() };
        d.receipt.verify(now, &Default::default()).unwrap();
    }

    /// The off-path crypto of the countersignature: sign it, sign its envelope; the provider
    /// verifies both.
    fn countersign_crypto(&self, to_provider: &mut Receiver) {
        let now = capmesh::now_ms();
        let cs = Countersignature {
            receipt: Cid::of(capmesh_types::Codec::DagCbor, b"r"),
            caller: self.caller.peer_id(),
            signed: now,
        };
        let signed = Signed::sign(&self.caller, &cs).unwrap();
        let env = Envelope::builder(ReceiptCountersign { countersignature: signed })
            .to(self.provider.peer_id())
            .ttl_ms(60_000)
            .sign(&self.caller, now)
            .unwrap()
            .to_bytes();
        let opened = to_provider.accept(&env, now).unwrap();
        let capmesh_wire::Body::Receipt(r) = opened.payload.body else { unreachable!() };
        let c = r.countersignature.decode(Default::default()).unwrap();
        r.countersignature.check_signature(&c).unwrap();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sequential = args.first().copied().unwrap_or(2000);
    let parallel_total = args.get(1).copied().unwrap_or(5000);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sample = Sample::new();
    let done_bytes = sample.done_envelope();
    let start_bytes = Envelope::builder(sample.start.clone())
        .to(sample.provider.peer_id())
        .ttl_ms(60_000)
        .sign(&sample.caller, capmesh::now_ms())
        .unwrap()
        .to_bytes();
    println!(
        "payload: TaskStart envelope {} B, TaskDone envelope {} B; {cores} cores",
        start_bytes.len(),
        done_bytes.len()
    );

    // 1. Bare request-response.
    let cancel = tokio_util::sync::CancellationToken::new();
    let listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    let cfg = || capmesh_net::Config::default().with_listen(listen.clone()).with_gossip(false);
    let (svc_a, a) = NetworkService::new(&NodeKey::from_seed([11; 32]), cfg())?;
    let (svc_b, b) = NetworkService::new(&NodeKey::from_seed([12; 32]), cfg())?;
    tokio::spawn(svc_a.run(Fixed(Arc::new(Vec::new())), cancel.child_token()));
    tokio::spawn(svc_b.run(Fixed(Arc::new(done_bytes.clone())), cancel.child_token()));
    let b_addr = wait_for("bare listener", Duration::from_secs(10), || async {
        b.listen_addrs().await.ok().and_then(|a| a.first().cloned()).ok_or(())
    })
    .await;
    let b_id = NodeKey::from_seed([12; 32]).peer_id();
    a.request(b_id, vec![b_addr.clone()], start_bytes.clone()).await?;
    let mut bare = Vec::with_capacity(sequential);
    for _ in 0..sequential {
        let t = Instant::now();
        a.request(b_id, Vec::new(), start_bytes.clone()).await?;
        bare.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let bare_tp = {
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for w in 0..64 {
            let (a, body) = (a.clone(), start_bytes.clone());
            let n = parallel_total / 64 + usize::from(w < parallel_total % 64);
            set.spawn(async move {
                for _ in 0..n {
                    a.request(b_id, Vec::new(), body.clone()).await.unwrap();
                }
            });
        }
        while set.join_next().await.is_some() {}
        parallel_total as f64 / t.elapsed().as_secs_f64()
    };
    cancel.cancel();

    // 2. The floor, timed alone (one thread).
    let mut to_provider = Receiver::new(sample.provider.peer_id());
    let mut to_caller = Receiver::new(sample.caller.peer_id());
    let dir = tempfile::tempdir()?;
    let store = capmesh_store::Store::open(dir.path(), Default::default())?;
    let receipt_bytes = Signed::sign(&sample.provider, &sample.receipt()).unwrap().to_bytes();
    let mut crypto = Vec::new();
    let mut flush = Vec::new();
    let mut countersign = Vec::new();
    for _ in 0..sequential {
        let t = Instant::now();
        sample.critical_crypto(&mut to_provider, &mut to_caller);
        crypto.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        store.ledger_append(LedgerKind::Receipt, &receipt_bytes)?;
        flush.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        sample.countersign_crypto(&mut to_provider);
        countersign.push(t.elapsed().as_secs_f64() * 1e6);
    }
    store.close();

    // 3–4. Warm calls between two nodes.
    // The provider admits the load: 128 calls at once, no rate limit to speak of.
    let net = Testnet::line(2, |i, o: NodeOpts| {
        if i > 0 {
            return o;
        }
        o.serve(capmesh::config::ServeEntry {
            contract: None,
            runtime: capmesh_exec::Runtime::Builtin { name: Builtin::Echo },
            price_amount: 0,
            price_unit: "free".into(),
            latency_ms: Some(1),
            timeout_ms: 30_000,
            max_input_bytes: 1 << 20,
            concurrency: 128,
        })
    })
    .await?;
    std::fs::write(
        net.node(0).data_dir().join("policy.toml"),
        "[provider]\nrate_per_sec = 1000000.0\nburst = 1000000\nconcurrency = 128\n",
    )?;
    net.node(0).node.market.policy().reload()?;
    let cap = capmesh_contract::check(&Builtin::Echo.contract())?;
    let caller = net.node(1).node.market.clone();
    wait_for("the advert at the caller", Duration::from_secs(30), || async {
        if net.node(1).has_capability(&cap) { Ok(()) } else { Err(()) }
    })
    .await;
    let args = sample.start.args.clone();
    let first = caller.call(CallRequest::new(cap, args.clone())).await?;
    assert!(!first.warm);
    // An offer covers 1000 calls: the call after that asks for a new one (counted apart).
    let mut warm = Vec::with_capacity(sequential);
    let mut renewed = 0;
    for _ in 0..sequential {
        let t = Instant::now();
        let out = caller.call(CallRequest::new(cap, args.clone())).await?;
        let took = t.elapsed().as_secs_f64() * 1e6;
        if out.warm {
            assert_eq!(out.requests, 1);
            warm.push(took);
        } else {
            renewed += 1;
        }
    }
    let (calls_tp, failed) = {
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for w in 0..64 {
            let (caller, args) = (caller.clone(), args.clone());
            let n = parallel_total / 64 + usize::from(w < parallel_total % 64);
            set.spawn(async move {
                let mut failed = 0;
                for _ in 0..n {
                    if let Err(e) = caller.call(CallRequest::new(cap, args.clone())).await {
                        if failed == 0 {
                            println!("a call failed: {e} ({})", e.code());
                        }
                        failed += 1;
                    }
                }
                failed
            });
        }
        let mut failed = 0;
        while let Some(f) = set.join_next().await {
            failed += f.unwrap();
        }
        (parallel_total as f64 / t.elapsed().as_secs_f64(), failed)
    };
    let provider_stats = net.node(0).node.market.stats();
    let caller_stats = net.node(1).node.market.stats();

    let (bare50, bare99) = (pct(&mut bare, 0.5), pct(&mut bare, 0.99));
    let (crypto50, flush50, cs50) =
        (pct(&mut crypto, 0.5), pct(&mut flush, 0.5), pct(&mut countersign, 0.5));
    let floor = crypto50 + flush50;
    let (warm50, warm99) = (pct(&mut warm, 0.5), pct(&mut warm, 0.99));
    let per_call_crypto = crypto50 + cs50;
    let crypto_limit = cores as f64 / (per_call_crypto / 1e6);
    let bound = crypto_limit.min(bare_tp);
    println!("bare request-response RTT      p50 {bare50:8.1} µs  p99 {bare99:8.1} µs");
    println!("floor: critical-path crypto    p50 {crypto50:8.1} µs (3 signs, 3 verifies)");
    println!("       ledger append + flush   p50 {flush50:8.1} µs");
    println!("       floor total             p50 {floor:8.1} µs");
    println!("off-path countersign crypto    p50 {cs50:8.1} µs (2 signs, 2 verifies)");
    println!(
        "warm call                      p50 {warm50:8.1} µs  p99 {warm99:8.1} µs ({} warm, {renewed} renewed an offer)",
        warm.len()
    );
    println!(
        "  goal p50 ≤ (bare + floor) × 1.2 = {:.1} µs → ratio warm / (bare + floor) = {:.2}",
        (bare50 + floor) * 1.2,
        warm50 / (bare50 + floor)
    );
    println!(
        "throughput, 64 in flight: bare {bare_tp:8.0}/s, calls {calls_tp:8.0}/s ({failed} failed)"
    );
    println!(
        "  crypto-bound limit {crypto_limit:.0}/s ({cores} cores ÷ {per_call_crypto:.1} µs); bound = min(limit, bare) = {bound:.0}/s → calls / bound = {:.2} (goal ≥ 0.80)",
        calls_tp / bound
    );
    println!(
        "provider: {} tasks, {} countersignatures stored, refused {:?}",
        provider_stats.tasks_started,
        provider_stats.countersignatures_stored,
        provider_stats.refused
    );
    println!(
        "provider ledger batches: {} flushes for {} appends; caller: {} flushes for {} receipts, {} countersignatures undelivered",
        provider_stats.ledger_flushes,
        provider_stats.ledger_appends,
        caller_stats.caller_ledger_flushes,
        caller_stats.caller_ledger_receipts,
        caller_stats.countersign_failures
    );
    Ok(())
}
