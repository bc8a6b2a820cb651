//! What a caller meets when things go wrong, through the typed client.

use std::time::Duration;

use capmesh_api::{ApiError, Client, ClientError, ErrorCode};
use tokio::io::AsyncReadExt;

use crate::fake::{Server, conflicting, guard};

#[tokio::test]
async fn backend_errors_arrive_typed() {
    let server = Server::start().await;
    let error = guard("retire", server.client().retire(conflicting())).await.unwrap_err();
    match error {
        ClientError::Api(ApiError { code: ErrorCode::Conflict, message, call: None }) => {
            assert_eq!(message, "not published by this node");
        }
        other => panic!("expected a Conflict, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized() {
    let server = Server::start().await;
    let client = Client::new(server.addr, "f".repeat(64)).unwrap();
    let error = guard("status", client.status()).await.unwrap_err();
    assert!(
        matches!(&error, ClientError::Api(e) if e.code == ErrorCode::Unauthorized),
        "{error:?}"
    );
    assert!(error.to_string().contains("api.token"), "{error}");
    let error = guard("find", client.find(&capmesh_api::FindRequest::new(crate::fake::cid(1))))
        .await
        .err()
        .unwrap();
    assert!(matches!(&error, ClientError::Api(e) if e.code == ErrorCode::Unauthorized));
    assert_eq!(server.fake.calls(), []);
    server.stop().await;
}

#[test]
fn an_empty_data_dir_has_no_node() {
    let dir = tempfile::tempdir().unwrap();
    let error = Client::from_data_dir(dir.path()).unwrap_err();
    assert!(matches!(&error, ClientError::NotRunning { data_dir } if data_dir == dir.path()));
    let message = error.to_string();
    assert!(message.contains("api.addr") && message.contains("capmesh run"), "{message}");

    std::fs::write(dir.path().join(capmesh_api::ADDR_FILE), "localhost\n").unwrap();
    let error = Client::from_data_dir(dir.path()).unwrap_err();
    assert!(matches!(error, ClientError::Io { .. }), "{error:?}");
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = Client::new(addr, "0".repeat(64)).unwrap();
    let error = guard("status", client.status()).await.unwrap_err();
    assert!(matches!(&error, ClientError::Unreachable { addr: a, .. } if *a == addr), "{error:?}");
    assert!(error.to_string().contains("capmesh run"), "{error}");
}

#[tokio::test]
async fn a_silent_node_times_out() {
    // Accepts and reads, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = vec![0; 4096];
        while socket.read(&mut buf).await.unwrap_or(0) > 0 {}
    });
    let client =
        Client::new(addr, "0".repeat(64)).unwrap().with_timeout(Duration::from_millis(200));
    let error = guard("status", client.status()).await.unwrap_err();
    assert!(matches!(error, ClientError::TimedOut { .. }), "{error:?}");
    silent.abort();
}

#[tokio::test]
async fn an_error_body_that_is_not_ours_keeps_the_status() {
    // A server answering plain text with 503, as a proxy might.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = vec![0; 4096];
        let _ = socket.read(&mut buf).await.unwrap();
        let body = "overloaded";
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(answer.as_bytes()).await.unwrap();
    });
    let client = Client::new(addr, "0".repeat(64)).unwrap();
    let error = guard("status", client.status()).await.unwrap_err();
    match error {
        ClientError::Api(e) => {
            assert_eq!(e.code, ErrorCode::Unavailable);
            assert!(e.message.contains("overloaded"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    server.await.unwrap();
}
