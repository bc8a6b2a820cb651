//! Span export over OTLP (issue 14): two `capmesh run` processes with `--otlp-endpoint` pointed
//! at a stand-in collector on 127.0.0.1; a call made with a `traceparent` is exported by both —
//! the caller's `call` span and the provider's `serve` span — in the agent's trace. The
//! `receipts list --trace` of both nodes finds the call too.

use std::{
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, routing::post};
use capmesh_api::{CallRequest, Client, TraceId};
use capmesh_exec::Builtin;
use capmesh_system_tests::User;
use serde_json::json;

/// Bound on anything awaited: a guard against hangs, never a measurement.
const HANG: Duration = Duration::from_secs(60);

/// Most request bodies the stand-in collector keeps.
const MAX_BODIES: usize = 256;

struct Proc {
    user: User,
    child: Child,
}

impl Proc {
    fn start(config: Option<&str>, otlp: &str, extra: &[&str]) -> Proc {
        let user = User::new();
        if let Some(config) = config {
            user.run(&["init"]).success();
            std::fs::write(user.data_dir.path().join("config.toml"), config).unwrap();
        }
        let mut args = vec![
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--announce-listen-addrs",
            "--otlp-endpoint",
            otlp,
        ];
        args.extend_from_slice(extra);
        let child =
            user.command(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let p = Proc { user, child };
        let deadline = Instant::now() + HANG;
        while !p.user.data_dir.path().join("api.addr").exists() {
            assert!(Instant::now() < deadline, "the node wrote no api.addr");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn addr(&self) -> String {
        let s: serde_json::Value =
            serde_json::from_str(&self.user.run(&["status", "--json"]).success()).unwrap();
        format!("{}/p2p/{}", s["listen_addrs"][0].as_str().unwrap(), s["peer_id"].as_str().unwrap())
    }

    /// SIGTERM, and a clean exit (which flushes the span exporter).
    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + HANG;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "a clean exit on SIGTERM: {status:?}");
                return;
            }
            assert!(Instant::now() < deadline, "the node did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_spans_are_exported_over_otlp_in_the_agents_trace() {
    // The stand-in collector: keeps what is POSTed to /v1/traces.
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let kept = bodies.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                let mut kept = kept.lock().unwrap();
                if kept.len() < MAX_BODIES {
                    kept.push(body.to_vec());
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let config = "[[serve]]\nruntime = { type = \"builtin\", name = \"echo\" }\n";
    let (provider, caller) = tokio::task::spawn_blocking({
        let collector = collector.clone();
        move || {
            let provider = Proc::start(Some(config), &collector, &[]);
            let caller = Proc::start(None, &collector, &["--bootstrap", &provider.addr()]);
            (provider, caller)
        }
    })
    .await
    .unwrap();

    let trace: TraceId = "0af7651916cd43dd8448eb211c80319c".parse().unwrap();
    let client = Client::from_data_dir(caller.user.data_dir.path()).unwrap().with_trace(trace);
    let echo = capmesh_contract::check(&Builtin::Echo.contract()).unwrap();
    let deadline = Instant::now() + HANG;
    let done = loop {
        match client.call(&CallRequest::new(echo, json!({"x": 1}))).await {
            Ok(done) => break done,
            Err(e) => assert!(Instant::now() < deadline, "the call never succeeded: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done.trace, Some(trace));

    // Both ledgers find the call by its trace (the provider keeps its copy within 50 ms).
    for p in [&provider, &caller] {
        let user = &p.user;
        let deadline = Instant::now() + HANG;
        loop {
            let listed = tokio::task::block_in_place(|| {
                user.run(&["receipts", "list", "--trace", &trace.to_string(), "--json"]).success()
            });
            if listed.contains(&done.receipt_id.to_string()) {
                break;
            }
            assert!(Instant::now() < deadline, "no entry with trace {trace}: {listed:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    tokio::task::block_in_place(|| {
        caller.stop();
        provider.stop();
    });
    let bodies = bodies.lock().unwrap().clone();
    let in_trace: Vec<&Vec<u8>> = bodies.iter().filter(|b| contains(b, &trace.0)).collect();
    assert!(
        in_trace.iter().any(|b| contains(b, b"serve")),
        "the provider's serve span in the trace ({} bodies, {} in the trace)",
        bodies.len(),
        in_trace.len()
    );
    assert!(in_trace.iter().any(|b| contains(b, b"call")), "the caller's call span in the trace");
    server.abort();
}
