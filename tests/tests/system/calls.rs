//! Calls between real nodes on 127.0.0.1 (in-process): negotiation, receipts, policy,
//! failover, cancellation (DESIGN §5, §6; protocol.md §8.5, §9).

use std::time::Duration;

use capmesh_exec::Builtin;
use capmesh_market::{CallError, CallRequest};
use capmesh_store::{LedgerKind, verify_ledger};
use capmesh_testkit::{Testnet, wait_for};
use capmesh_types::Cid;
use capmesh_wire::{CallStatus, Receipt, Signed, cbor::Limits};
use serde_json::json;

use crate::common::{T, cap_of, receipts_in, sees};

/// A provider (node 0) serving `builtin` at `price` credit, and a caller (node 1) whose replica
/// already holds the advert.
async fn pair(builtin: Builtin, price: u64) -> (Testnet, Cid) {
    let net = Testnet::line(2, |i, o| if i == 0 { o.serve_builtin(builtin, price, 5) } else { o })
        .await
        .unwrap();
    let cap = cap_of(builtin);
    sees(net.node(1), cap, 1).await;
    (net, cap)
}

/// Waits until `provider` has answered one call with `TaskAccepted` (it runs past the inline
/// window).
async fn running_past_its_window(provider: &capmesh_market::Market) {
    wait_for("a call running past its inline window", T, || async {
        let s = provider.stats();
        if s.tasks_deferred == 1 { Ok(()) } else { Err(s) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_across_the_mesh_is_countersigned_and_both_ledgers_verify() {
    // provider 0 — relay 1 — caller 2: the caller learns of the provider by gossip.
    let net =
        Testnet::line(3, |i, o| if i == 0 { o.serve_builtin(Builtin::Blake3, 2, 10) } else { o })
            .await
            .unwrap();
    let (provider, caller) = (net.node(0), net.node(2));
    let cap = cap_of(Builtin::Blake3);
    sees(caller, cap, 1).await;
    let outcome =
        caller.node.market.call(CallRequest::new(cap, json!({"text": "hello"}))).await.unwrap();
    let expected = blake3::hash(b"hello").to_hex().to_string();
    assert_eq!(outcome.output, Some(json!({"digest": expected})));
    assert_eq!(outcome.provider, provider.peer_id());
    assert!(!outcome.warm);
    assert_eq!(outcome.price.amount, 2);
    // The caller's ledger holds the receipt (flushed before the call returned) …
    let receipt = outcome.receipt.verify(capmesh::now_ms(), &Default::default()).unwrap();
    assert_eq!(receipt.record.status, CallStatus::Ok);
    assert_eq!(receipt.record.caller, caller.peer_id());
    let (r, _) = caller.node.store.ledger_find(&outcome.receipt_id).unwrap();
    assert_eq!(r.unwrap().seq, outcome.ledger_seq);
    // … and the provider stores the caller's countersignature beside its own copy.
    wait_for("the provider's countersignature", T, || async {
        match provider.node.store.ledger_find(&outcome.receipt_id).unwrap() {
            (Some(_), Some(cs)) => Ok(cs),
            other => Err(other),
        }
    })
    .await;
    // The counter moves just after the entry is visible in the ledger: wait for it too.
    wait_for("the countersignature counted", T, || async {
        match provider.node.market.stats().countersignatures_stored {
            1 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    wait_for("the caller's own countersignature", T, || async {
        match caller.node.store.ledger_find(&outcome.receipt_id).unwrap() {
            (Some(_), Some(_)) => Ok(()),
            other => Err(other),
        }
    })
    .await;
    for node in [provider, caller] {
        let ledger = node.node.store.ledger().unwrap();
        verify_ledger(&ledger).unwrap();
        assert_eq!(ledger.len(), 2, "a receipt and its countersignature");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_weights_choose_between_a_cheap_and_a_fast_provider() {
    // Node 0 is cheap and slow, node 1 dear and fast; both serve echo. Node 2 calls.
    let net = Testnet::line(3, |i, o| match i {
        0 => o.serve_builtin(Builtin::Echo, 1, 2000),
        1 => o.serve_builtin(Builtin::Echo, 10, 50),
        _ => o,
    })
    .await
    .unwrap();
    let caller = net.node(2);
    let cap = cap_of(Builtin::Echo);
    sees(caller, cap, 2).await;
    let call = |w: &str| CallRequest::new(cap, json!({"w": w})).with_weights(w.parse().unwrap());
    let cheap = caller.node.market.call(call("price=1")).await.unwrap();
    assert_eq!(cheap.provider, net.node(0).peer_id());
    assert_eq!(cheap.output, Some(json!({"w": "price=1"})));
    let fast = caller.node.market.call(call("latency=1")).await.unwrap();
    assert_eq!(fast.provider, net.node(1).peer_id());
    // Both offers stand: the second choice was made among them, warm.
    assert!(fast.warm, "{fast:?}");
    let again = caller.node.market.call(call("price=0.9,latency=0.1")).await.unwrap();
    assert_eq!(again.provider, net.node(0).peer_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_call_is_one_round_trip() {
    let (net, cap) = pair(Builtin::Echo, 0).await;
    let (provider, caller) = (net.node(0), net.node(1));
    let cold = caller.node.market.call(CallRequest::new(cap, json!({"n": 1}))).await.unwrap();
    assert!(!cold.warm);
    assert_eq!(cold.requests, 2, "one Intent, one TaskStart: {cold:?}");
    let intents = provider.node.market.stats().intents_served;
    let started = provider.node.market.stats().tasks_started;
    let warm = caller.node.market.call(CallRequest::new(cap, json!({"n": 2}))).await.unwrap();
    assert!(warm.warm);
    assert_eq!(warm.requests, 1, "TaskStart → TaskDone only: {warm:?}");
    assert_eq!(warm.output, Some(json!({"n": 2})));
    // The provider saw exactly one more TaskStart and no Intent.
    let stats = provider.node.market.stats();
    assert_eq!(stats.intents_served, intents);
    assert_eq!(stats.tasks_started, started + 1);
    assert_eq!(stats.tasks_deferred, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_args_are_refused_by_the_caller_and_again_by_the_provider() {
    let (net, cap) = pair(Builtin::Sleep, 0).await;
    let (provider, caller) = (net.node(0), net.node(1));
    let before = caller.node.market.stats().requests_sent;
    let err =
        caller.node.market.call(CallRequest::new(cap, json!({"ms": "soon"}))).await.unwrap_err();
    assert!(matches!(err, CallError::InvalidArgs(_)), "{err}");
    assert_eq!(err.code(), capmesh_wire::Code::InvalidArgs);
    assert_eq!(caller.node.market.stats().requests_sent, before, "nothing left the caller");
    assert_eq!(provider.node.market.stats().intents_served, 0);
    // Sent raw, past the caller's check: the provider refuses it too, and runs nothing.
    let ok = caller.node.market.call(CallRequest::new(cap, json!({"ms": 1}))).await.unwrap();
    let offer = ok.receipt.decode(Limits::default()).unwrap().offer;
    let raw = capmesh_wire::TaskStart {
        call: capmesh_wire::CallId::random().unwrap(),
        capability: cap,
        offer,
        args: json!({"ms": "soon"}),
        deadline: capmesh::now_ms() + 10_000,
    };
    let refused = caller
        .node
        .mesh
        .request(provider.peer_id(), Vec::new(), raw, Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, capmesh_mesh::MeshError::Remote { code, .. } if *code == capmesh_wire::Code::InvalidArgs),
        "{refused}"
    );
    assert_eq!(provider.node.market.runs(&cap), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthorized_caller_is_denied_then_allowed_after_a_policy_reload() {
    let (net, cap) = pair(Builtin::Echo, 0).await;
    let (provider, caller) = (net.node(0), net.node(1));
    let policy = provider.data_dir().join("policy.toml");
    let generation = provider.node.market.policy().generation();
    std::fs::write(&policy, "[provider]\ndefault = \"deny\"\n").unwrap();
    // The node watches its policy file.
    wait_for("the deny policy loaded", T, || async {
        let g = provider.node.market.policy().generation();
        if g > generation { Ok(()) } else { Err(g) }
    })
    .await;
    let err = caller.node.market.call(CallRequest::new(cap, json!({}))).await.unwrap_err();
    assert_eq!(err.code(), capmesh_wire::Code::PolicyDenied, "{err}");
    let attempt = &err.attempts()[0];
    assert_eq!(attempt.provider, provider.peer_id());
    assert!(attempt.message.contains("not allowed"), "the caller sees the reason: {attempt}");
    assert_eq!(provider.node.market.runs(&cap), Some(0));
    std::fs::write(
        &policy,
        format!("[provider]\ndefault = \"deny\"\nallow = [\"{}\"]\n", caller.peer_id()),
    )
    .unwrap();
    provider.node.market.policy().reload().unwrap(); // what SIGHUP does
    let ok =
        caller.node.market.call(CallRequest::new(cap, json!({"now": "allowed"}))).await.unwrap();
    assert_eq!(ok.output, Some(json!({"now": "allowed"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_refuses_the_excess_calls_with_retry_after() {
    let (net, cap) = pair(Builtin::Echo, 0).await;
    let (provider, caller) = (net.node(0), net.node(1));
    std::fs::write(
        provider.data_dir().join("policy.toml"),
        "[provider]\nrate_per_sec = 0.2\nburst = 3\n",
    )
    .unwrap();
    provider.node.market.policy().reload().unwrap();
    // The burst of 3 covers the Intent (offers spend the rate too) and two calls.
    for i in 0..2 {
        caller.node.market.call(CallRequest::new(cap, json!({"i": i}))).await.unwrap();
    }
    let err = caller.node.market.call(CallRequest::new(cap, json!({"i": 2}))).await.unwrap_err();
    assert_eq!(err.code(), capmesh_wire::Code::RateLimited, "{err}");
    let wait = err.retry_after_ms().expect("a retry-after");
    assert!(wait > 0 && wait <= 5_000, "{wait}");
    assert_eq!(provider.node.market.runs(&cap), Some(2));
    assert_eq!(provider.node.market.stats().refused.get("RateLimited"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_call_id_runs_the_capability_once() {
    let (net, cap) = pair(Builtin::Blake3, 0).await;
    let (provider, caller) = (net.node(0), net.node(1));
    let id = capmesh_wire::CallId::random().unwrap();
    let call = || CallRequest::new(cap, json!({"text": "once"})).with_call_id(id);
    let first = caller.node.market.call(call()).await.unwrap();
    let second = caller.node.market.call(call()).await.unwrap();
    assert_eq!(provider.node.market.runs(&cap), Some(1), "the runtime ran once");
    assert_eq!(provider.node.market.stats().tasks_repeated, 1);
    assert_eq!(first.output, second.output);
    assert_eq!(first.receipt_id, second.receipt_id, "the stored result, same receipt");
    assert_eq!(first.ledger_seq, second.ledger_seq, "kept once in the ledger");
    assert_eq!(receipts_in(caller).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_calls_chain_root_is_in_its_receipt() {
    let (net, cap) = pair(Builtin::Stream, 0).await;
    let caller = net.node(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let chunks = ["alpha", "beta", "", "gamma delta"];
    let outcome = caller
        .node
        .market
        .call(CallRequest::new(cap, json!({"chunks": chunks})).with_chunks(tx))
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Ok(c) = rx.try_recv() {
        got.push(c);
    }
    let want: Vec<Vec<u8>> = chunks.iter().map(|c| c.as_bytes().to_vec()).collect();
    assert_eq!(got, want, "every chunk, in order");
    assert_eq!(outcome.chunks, 4);
    let mut chain = capmesh_market::CHAIN_START;
    for c in &got {
        chain = capmesh_market::chain_next(&chain, c);
    }
    let receipt = outcome.receipt.decode(Limits::default()).unwrap();
    assert_eq!(receipt.output, Some(chain));
    assert_eq!(outcome.stream_root, Some(chain));
    assert_eq!(outcome.output, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_killed_mid_call_is_failed_over_and_only_the_good_call_has_a_receipt() {
    // Node 0 is cheaper and answers later than its inline window; node 1 is the fallback.
    let mut net = Testnet::line(3, |i, o| match i {
        0 => o.serve_builtin(Builtin::Sleep, 1, 5).inline_window(Duration::from_millis(200)),
        1 => o.serve_builtin(Builtin::Sleep, 5, 5),
        _ => o,
    })
    .await
    .unwrap();
    let cap = cap_of(Builtin::Sleep);
    let caller = net.node(2).node.market.clone();
    sees(net.node(2), cap, 2).await;
    let call = tokio::spawn(async move {
        caller
            .call(
                CallRequest::new(cap, json!({"ms": 1500})).with_weights("price=1".parse().unwrap()),
            )
            .await
    });
    let doomed = net.node(0).node.market.clone();
    running_past_its_window(&doomed).await;
    let gone = net.node(0).peer_id();
    net.stop(0).await.unwrap();
    let outcome = call.await.unwrap().unwrap();
    assert_eq!(outcome.provider, net.node(1).peer_id());
    assert_eq!(outcome.output, Some(json!({"slept_ms": 1500})));
    assert_eq!(outcome.attempts.len(), 1, "{:?}", outcome.attempts);
    assert_eq!(outcome.attempts[0].provider, gone);
    let receipts = receipts_in(net.node(2));
    assert_eq!(receipts.len(), 1, "only the call that succeeded: {receipts:?}");
    assert_eq!(receipts[0].provider, net.node(1).peer_id());
    assert_eq!(receipts[0].status, CallStatus::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_call_outlives_the_rpc_timeout() {
    let rpc = Duration::from_millis(1500);
    let net = Testnet::line(2, |i, o| {
        let o = o.rpc_timeout(rpc).inline_window(Duration::from_millis(300));
        if i == 0 { o.serve_builtin(Builtin::Sleep, 0, 5) } else { o }
    })
    .await
    .unwrap();
    let (provider, caller) = (net.node(0), net.node(1));
    let cap = cap_of(Builtin::Sleep);
    sees(caller, cap, 1).await;
    let outcome = caller
        .node
        .market
        .call(CallRequest::new(cap, json!({"ms": 4000})).with_deadline(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(outcome.output, Some(json!({"slept_ms": 4000})));
    assert!(outcome.elapsed > rpc * 2, "{:?}", outcome.elapsed);
    assert_eq!(provider.node.market.stats().tasks_deferred, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_stops_the_providers_runtime() {
    let net = Testnet::line(2, |i, o| {
        if i == 0 {
            o.serve_builtin(Builtin::Sleep, 0, 5).inline_window(Duration::from_millis(200))
        } else {
            o
        }
    })
    .await
    .unwrap();
    let (provider, caller) = (net.node(0), net.node(1));
    let cap = cap_of(Builtin::Sleep);
    sees(caller, cap, 1).await;
    let id = capmesh_wire::CallId::random().unwrap();
    let market = caller.node.market.clone();
    let call = tokio::spawn(async move {
        market.call(CallRequest::new(cap, json!({"ms": 600_000})).with_call_id(id)).await
    });
    running_past_its_window(&provider.node.market).await;
    assert!(caller.node.market.cancel(&id));
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, CallError::Cancelled), "{err}");
    let stats = provider.node.market.stats();
    assert_eq!(stats.runs_cancelled, 1, "{stats:?}");
    // The cancelled run has its receipt, status Cancelled, on both sides.
    let receipts = receipts_in(caller);
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].status, CallStatus::Cancelled);
    assert!(!caller.node.market.cancel(&id), "no longer in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_task_start_is_refused() {
    let (net, cap) = pair(Builtin::Echo, 0).await;
    let (provider, caller) = (net.node(0), net.node(1));
    let first = caller.node.market.call(CallRequest::new(cap, json!({"a": 1}))).await.unwrap();
    let offer = first.receipt.decode(Limits::default()).unwrap().offer;
    // Node 1's key (the testkit seeds node i with [i + 1; 32]).
    let key = capmesh_types::NodeKey::from_seed([2; 32]);
    assert_eq!(key.peer_id(), caller.peer_id());
    let start = capmesh_wire::TaskStart {
        call: capmesh_wire::CallId::random().unwrap(),
        capability: cap,
        offer,
        args: json!({"a": 2}),
        deadline: capmesh::now_ms() + 10_000,
    };
    let envelope = capmesh_wire::Envelope::builder(start)
        .to(provider.peer_id())
        .ttl_ms(60_000)
        .sign(&key, capmesh::now_ms())
        .unwrap()
        .to_bytes();
    let answer = |bytes: Vec<u8>| {
        let e = capmesh_wire::Envelope::from_bytes(&bytes, Limits::default()).unwrap();
        e.decode(Limits::default()).unwrap().body
    };
    let net_handle = &caller.node.net;
    let once = net_handle.request(provider.peer_id(), Vec::new(), envelope.clone()).await.unwrap();
    assert!(matches!(answer(once), capmesh_wire::Body::TaskDone(_)));
    let again = net_handle.request(provider.peer_id(), Vec::new(), envelope).await.unwrap();
    match answer(again) {
        capmesh_wire::Body::Error(e) => assert_eq!(e.code, capmesh_wire::Code::Replay, "{e:?}"),
        other => panic!("a replay answered with {other:?}"),
    }
    assert_eq!(provider.node.market.runs(&cap), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_or_forged_receipt_fails_verification() {
    let (net, cap) = pair(Builtin::Echo, 3).await;
    let caller = net.node(1);
    let outcome = caller.node.market.call(CallRequest::new(cap, json!({"x": 1}))).await.unwrap();
    let mut ledger = caller.node.store.ledger().unwrap();
    verify_ledger(&ledger).unwrap();
    let at = outcome.ledger_seq as usize;
    // One byte of the price changed: the signature no longer holds.
    let mut altered = ledger.clone();
    let receipt = outcome.receipt.decode(Limits::default()).unwrap();
    let mut changed = receipt.clone();
    changed.price.amount = 0;
    let payload = capmesh_wire::cbor::to_vec(&changed).unwrap();
    let forged_bytes = Signed::<Receipt>::from_parts(payload, *outcome.receipt.sig()).to_bytes();
    altered[at].signed = forged_bytes.clone();
    let err = verify_ledger(&altered).unwrap_err();
    assert_eq!(err.seq, outcome.ledger_seq, "{err}");
    // Re-chained so only the signature is wrong, it still fails, on that entry.
    altered[at].hash = capmesh_store::ledger_chain(
        &if at == 0 { capmesh_types::Digest::from_bytes([0; 32]) } else { altered[at - 1].hash },
        LedgerKind::Receipt,
        &forged_bytes,
    );
    let err = verify_ledger(&altered[..=at]).unwrap_err();
    assert!(err.reason.contains("BadSignature"), "{err}");
    // Signed by someone else in the provider's name.
    let mallory = capmesh_types::NodeKey::from_seed([99; 32]);
    let payload = capmesh_wire::cbor::to_vec(&receipt).unwrap();
    let sig = mallory.sign(capmesh_wire::domain::RECEIPT.as_bytes(), &payload);
    let forged = Signed::<Receipt>::from_parts(payload, sig);
    assert!(forged.verify(capmesh::now_ms(), &Default::default()).is_err());
    ledger.truncate(at);
    let prev = ledger.last().map_or(capmesh_types::Digest::from_bytes([0; 32]), |e| e.hash);
    ledger.push(capmesh_store::LedgerEntry {
        seq: at as u64,
        hash: capmesh_store::ledger_chain(&prev, LedgerKind::Receipt, &forged.to_bytes()),
        kind: LedgerKind::Receipt,
        signed: forged.to_bytes(),
    });
    let err = verify_ledger(&ledger).unwrap_err();
    assert_eq!(err.seq, at as u64);
    assert!(err.reason.contains("BadSignature"), "{err}");
}

/// A contract file (JSON) in `dir` with these schemas.
fn contract_file(
    dir: &std::path::Path,
    name: &str,
    input: serde_json::Value,
    output: serde_json::Value,
) -> (std::path::PathBuf, Cid) {
    let mut contract = capmesh_contract::scaffold(name).unwrap();
    contract.input = input;
    contract.output = output;
    let cap = capmesh_contract::check(&contract).unwrap();
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec(&contract).unwrap()).unwrap();
    (path, cap)
}

fn entry(
    contract: std::path::PathBuf,
    runtime: capmesh_exec::Runtime,
    timeout_ms: u64,
) -> capmesh::config::ServeEntry {
    capmesh::config::ServeEntry {
        contract: Some(contract),
        runtime,
        price_amount: 0,
        price_unit: "free".into(),
        latency_ms: Some(5),
        timeout_ms,
        max_input_bytes: 1 << 20,
        concurrency: 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_command_is_killed_at_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let (contract, cap) =
        contract_file(dir.path(), "slow.cmd", json!({"type": "object"}), json!({"type": "object"}));
    // The shell leaves a grandchild that would sleep for 1000 s.
    let script = format!("sleep 1000 & echo $! > {}; wait", pidfile.display());
    let runtime =
        capmesh_exec::Runtime::Command(capmesh_exec::CommandSpec::new(["/bin/sh", "-c", &script]));
    let net = Testnet::line(2, |i, o| {
        if i == 0 { o.serve(entry(contract.clone(), runtime.clone(), 1000)) } else { o }
    })
    .await
    .unwrap();
    let (provider, caller) = (net.node(0), net.node(1));
    sees(caller, cap, 1).await;
    let err = caller.node.market.call(CallRequest::new(cap, json!({}))).await.unwrap_err();
    assert_eq!(err.code(), capmesh_wire::Code::Timeout, "{err}");
    let receipts = receipts_in(caller);
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].status, CallStatus::TimedOut);
    assert!(receipts[0].ended - receipts[0].started >= 1000);
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
    wait_for("the grandchild gone", T, || async {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "));
        if alive { Err(pid.clone()) } else { Ok(()) }
    })
    .await;
    assert_eq!(provider.node.market.stats().runs_failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_runtime_serves_a_call_from_a_local_server() {
    use axum::{Json, Router, routing::post};
    let app = Router::new().route(
        "/sum",
        post(|Json(v): Json<serde_json::Value>| async move {
            Json(json!({"sum": v["a"].as_i64().unwrap_or(0) + v["b"].as_i64().unwrap_or(0)}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sum", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let (contract, cap) = contract_file(
        dir.path(),
        "math.sum",
        json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"sum": {"type": "integer"}}, "required": ["sum"]}),
    );
    let runtime = capmesh_exec::Runtime::Http(capmesh_exec::HttpSpec::new(url));
    let net = Testnet::line(2, |i, o| {
        if i == 0 { o.serve(entry(contract.clone(), runtime.clone(), 10_000)) } else { o }
    })
    .await
    .unwrap();
    let caller = net.node(1);
    sees(caller, cap, 1).await;
    let outcome =
        caller.node.market.call(CallRequest::new(cap, json!({"a": 20, "b": 22}))).await.unwrap();
    assert_eq!(outcome.output, Some(json!({"sum": 42})));
    let receipt = outcome.receipt.decode(Limits::default()).unwrap();
    assert_eq!(receipt.output, Some(capmesh_market::json_digest(&json!({"sum": 42})).unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_require_attestations_from_trusted_issuers_on_both_sides() {
    // 0 provider, 1 caller, 2 an issuer both trust.
    let net =
        Testnet::line(3, |i, o| if i == 0 { o.serve_builtin(Builtin::Echo, 0, 5) } else { o })
            .await
            .unwrap();
    let (provider, caller, issuer) = (net.node(0), net.node(1), net.node(2));
    let cap = cap_of(Builtin::Echo);
    let require = |claim: &str| {
        format!("require = [{{ claim = \"{claim}\", issuers = [\"{}\"] }}]\n", issuer.peer_id())
    };
    std::fs::write(
        provider.data_dir().join("policy.toml"),
        format!("[provider]\n{}", require("member")),
    )
    .unwrap();
    provider.node.market.policy().reload().unwrap();
    std::fs::write(
        caller.data_dir().join("policy.toml"),
        format!("[caller]\n{}", require("audited")),
    )
    .unwrap();
    caller.node.market.policy().reload().unwrap();
    sees(caller, cap, 1).await;
    // The caller refuses the unattested provider before asking it anything.
    let err = caller.node.market.call(CallRequest::new(cap, json!({}))).await.unwrap_err();
    assert_eq!(err.code(), capmesh_wire::Code::PolicyDenied, "{err}");
    assert_eq!(err.attempts()[0].stage, "policy");
    assert_eq!(provider.node.market.stats().intents_served, 0);
    let in_a_day = capmesh::now_ms() + 86_400_000;
    let subject = |p| capmesh_wire::Subject::Peer(p);
    // An attestation travels by gossip only (no sync in this test): the issuer must have a
    // subscribed peer when it publishes (under load its subscriptions can come late).
    wait_for("the issuer's gossip peers", T, || async {
        let peers = issuer.node.net.info().await.unwrap().gossip_peers;
        if peers >= 1 { Ok(()) } else { Err(peers) }
    })
    .await;
    issuer.node.mesh.attest(subject(provider.peer_id()), "audited".into(), in_a_day).await.unwrap();
    wait_for("the provider's attestation at the caller", T, || async {
        let ok = caller
            .node
            .store
            .attested(
                &provider.peer_id(),
                Some("audited"),
                Some(&issuer.peer_id()),
                capmesh::now_ms(),
            )
            .unwrap();
        if ok { Ok(()) } else { Err(()) }
    })
    .await;
    // Now the provider refuses the caller, who holds no "member" claim; the caller sees why.
    let err = caller.node.market.call(CallRequest::new(cap, json!({}))).await.unwrap_err();
    assert_eq!(err.code(), capmesh_wire::Code::PolicyDenied, "{err}");
    assert_eq!(err.attempts()[0].provider, provider.peer_id());
    assert!(err.to_string().contains("member"), "{err}");
    issuer.node.mesh.attest(subject(caller.peer_id()), "member".into(), in_a_day).await.unwrap();
    wait_for("the caller's attestation at the provider", T, || async {
        let ok = provider
            .node
            .store
            .attested(&caller.peer_id(), Some("member"), Some(&issuer.peer_id()), capmesh::now_ms())
            .unwrap();
        if ok { Ok(()) } else { Err(()) }
    })
    .await;
    let ok = caller.node.market.call(CallRequest::new(cap, json!({"in": true}))).await.unwrap();
    assert_eq!(ok.output, Some(json!({"in": true})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_failed_over_under_a_fresh_id_is_still_cancelled_by_its_first_id() {
    // One non-idempotent contract, two providers: node 0 (cheaper) fails at once, node 1 runs
    // long. Failing over takes a fresh call id; the agent still cancels by the one it knows.
    let dir = tempfile::tempdir().unwrap();
    let (contract, cap) = contract_file(
        dir.path(),
        "once.only",
        json!({"type": "object"}),
        json!({"type": "object"}),
    );
    let fails =
        capmesh_exec::Runtime::Command(capmesh_exec::CommandSpec::new(["/bin/sh", "-c", "exit 3"]));
    let hangs = capmesh_exec::Runtime::Command(capmesh_exec::CommandSpec::new([
        "/bin/sh",
        "-c",
        "sleep 600",
    ]));
    let net = Testnet::line(3, |i, o| match i {
        0 => o.serve(capmesh::config::ServeEntry {
            price_amount: 1,
            ..entry(contract.clone(), fails.clone(), 60_000)
        }),
        1 => o
            .serve(capmesh::config::ServeEntry {
                price_amount: 5,
                ..entry(contract.clone(), hangs.clone(), 60_000)
            })
            .inline_window(Duration::from_millis(200)),
        _ => o,
    })
    .await
    .unwrap();
    let caller = net.node(2);
    sees(caller, cap, 2).await;
    let id = capmesh_wire::CallId::random().unwrap();
    let market = caller.node.market.clone();
    let call = tokio::spawn(async move {
        market
            .call(
                CallRequest::new(cap, json!({}))
                    .with_call_id(id)
                    .with_weights("price=1".parse().unwrap()),
            )
            .await
    });
    let long = net.node(1).node.market.clone();
    running_past_its_window(&long).await;
    assert_eq!(net.node(0).node.market.stats().runs_failed, 1);
    assert!(caller.node.market.cancel(&id), "cancel by the first id");
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, CallError::Cancelled), "{err}");
    assert_eq!(long.stats().runs_cancelled, 1);
    assert!(!caller.node.market.cancel(&id), "nothing left in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_task_starts_with_one_call_id_run_once() {
    let (net, cap) = pair(Builtin::Sleep, 0).await;
    let (provider, caller) = (net.node(0), net.node(1));
    let first = caller.node.market.call(CallRequest::new(cap, json!({"ms": 1}))).await.unwrap();
    let offer = first.receipt.decode(Limits::default()).unwrap().offer;
    // Two different envelopes (fresh nonces) with one call id, sent at once by node 1.
    let key = capmesh_types::NodeKey::from_seed([2; 32]);
    let id = capmesh_wire::CallId::random().unwrap();
    let envelope = || {
        let start = capmesh_wire::TaskStart {
            call: id,
            capability: cap,
            offer,
            args: json!({"ms": 300}),
            deadline: capmesh::now_ms() + 10_000,
        };
        capmesh_wire::Envelope::builder(start)
            .to(provider.peer_id())
            .ttl_ms(60_000)
            .sign(&key, capmesh::now_ms())
            .unwrap()
            .to_bytes()
    };
    let (a, b) = (envelope(), envelope());
    assert_ne!(a, b);
    let net_handle = &caller.node.net;
    let (ra, rb) = tokio::join!(
        net_handle.request(provider.peer_id(), Vec::new(), a),
        net_handle.request(provider.peer_id(), Vec::new(), b)
    );
    let kinds: Vec<capmesh_wire::Kind> = [ra.unwrap(), rb.unwrap()]
        .iter()
        .map(|bytes| {
            let e = capmesh_wire::Envelope::from_bytes(bytes, Limits::default()).unwrap();
            e.decode(Limits::default()).unwrap().kind()
        })
        .collect();
    assert!(kinds.contains(&capmesh_wire::Kind::TaskDone), "{kinds:?}");
    assert!(!kinds.contains(&capmesh_wire::Kind::Error), "{kinds:?}");
    assert_eq!(provider.node.market.runs(&cap), Some(2), "the first call, then one run for both");
    assert_eq!(provider.node.market.stats().tasks_repeated, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_offer_forgotten_by_a_restarted_provider_is_renewed() {
    let (mut net, cap) = pair(Builtin::Echo, 0).await;
    let caller = net.node(1).node.market.clone();
    caller.call(CallRequest::new(cap, json!({"n": 1}))).await.unwrap();
    let warm = caller.call(CallRequest::new(cap, json!({"n": 2}))).await.unwrap();
    assert!(warm.warm);
    let (dir, opts) = net.stop(0).await.unwrap();
    net.restart(0, dir, opts).await.unwrap();
    let provider = net.node(0).peer_id();
    wait_for("the restarted provider reconnected", T, || async {
        if net.node(1).node.mesh.connected(provider).await { Ok(()) } else { Err(()) }
    })
    .await;
    let outcome = caller.call(CallRequest::new(cap, json!({"n": 3}))).await.unwrap();
    assert_eq!(outcome.output, Some(json!({"n": 3})));
    assert_eq!(outcome.provider, provider);
    assert!(!outcome.warm, "a new offer was asked for");
    assert_eq!(outcome.attempts.len(), 1, "{:?}", outcome.attempts);
    assert!(
        ["NotFound", "Unreachable"].contains(&outcome.attempts[0].code.as_str()),
        "{:?}",
        outcome.attempts
    );
}
