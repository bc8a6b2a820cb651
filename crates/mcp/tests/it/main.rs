//! capmesh-mcp's streamable HTTP transport driven with raw HTTP requests, as browsers and the
//! other SDKs send them: the `Origin` check (DNS rebinding) and the answer to a session
//! `DELETE`. No node is needed: neither the handshake nor a `DELETE` asks the node's API.

#![allow(clippy::unwrap_used)]

use std::{net::SocketAddr, time::Duration};

use capmesh_mcp::{MCP_PATH, MeshTools, Selection};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "sesame";
/// Bound on one exchange: a guard against hangs, never a measurement.
const T: Duration = Duration::from_secs(30);

/// `capmesh mcp --http` in-process, its tools backed by an API address where nothing listens.
async fn serve() -> (SocketAddr, CancellationToken, JoinHandle<()>) {
    let api = capmesh_api::Client::new("127.0.0.1:9".parse().unwrap(), "unused".into()).unwrap();
    // No re-evaluation of the selection: there is no node to ask.
    let selection = Selection { refresh: Duration::ZERO, ..Selection::default() };
    let listener = capmesh_mcp::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let server = tokio::spawn(capmesh_mcp::serve_http(
        listener,
        MeshTools::new(api, selection),
        TOKEN.into(),
        cancel.clone(),
    ));
    let server = tokio::spawn(async move { server.await.unwrap().unwrap() });
    (addr, cancel, server)
}

/// A response's status, headers (names lower-cased) and body (read only when its length is
/// given: an event stream is left open).
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Sends one request with the header lines `headers` (each ending in CRLF).
async fn send(addr: SocketAddr, method: &str, headers: &str, body: &str) -> Answer {
    let request = format!(
        "{method} {MCP_PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\n{headers}Content-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed before the headers ended: {got:?}");
            got.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8(got[..end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap()[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body = got[end + 4..].to_vec();
        let length = headers.iter().find(|(n, _)| n == "content-length");
        if let Some(length) = length.map(|(_, v)| v.parse::<usize>().unwrap()) {
            while body.len() < length {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the connection closed before the body ended");
                body.extend_from_slice(&buf[..n]);
            }
        }
        Answer { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
    };
    tokio::time::timeout(T, exchange).await.expect("an answer")
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#;

fn auth() -> String {
    format!("Authorization: Bearer {TOKEN}\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_from_a_page_not_of_the_loopback_is_refused_with_a_json_rpc_error() {
    let (addr, cancel, server) = serve().await;

    for origin in ["http://evil.example", "http://127.0.0.1.evil.example:8080", "null"] {
        // Refused with or without the token: the Origin is checked first.
        for token in [auth(), String::new()] {
            let headers = format!("Origin: {origin}\r\n{token}");
            let answer = send(addr, "POST", &headers, INITIALIZE).await;
            assert_eq!(answer.status, 403, "{origin}: {answer:?}");
            assert_eq!(answer.header("content-type"), Some("application/json"), "{answer:?}");
            let error: Value = serde_json::from_str(&answer.body).unwrap();
            assert_eq!(error["jsonrpc"], "2.0", "{error}");
            assert_eq!(error["id"], Value::Null, "{error}");
            assert_eq!(error["error"]["code"], -32600, "{error}");
            let message = error["error"]["message"].as_str().unwrap();
            assert!(message.contains("not a loopback origin"), "{message}");
        }
    }

    // Pages of this machine, and clients that send no Origin, get through (to the token check
    // and the SDK).
    for origin in ["Origin: http://localhost:5173\r\n", "Origin: http://127.0.0.1\r\n", ""] {
        let answer = send(addr, "POST", &format!("{origin}{}", auth()), INITIALIZE).await;
        assert_eq!(answer.status, 200, "{origin:?}: {answer:?}");
        assert!(answer.header("mcp-session-id").is_some(), "{answer:?}");
        let answer = send(addr, "POST", origin, INITIALIZE).await;
        assert_eq!(answer.status, 401, "{origin:?} without the token: {answer:?}");
    }

    cancel.cancel();
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_delete_is_answered_204_and_ends_the_session() {
    let (addr, cancel, server) = serve().await;

    let answer = send(addr, "POST", &auth(), INITIALIZE).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let session = answer.header("mcp-session-id").expect("a session id").to_owned();
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let in_session = format!("{}Mcp-Session-Id: {session}\r\n", auth());
    let answer = send(addr, "POST", &in_session, initialized).await;
    assert_eq!(answer.status, 202, "a notification is accepted: {answer:?}");

    let answer = send(addr, "DELETE", &in_session, "").await;
    assert_eq!(answer.status, 204, "{answer:?}");
    assert!(answer.body.is_empty(), "{answer:?}");

    // The session is gone.
    let ping = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
    let answer = send(addr, "POST", &in_session, ping).await;
    assert_eq!(answer.status, 404, "{answer:?}");

    // Without the token, a DELETE is refused before it reaches the session.
    let answer = send(addr, "DELETE", &format!("Mcp-Session-Id: {session}\r\n"), "").await;
    assert_eq!(answer.status, 401, "{answer:?}");

    cancel.cancel();
    server.await.unwrap();
}
