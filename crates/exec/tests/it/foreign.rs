//! A runtime from outside the crate ([`Foreign`]): the executor checks both sides of it and
//! stops it by dropping its future.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use capmesh_exec::{Builtin, ExecError, Executor, Foreign, Output, Run};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Answers `reply` after `delay`, counting calls and noting whether a call was dropped before
/// it finished.
struct Fake {
    reply: Value,
    delay: Duration,
    calls: AtomicU64,
    dropped: Arc<AtomicBool>,
}

struct SetOnDrop(Arc<AtomicBool>, bool);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

impl Foreign for Fake {
    fn describe(&self) -> String {
        "a fake tool".into()
    }

    fn call(&self, _args: Value) -> Pin<Box<dyn Future<Output = Result<Value, ExecError>> + Send>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (reply, delay) = (self.reply.clone(), self.delay);
        let guard = SetOnDrop(self.dropped.clone(), false);
        Box::pin(async move {
            // Moved in whole (not just the field the block writes), so it drops with the future.
            let mut guard = guard;
            tokio::time::sleep(delay).await;
            guard.1 = true;
            Ok(reply)
        })
    }
}

fn fake(reply: Value, delay: Duration) -> Arc<Fake> {
    Arc::new(Fake { reply, delay, calls: AtomicU64::new(0), dropped: Arc::default() })
}

fn run(timeout: Duration) -> Run {
    Run::new(timeout, CancellationToken::new())
}

#[tokio::test]
async fn checks_args_before_and_output_after() {
    let digest = "0".repeat(64);
    let tool = fake(json!({"digest": digest}), Duration::ZERO);
    let e = Executor::foreign(Builtin::Blake3.contract(), tool.clone()).unwrap();
    assert_eq!(e.runtime(), None);

    let out = e.run(json!({"text": "x"}), run(Duration::from_secs(5))).await.unwrap();
    assert_eq!(out, Output::Value(json!({"digest": digest})));
    assert_eq!((e.runs(), tool.calls.load(Ordering::SeqCst)), (1, 1));

    let refused = e.run(json!({"txt": "x"}), run(Duration::from_secs(5))).await.unwrap_err();
    assert_eq!(refused.code(), capmesh_wire::Code::InvalidArgs);
    assert_eq!(tool.calls.load(Ordering::SeqCst), 1, "bad arguments never reach the runtime");

    let liar = fake(json!({"digest": "short"}), Duration::ZERO);
    let e = Executor::foreign(Builtin::Blake3.contract(), liar).unwrap();
    let err = e.run(json!({"text": "x"}), run(Duration::from_secs(5))).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::OutputInvalid { output, .. } if output == &json!({"digest": "short"})),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_timeout_or_a_cancel_drops_the_call() {
    let tool = fake(json!({}), Duration::from_secs(3600));
    let e = Executor::foreign(Builtin::Echo.contract(), tool.clone()).unwrap();
    let err = e.run(json!({}), run(Duration::from_millis(50))).await.unwrap_err();
    assert!(matches!(err, ExecError::Timeout(_)), "{err:?}");
    assert!(tool.dropped.load(Ordering::SeqCst), "the timed-out call was not dropped");

    let tool = fake(json!({}), Duration::from_secs(3600));
    let e = Executor::foreign(Builtin::Echo.contract(), tool.clone()).unwrap();
    let cancel = CancellationToken::new();
    let running = e.run(json!({}), Run::new(Duration::from_secs(3600), cancel.clone()));
    let (result, ()) = tokio::join!(running, async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        cancel.cancel();
    });
    assert!(matches!(result, Err(ExecError::Cancelled)), "{result:?}");
    assert!(tool.dropped.load(Ordering::SeqCst), "the cancelled call was not dropped");
}

#[test]
fn a_streaming_contract_is_refused() {
    let err =
        Executor::foreign(Builtin::Stream.contract(), fake(json!({}), Duration::ZERO)).unwrap_err();
    assert_eq!(err.code(), capmesh_wire::Code::Internal);
    assert!(err.to_string().contains("a fake tool"), "{err}");
}
