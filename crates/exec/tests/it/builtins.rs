//! The builtins under their default contracts.

use std::time::{Duration, Instant};

use capmesh_exec::{Builtin, ExecError, Executor, Output, Run, Runtime};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::util::{collect, run};

fn executor(b: Builtin) -> Executor {
    Executor::new(b.contract(), Runtime::Builtin { name: b }).unwrap()
}

#[test]
fn every_default_contract_is_well_formed() {
    assert_eq!(Builtin::ALL.len(), 5);
    for &b in Builtin::ALL {
        let c = b.contract();
        let id = capmesh_contract::check(&c).unwrap_or_else(|e| panic!("{}: {e}", b.name()));
        assert_eq!(c.name, format!("builtin.{}", b.name()));
        assert_eq!(c.version, "1.0.0");
        assert_eq!(c.tags, ["builtin", b.name()]);
        let e = executor(b);
        assert_eq!(e.capability(), id);
        assert_eq!(e.contract(), &c);
        assert_eq!(e.runtime(), Some(&Runtime::Builtin { name: b }));
        assert_eq!(e.runs(), 0);
    }
    let flags = |b: Builtin| {
        let c = b.contract();
        (c.read_only, c.idempotent, c.streaming)
    };
    assert_eq!(flags(Builtin::Echo), (true, true, false));
    assert_eq!(flags(Builtin::Blake3), (true, true, false));
    assert_eq!(flags(Builtin::Sleep), (true, true, false));
    assert_eq!(flags(Builtin::Fail), (true, false, false));
    assert_eq!(flags(Builtin::Stream), (true, true, true));
}

#[tokio::test]
async fn echo_returns_its_arguments() {
    let e = executor(Builtin::Echo);
    let args = json!({"a": [1, 2, {"b": null}], "s": "é"});
    assert_eq!(e.run(args.clone(), run()).await.unwrap(), Output::Value(args));
    assert_eq!(e.runs(), 1);
}

#[tokio::test]
async fn blake3_hashes_the_text() {
    let e = executor(Builtin::Blake3);
    let out = e.run(json!({"text": "abc"}), run()).await.unwrap();
    // The BLAKE3 test vector of "abc".
    let abc = "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85";
    assert_eq!(out, Output::Value(json!({"digest": abc})));
    let out = e.run(json!({"text": "héllo"}), run()).await.unwrap();
    let digest = blake3::hash("héllo".as_bytes()).to_hex();
    assert_eq!(out, Output::Value(json!({"digest": digest.as_str()})));
    assert_eq!(e.runs(), 2);
}

#[tokio::test]
async fn sleep_sleeps_and_reports() {
    let e = executor(Builtin::Sleep);
    let started = Instant::now();
    let out = e.run(json!({"ms": 50}), run()).await.unwrap();
    assert_eq!(out, Output::Value(json!({"slept_ms": 50})));
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(
        e.run(json!({"ms": 0}), run()).await.unwrap(),
        Output::Value(json!({"slept_ms": 0}))
    );
}

#[tokio::test]
async fn sleep_stops_at_the_timeout() {
    let e = executor(Builtin::Sleep);
    let started = Instant::now();
    let limit = Duration::from_millis(200);
    let err = e
        .run(json!({"ms": 3_600_000}), Run::new(limit, CancellationToken::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, ExecError::Timeout(d) if d == limit), "{err:?}");
    assert_eq!(err.code(), capmesh_wire::Code::Timeout);
    assert!(err.retryable());
    // Long before the hour-long sleep would have ended.
    assert!(started.elapsed() < Duration::from_secs(600));
    assert_eq!(e.runs(), 1);
}

#[tokio::test]
async fn sleep_stops_when_cancelled() {
    let e = executor(Builtin::Sleep);
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let (e, cancel) = (e.clone(), cancel.clone());
        let run = Run::new(Duration::from_secs(7200), cancel);
        async move { e.run(json!({"ms": 3_600_000}), run).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    cancel.cancel();
    let err = task.await.unwrap().unwrap_err();
    assert!(matches!(err, ExecError::Cancelled), "{err:?}");
    assert_eq!(err.code(), capmesh_wire::Code::Cancelled);
    assert!(!err.retryable());
    assert!(started.elapsed() < Duration::from_secs(600));
    assert_eq!(e.runs(), 1, "clones share the counter");
}

#[tokio::test]
async fn an_already_cancelled_run_does_not_start() {
    let e = executor(Builtin::Echo);
    let cancel = CancellationToken::new();
    cancel.cancel();
    let err = e.run(json!({}), Run::new(Duration::from_secs(5), cancel)).await.unwrap_err();
    assert!(matches!(err, ExecError::Cancelled), "{err:?}");
    assert_eq!(e.runs(), 0);
}

#[tokio::test]
async fn fail_fails_with_its_message() {
    let e = executor(Builtin::Fail);
    let err = e.run(json!({}), run()).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::Failed(m) if m == "the fail builtin always fails"),
        "{err:?}"
    );
    assert_eq!(err.code(), capmesh_wire::Code::Failed);
    assert!(!err.retryable());
    let err = e.run(json!({"message": "nope"}), run()).await.unwrap_err();
    assert!(matches!(&err, ExecError::Failed(m) if m == "nope"), "{err:?}");
    assert_eq!(e.runs(), 2);
}

#[tokio::test]
async fn stream_sends_chunks_in_order() {
    let e = executor(Builtin::Stream);
    let (tx, rx) = mpsc::channel(1);
    let receiver = tokio::spawn(collect(rx));
    let args = json!({"chunks": ["a", "bb", "", "ccc", "é"], "delay_ms": 5});
    let out = e.run(args, run().with_chunks(tx)).await.unwrap();
    assert_eq!(out, Output::Streamed { chunks: 5 });
    let chunks = receiver.await.unwrap();
    let expected: Vec<Vec<u8>> =
        ["a", "bb", "", "ccc", "é"].iter().map(|s| s.as_bytes().to_vec()).collect();
    assert_eq!(chunks, expected);
    assert_eq!(e.runs(), 1);
}

#[tokio::test]
async fn stream_waits_for_room_in_the_channel() {
    let e = executor(Builtin::Stream);
    let (tx, mut rx) = mpsc::channel(1);
    let task = tokio::spawn({
        let e = e.clone();
        async move { e.run(json!({"chunks": ["1", "2", "3"]}), run().with_chunks(tx)).await }
    });
    // One chunk fits in the channel; the run waits for the receiver before sending the rest.
    assert_eq!(rx.recv().await.unwrap(), b"1");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!task.is_finished());
    assert_eq!(rx.recv().await.unwrap(), b"2");
    assert_eq!(rx.recv().await.unwrap(), b"3");
    assert_eq!(task.await.unwrap().unwrap(), Output::Streamed { chunks: 3 });
}

#[tokio::test]
async fn stream_is_cancelled_between_chunks() {
    let e = executor(Builtin::Stream);
    let (tx, mut rx) = mpsc::channel(4);
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let (e, cancel) = (e.clone(), cancel.clone());
        let args = json!({"chunks": ["first", "never"], "delay_ms": 3_600_000});
        let run = Run::new(Duration::from_secs(7200), cancel).with_chunks(tx);
        async move { e.run(args, run).await }
    });
    assert_eq!(rx.recv().await.unwrap(), b"first");
    cancel.cancel();
    let err = task.await.unwrap().unwrap_err();
    assert!(matches!(err, ExecError::Cancelled), "{err:?}");
    assert_eq!(rx.recv().await, None, "nothing after the cancellation");
}

#[tokio::test]
async fn stream_stops_when_the_receiver_goes_away() {
    let e = executor(Builtin::Stream);
    let (tx, rx) = mpsc::channel(1);
    drop(rx);
    let err = e.run(json!({"chunks": ["a"]}), run().with_chunks(tx)).await.unwrap_err();
    assert!(matches!(err, ExecError::Cancelled), "{err:?}");
}

#[tokio::test]
async fn invalid_arguments_are_refused_before_running() {
    let cases: [(Builtin, Value); 9] = [
        (Builtin::Echo, json!([1, 2])),
        (Builtin::Echo, json!("text")),
        (Builtin::Blake3, json!({})),
        (Builtin::Blake3, json!({"text": 3})),
        (Builtin::Sleep, json!({"ms": -1})),
        (Builtin::Sleep, json!({"ms": 3_600_001})),
        (Builtin::Fail, json!({"message": "x", "extra": true})),
        (Builtin::Stream, json!({"chunks": [1]})),
        (Builtin::Stream, json!({"chunks": vec!["x"; 1025]})),
    ];
    for (b, args) in cases {
        let e = executor(b);
        let (tx, _rx) = mpsc::channel(1);
        let err = e.run(args.clone(), run().with_chunks(tx)).await.unwrap_err();
        let ExecError::InvalidArgs(violations) = &err else { panic!("{b} {args}: {err:?}") };
        assert!(!violations.is_empty());
        assert_eq!(err.code(), capmesh_wire::Code::InvalidArgs);
        assert!(!err.retryable());
        assert!(e.validate_input(&args).is_err());
        assert_eq!(e.runs(), 0, "{b} {args}");
    }
}

#[test]
fn streaming_must_match_the_contract() {
    // The stream builtin needs a streaming contract, the others a non-streaming one.
    let mut c = Builtin::Stream.contract();
    c.streaming = false;
    let err = Executor::new(c, Runtime::Builtin { name: Builtin::Stream }).unwrap_err();
    assert!(matches!(err, ExecError::Config(_)), "{err:?}");
    assert_eq!(err.code(), capmesh_wire::Code::Internal);
    let mut c = Builtin::Echo.contract();
    c.streaming = true;
    let err = Executor::new(c, Runtime::Builtin { name: Builtin::Echo }).unwrap_err();
    assert!(matches!(err, ExecError::Config(_)), "{err:?}");
}

#[tokio::test]
async fn an_output_that_breaks_the_contract_is_refused_and_kept() {
    // A builtin may serve another contract; echo under blake3's returns {"text": …}, which is
    // not blake3's output.
    let e = Executor::new(Builtin::Blake3.contract(), Runtime::Builtin { name: Builtin::Echo })
        .unwrap();
    let err = e.run(json!({"text": "abc"}), run()).await.unwrap_err();
    let ExecError::OutputInvalid { output, violations } = &err else { panic!("{err:?}") };
    assert_eq!(output, &json!({"text": "abc"}));
    assert!(!violations.is_empty());
    assert_eq!(err.code(), capmesh_wire::Code::OutputInvalid);
    assert_eq!(e.runs(), 1);
}

#[test]
fn a_malformed_contract_is_refused() {
    let mut c = Builtin::Echo.contract();
    c.name = "Not A Name".into();
    let err = Executor::new(c, Runtime::Builtin { name: Builtin::Echo }).unwrap_err();
    assert!(matches!(&err, ExecError::Config(m) if m.contains("Not A Name")), "{err:?}");
}

#[tokio::test]
async fn a_streaming_run_needs_a_chunk_sender() {
    let e = executor(Builtin::Stream);
    let err = e.run(json!({"chunks": ["a"]}), run()).await.unwrap_err();
    assert!(matches!(err, ExecError::Config(_)), "{err:?}");
    assert_eq!(e.runs(), 0);
}

#[tokio::test]
async fn a_builtin_under_another_contract_fails_on_arguments_it_cannot_use() {
    // echo's contract admits any object; blake3 needs "text".
    let e = Executor::new(Builtin::Echo.contract(), Runtime::Builtin { name: Builtin::Blake3 })
        .unwrap();
    let err = e.run(json!({"other": 1}), run()).await.unwrap_err();
    assert!(matches!(err, ExecError::Failed(_)), "{err:?}");
}

#[tokio::test]
async fn arguments_checked_once_run_without_a_second_check_and_others_are_checked_again() {
    let sleep = executor(Builtin::Sleep);
    assert!(matches!(sleep.check_args(json!({"ms": "soon"})), Err(ExecError::InvalidArgs(_))));
    let valid = sleep.check_args(json!({"ms": 1})).unwrap();
    assert_eq!(valid.value(), &json!({"ms": 1}));
    let out = sleep
        .run_valid(valid, Run::new(Duration::from_secs(5), CancellationToken::new()))
        .await
        .unwrap();
    assert!(matches!(out, Output::Value(v) if v == json!({"slept_ms": 1})));
    // Checked by echo (any object), run by sleep: sleep's schema is applied.
    let from_echo = executor(Builtin::Echo).check_args(json!({"ms": "soon"})).unwrap();
    let refused = sleep
        .run_valid(from_echo, Run::new(Duration::from_secs(5), CancellationToken::new()))
        .await;
    assert!(matches!(refused, Err(ExecError::InvalidArgs(_))), "{refused:?}");
    assert_eq!(sleep.runs(), 1);
}
