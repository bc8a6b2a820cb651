//! Sessions and their scoped tokens, `traceparent`, asynchronous calls with Server-Sent
//! Events, and the runtime WebSocket (its frames judged by the server's pump).

use capmesh_api::{
    AgentFrame, CallEvent, CallRequest, ErrorCode, FRAME_BURST, FrameError, NodeFrame, Principal,
    SessionRequest, TraceId,
};
use capmesh_wire::repr::FixedBytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use crate::{
    fake::{self, Call, Server, guard},
    http::{expect_error, raw},
};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn a_session_token_reaches_calls_and_its_own_session_only() {
    let server = Server::start().await;
    let node = server.client();
    let a = guard("open", node.open_session(&SessionRequest::new("agent-a"))).await.unwrap();
    let b = guard("open", node.open_session(&SessionRequest::new("agent-b"))).await.unwrap();
    assert_eq!(a.token.len(), 64);
    let http = raw();
    let with = |req: reqwest::RequestBuilder| req.bearer_auth(&a.token);

    // Allowed: a call (attributed to the session), status, its own session.
    let body = json!({"capability": fake::answers().to_string(), "args": {}});
    let ok = guard("call", with(http.post(server.url("/v1/call"))).json(&body).send()).await;
    assert_eq!(ok.unwrap().status(), 200);
    let Some(Call::Invoke(principal, ..)) = server.fake.calls().last().cloned() else {
        panic!("{:?}", server.fake.calls())
    };
    assert_eq!(principal, Principal::Session(a.session.id));
    let own = format!("/v1/sessions/{}", a.session.id);
    let ok = guard("own", with(http.get(server.url(&own))).send()).await.unwrap();
    assert_eq!(ok.status(), 200);

    // Refused: what the node's token is for, and another session (as if it did not exist).
    for req in [
        http.get(server.url("/v1/peers")),
        http.get(server.url("/v1/blocked")),
        http.get(server.url("/v1/sessions")),
        http.post(server.url("/v1/sessions")).json(&json!({"name": "x"})),
        http.get(server.url("/v1/receipts")),
        http.post(server.url("/v1/attest")).json(&json!({})),
    ] {
        expect_error(with(req), ErrorCode::Denied).await;
    }
    let other = format!("/v1/sessions/{}", b.session.id);
    expect_error(with(http.get(server.url(&other))), ErrorCode::NotFound).await;
    expect_error(with(http.delete(server.url(&other))), ErrorCode::NotFound).await;

    // Ended: the token no longer opens anything.
    let ended = guard("end", node.end_session(&a.session.id)).await.unwrap();
    assert_eq!(ended.name, "agent-a");
    expect_error(with(http.get(server.url("/v1/status"))), ErrorCode::Unauthorized).await;
    let listed = guard("list", node.sessions()).await.unwrap();
    assert_eq!(listed.sessions.iter().map(|s| s.id).collect::<Vec<_>>(), vec![b.session.id]);
    server.stop().await;
}

#[tokio::test]
async fn traceparent_reaches_the_backend_and_a_malformed_one_is_refused() {
    let server = Server::start().await;
    let http = raw();
    let body = json!({"capability": fake::answers().to_string(), "args": {}});
    let post = || http.post(server.url("/v1/call")).bearer_auth(server.token.as_str()).json(&body);
    let ok = guard("call", post().header("traceparent", TRACEPARENT).send()).await.unwrap();
    assert_eq!(ok.status(), 200);
    let Some(Call::Invoke(_, _, _, trace)) = server.fake.calls().last().cloned() else { panic!() };
    assert_eq!(trace, Some("4bf92f3577b34da6a3ce929d0e0e4736".parse::<TraceId>().unwrap()));
    let before = server.fake.calls().len();
    let message = expect_error(
        post().header("traceparent", "00-zz-00f067aa0ba902b7-01"),
        ErrorCode::BadRequest,
    )
    .await;
    assert!(message.contains("traceparent"), "{message}");
    assert_eq!(server.fake.calls().len(), before, "nothing reached the backend");

    // The client sends its trace as a traceparent.
    let trace = TraceId([5; 16]);
    let client = server.client().with_trace(trace);
    guard("call", client.call(&CallRequest::new(fake::answers(), json!({})))).await.unwrap();
    let Some(Call::Invoke(_, _, _, sent)) = server.fake.calls().last().cloned() else { panic!() };
    assert_eq!(sent, Some(trace));
    server.stop().await;
}

#[tokio::test]
async fn an_asynchronous_call_is_accepted_then_followed_as_server_sent_events() {
    let server = Server::start().await;
    let http = raw();
    let id = [3u8; 16];
    let id_text = data_encoding::BASE64URL_NOPAD.encode(&id);
    let body =
        json!({"capability": fake::answers().to_string(), "args": {"n": 1}, "call_id": id_text});
    let accepted = guard(
        "start",
        http.post(server.url("/v1/calls")).bearer_auth(server.token.as_str()).json(&body).send(),
    )
    .await
    .unwrap();
    assert_eq!(accepted.status(), 202);
    assert_eq!(accepted.headers()["location"], format!("/v1/calls/{id_text}").as_str());
    let answer: Value = accepted.json().await.unwrap();
    assert_eq!(answer["call_id"], id_text);
    assert_eq!(answer["state"], "finding");

    // The raw stream: id, event, data per message; resuming after Last-Event-ID.
    let events = guard(
        "events",
        http.get(server.url(&format!("/v1/calls/{id_text}/events")))
            .bearer_auth(server.token.as_str())
            .header("last-event-id", "2")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let text = guard("body", events.text()).await.unwrap();
    let messages: Vec<&str> = text.split("\n\n").filter(|m| !m.is_empty()).collect();
    assert_eq!(messages.len(), 2, "{text}");
    assert!(messages[0].starts_with("id: 3\nevent: progress\ndata: {"), "{text}");
    assert!(messages[1].starts_with("id: 4\nevent: done\ndata: {"), "{text}");

    // The typed client reads them all, in order, ending after `done`.
    let client = server.client();
    let call_id = FixedBytes(id);
    let stream = guard("events", client.call_events(&call_id, 0)).await.unwrap();
    let all: Vec<_> = guard("read", stream.collect::<Vec<_>>()).await;
    let all: Vec<_> = all.into_iter().map(Result::unwrap).collect();
    let req = CallRequest {
        call_id: Some(call_id),
        ..CallRequest::new(fake::answers(), json!({"n": 1}))
    };
    assert_eq!(all, fake::call_events(call_id, &req));
    assert!(matches!(all.last().unwrap().event, CallEvent::Done { .. }));
    let status = guard("status", client.call_status(&call_id)).await.unwrap();
    assert_eq!(status.result.unwrap().call_id, call_id);

    // Another session cannot see it.
    let s = guard("open", client.open_session(&SessionRequest::new("other"))).await.unwrap();
    let theirs = server.client().with_token(s.token);
    let e = guard("status", theirs.call_status(&call_id)).await.unwrap_err();
    assert!(
        matches!(e, capmesh_api::ClientError::Api(ref a) if a.code == ErrorCode::NotFound),
        "{e}"
    );
    server.stop().await;
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(server: &Server, token: &str, session: &str) -> Socket {
    let mut req = format!("ws://{}/v1/sessions/{session}/runtime", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    guard("connect", tokio_tungstenite::connect_async(req)).await.unwrap().0
}

async fn next_frame(socket: &mut Socket) -> NodeFrame {
    loop {
        match guard("frame", socket.next()).await.unwrap().unwrap() {
            tungstenite::Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn the_runtime_socket_refuses_bad_frames_with_typed_errors_and_stays_open() {
    let server = Server::start().await;
    let node = server.client();
    let s = guard("open", node.open_session(&SessionRequest::new("rt"))).await.unwrap();
    let mut socket = connect(&server, &s.token, &s.session.id.to_string()).await;
    assert_eq!(
        next_frame(&mut socket).await,
        NodeFrame::Welcome { session: s.session.id, capabilities: vec![] }
    );
    let send = |text: &str| tungstenite::Message::Text(text.to_owned().into());

    socket.send(send("{not json")).await.unwrap();
    let NodeFrame::Error { code, .. } = next_frame(&mut socket).await else { panic!() };
    assert_eq!(code, FrameError::BadFrame);
    socket.send(send(r#"{"type":"result","call_id":"c9"}"#)).await.unwrap();
    let NodeFrame::Error { code, call_id, .. } = next_frame(&mut socket).await else { panic!() };
    assert_eq!((code, call_id.as_deref()), (FrameError::BadFrame, Some("c9")));
    socket.send(tungstenite::Message::Binary(vec![1].into())).await.unwrap();
    let NodeFrame::Error { code, .. } = next_frame(&mut socket).await else { panic!() };
    assert_eq!(code, FrameError::BadFrame);
    // Still open: a ping is answered, and reached the backend as a typed frame.
    socket.send(send(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(next_frame(&mut socket).await, NodeFrame::Pong);
    assert_eq!(server.fake.frames.lock().unwrap().as_slice(), &[AgentFrame::Ping]);

    // A flood: beyond the burst, frames are dropped and the agent is told once.
    let flood = FRAME_BURST as usize + 2000;
    let ping = r#"{"type":"error","call_id":"x","message":"m"}"#;
    let mut burst = futures::stream::iter((0..flood).map(|_| Ok(send(ping))));
    guard("flood", socket.send_all(&mut burst)).await.unwrap();
    let mut rate_limited = 0;
    socket.send(send(r#"{"type":"ping"}"#)).await.unwrap();
    // Read until the answer to a last ping after the flood has drained; the bucket refills
    // within a second, so ping again until one is answered.
    let mut pinged = 0;
    loop {
        match next_frame(&mut socket).await {
            NodeFrame::Error { code: FrameError::RateLimited, .. } => rate_limited += 1,
            NodeFrame::Pong => break,
            other => panic!("{other:?}"),
        }
        if rate_limited > 0 && pinged < 50 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            socket.send(send(r#"{"type":"ping"}"#)).await.unwrap();
            pinged += 1;
        }
    }
    assert!(rate_limited >= 1, "the flood was told");
    assert!(rate_limited <= 3, "told once per flood, not per frame: {rate_limited}");
    let received = server.fake.frames.lock().unwrap().len();
    assert!(received < flood, "frames were dropped: {received} of {flood}");

    // Another session's token cannot attach here.
    let other = guard("open", node.open_session(&SessionRequest::new("x"))).await.unwrap();
    let mut req = format!("ws://{}/v1/sessions/{}/runtime", server.addr, s.session.id)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", other.token).parse().unwrap());
    let refused = guard("connect", tokio_tungstenite::connect_async(req)).await.unwrap_err();
    assert!(matches!(&refused, tungstenite::Error::Http(r) if r.status() == 404), "{refused:?}");
    server.stop().await;
}
