//! The http runtime against a local axum server on 127.0.0.1.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    http::{StatusCode, header},
    routing::post,
};
use capmesh_exec::{ExecError, Executor, HttpSpec, Output, Runtime};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::util::{collect, contract, open_contract, run, streaming_contract};

/// A body sent in `n` pieces of `size` bytes of `byte`, `gap` apart, with no content-length.
fn pieces(n: usize, size: usize, byte: u8, gap: Duration) -> Body {
    let stream = futures::stream::unfold(0, move |i| async move {
        if i == n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        Some((Ok::<_, Infallible>(Bytes::from(vec![byte; size])), i + 1))
    });
    Body::from_stream(stream)
}

/// Serves the test routes on 127.0.0.1:0 and returns the base URL.
async fn server() -> String {
    let app = Router::new()
        // The Json extractor refuses a body not sent as application/json (415).
        .route("/echo", post(|Json(body): Json<Value>| async move { Json(json!({"got": body})) }))
        .route(
            "/fail",
            post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom: disk on fire") }),
        )
        .route("/teapot", post(|| async { (StatusCode::IM_A_TEAPOT, "x".repeat(5000)) }))
        .route("/text", post(|| async { "plain text, not JSON" }))
        .route("/big", post(|| async { Json(json!({"blob": "x".repeat(10_000)})) }))
        .route(
            "/endless",
            post(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    pieces(1000, 1000, b' ', Duration::ZERO),
                )
            }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(1000)).await;
                Json(json!({}))
            }),
        )
        .route("/stream", post(|| async { pieces(3, 4, b'a', Duration::from_millis(20)) }))
        .route(
            "/redirect",
            post(|| async { (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, "/echo")]) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn executor(url: String) -> Executor {
    Executor::new(open_contract("test.http"), Runtime::Http(HttpSpec::new(url))).unwrap()
}

#[tokio::test]
async fn posts_json_and_returns_the_json_answer() {
    let base = server().await;
    let e = executor(format!("{base}/echo"));
    let args = json!({"city": "Lyon", "days": 3});
    let out = e.run(args.clone(), run()).await.unwrap();
    assert_eq!(out, Output::Value(json!({"got": args})));
    assert_eq!(e.runs(), 1);
}

#[tokio::test]
async fn the_answer_is_validated() {
    let base = server().await;
    let c =
        contract("test.http", json!({"type": "object"}), json!({"required": ["result"]}), false);
    let e = Executor::new(c, Runtime::Http(HttpSpec::new(format!("{base}/echo")))).unwrap();
    let err = e.run(json!({"a": 1}), run()).await.unwrap_err();
    let ExecError::OutputInvalid { output, .. } = &err else { panic!("{err:?}") };
    assert_eq!(output, &json!({"got": {"a": 1}}));
}

#[tokio::test]
async fn a_non_2xx_answer_fails_with_its_status_and_body() {
    let base = server().await;
    let err = executor(format!("{base}/fail")).run(json!({}), run()).await.unwrap_err();
    assert!(matches!(&err, ExecError::Failed(m) if m == "HTTP 500: boom: disk on fire"), "{err:?}");
    assert!(!err.retryable());

    let err = executor(format!("{base}/teapot")).run(json!({}), run()).await.unwrap_err();
    let ExecError::Failed(message) = &err else { panic!("{err:?}") };
    assert!(message.starts_with("HTTP 418: xxx") && message.ends_with('…'), "{message}");
    assert!(message.len() < 600, "{}", message.len());

    // Redirects are not followed.
    let err = executor(format!("{base}/redirect")).run(json!({}), run()).await.unwrap_err();
    assert!(matches!(&err, ExecError::Failed(m) if m.starts_with("HTTP 307")), "{err:?}");

    let err = executor(format!("{base}/nowhere")).run(json!({}), run()).await.unwrap_err();
    assert!(matches!(&err, ExecError::Failed(m) if m.starts_with("HTTP 404")), "{err:?}");
}

#[tokio::test]
async fn an_answer_that_is_not_json_fails() {
    let base = server().await;
    let err = executor(format!("{base}/text")).run(json!({}), run()).await.unwrap_err();
    assert!(matches!(&err, ExecError::Failed(m) if m.contains("plain text")), "{err:?}");
}

#[tokio::test]
async fn an_answer_over_the_cap_fails() {
    let base = server().await;
    // Announced by content-length.
    let spec = HttpSpec { max_output_bytes: 1000, ..HttpSpec::new(format!("{base}/big")) };
    let e = Executor::new(open_contract("test.http"), Runtime::Http(spec)).unwrap();
    let err = e.run(json!({}), run()).await.unwrap_err();
    assert!(matches!(&err, ExecError::Failed(m) if m == "output over 1000 bytes"), "{err:?}");
    // Found while reading a body of unknown length (1 000 000 bytes).
    let spec = HttpSpec { max_output_bytes: 5000, ..HttpSpec::new(format!("{base}/endless")) };
    let e = Executor::new(open_contract("test.http"), Runtime::Http(spec)).unwrap();
    let err = e.run(json!({}), run()).await.unwrap_err();
    assert!(matches!(&err, ExecError::Failed(m) if m == "output over 5000 bytes"), "{err:?}");
}

#[tokio::test]
async fn a_slow_service_times_out() {
    let base = server().await;
    let spec = HttpSpec { timeout_ms: 300, ..HttpSpec::new(format!("{base}/slow")) };
    let e = Executor::new(open_contract("test.http"), Runtime::Http(spec)).unwrap();
    let err = e.run(json!({}), run()).await.unwrap_err();
    assert!(matches!(err, ExecError::Timeout(d) if d == Duration::from_millis(300)), "{err:?}");
    assert!(err.retryable());
}

#[tokio::test]
async fn an_unreachable_service_is_an_internal_retryable_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = executor(format!("http://{addr}/run")).run(json!({}), run()).await.unwrap_err();
    assert!(matches!(&err, ExecError::Io(_)), "{err:?}");
    assert_eq!(err.code(), capmesh_wire::Code::Internal);
    assert!(err.retryable());
}

#[tokio::test]
async fn a_streaming_contract_forwards_the_body() {
    let base = server().await;
    let spec = HttpSpec::new(format!("{base}/stream"));
    let e = Executor::new(streaming_contract("test.http"), Runtime::Http(spec)).unwrap();
    let (tx, rx) = mpsc::channel(1);
    let receiver = tokio::spawn(collect(rx));
    let out = e.run(json!({}), run().with_chunks(tx)).await.unwrap();
    let chunks = receiver.await.unwrap();
    assert_eq!(out, Output::Streamed { chunks: chunks.len() as u64 });
    assert_eq!(chunks.concat(), b"aaaaaaaaaaaa");
}

#[test]
fn only_plain_http_urls_are_accepted() {
    for url in ["https://example.com/run", "ftp://example.com/", "/relative", "http://"] {
        let err = Executor::new(open_contract("test.http"), Runtime::Http(HttpSpec::new(url)))
            .unwrap_err();
        assert!(matches!(err, ExecError::Config(_)), "{url}: {err:?}");
    }
    let err = Executor::new(
        open_contract("test.http"),
        Runtime::Http(HttpSpec::new("https://example.com/run")),
    )
    .unwrap_err();
    assert!(err.to_string().contains("TLS is not compiled"), "{err}");
}
