//! The find stream: events arrive as the backend sends them, in order, and end at `done`.

use capmesh_api::{ClientError, FindEvent, FindRequest};
use futures::StreamExt;
use tokio::sync::oneshot;

use crate::fake::{self, Call, Server, cid, guard};

#[tokio::test]
async fn find_streams_events_as_they_arrive() {
    let server = Server::start().await;
    let (open, gate) = oneshot::channel();
    *server.fake.find_gate.lock().unwrap() = Some(gate);

    let req = FindRequest { capability: cid(1), limit: Some(5), timeout_ms: Some(2_000) };
    let client = server.client();
    let mut events = guard("find", client.find(&req)).await.unwrap();

    // The backend holds its second hit until the gate opens: the first must already be here.
    let first = guard("first hit", events.next()).await.unwrap().unwrap();
    assert_eq!(first, FindEvent::Hit(fake::hit(cid(1), 1)));
    open.send(()).unwrap();

    let second = guard("second hit", events.next()).await.unwrap().unwrap();
    assert_eq!(second, FindEvent::Hit(fake::hit(cid(1), 2)));
    let last = guard("done", events.next()).await.unwrap().unwrap();
    assert_eq!(last, FindEvent::Done(fake::done()));
    // Nothing after the `done`, though the backend sent more.
    assert!(guard("end", events.next()).await.is_none());

    assert_eq!(server.fake.calls(), [Call::Find(req)]);
    server.stop().await;
}

#[tokio::test]
async fn find_without_options_sends_none() {
    let server = Server::start().await;
    let req = FindRequest::new(cid(2));
    let events: Vec<_> =
        guard("find", server.client().find(&req).await.unwrap().collect::<Vec<_>>()).await;
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(Result::is_ok));
    assert_eq!(server.fake.calls(), [Call::Find(req)]);
    server.stop().await;
}

#[tokio::test]
async fn the_raw_stream_is_ndjson() {
    let server = Server::start().await;
    let response = crate::http::raw()
        .get(server.url(&format!("/v1/find/{}", cid(3))))
        .bearer_auth(server.token.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = guard("body", response.text()).await.unwrap();
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(text.ends_with('\n'));
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["hit"]["source"], "replica");
    assert_eq!(lines[1]["hit"]["source"], "kademlia");
    assert_eq!(
        lines[2],
        serde_json::json!({"done": {"hits": 2, "kad_requests": 2, "elapsed_ms": 3, "error": null}})
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_an_open_stream() {
    let server = Server::start().await;
    let (_hold, gate) = oneshot::channel::<()>();
    *server.fake.find_hold.lock().unwrap() = Some(gate);
    let client = server.client();
    let mut events = guard("find", client.find(&FindRequest::new(cid(1)))).await.unwrap();
    assert!(matches!(guard("hit", events.next()).await, Some(Ok(FindEvent::Hit(_)))));

    // The backend still holds the channel open; the server must not wait for it.
    server.stop().await;
    let end = guard("end", events.next()).await;
    assert!(matches!(end, Some(Err(ClientError::Incomplete))), "{end:?}");
    assert!(guard("after", events.next()).await.is_none());
}
