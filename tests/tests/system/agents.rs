//! Agents on running nodes (specs/api.md §4): sessions, runtimes attached over the local API's
//! WebSocket and served on the mesh, asynchronous calls followed as Server-Sent Events, trace
//! ids through both ledgers. Real nodes in-process on 127.0.0.1; each agent is a WebSocket
//! client in the test.

use std::time::Duration;

use capmesh_api::{
    AgentFrame, Announcement, CallEvent, CallRequest, CallState, CancelReason, Client, ClientError,
    ErrorCode, FrameError, NodeFrame, SessionRequest, TraceId,
};
use capmesh_store::verify_ledger;
use capmesh_testkit::{NodeOpts, TestNode, Testnet, wait_for};
use capmesh_types::Cid;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use crate::common::T;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn client(node: &TestNode) -> Client {
    Client::new(node.node.api_addr, node.node.api_token.clone()).unwrap()
}

/// A contract whose output is `{"text": <upper-cased input>}` (or streamed chunks).
fn upper(name: &str, streaming: bool) -> Value {
    json!({
        "name": name,
        "version": "1.0.0",
        "description": "upper-cases text",
        "input": {"type": "object", "properties": {"text": {"type": "string"}},
                  "required": ["text"], "additionalProperties": false},
        "output": {"type": "object", "properties": {"text": {"type": "string"}},
                   "required": ["text"], "additionalProperties": false},
        "tags": ["agent-test"],
        "read_only": true,
        "idempotent": true,
        "streaming": streaming,
    })
}

fn id_of(contract: &Value) -> Cid {
    let c: capmesh_wire::Contract = serde_json::from_value(contract.clone()).unwrap();
    capmesh_contract::check(&c).unwrap()
}

/// An agent: a session on a node and its runtime socket.
struct Agent {
    session: capmesh_api::SessionInfo,
    token: String,
    socket: Socket,
}

impl Agent {
    async fn open(node: &TestNode, name: &str, ttl_secs: Option<u64>) -> Agent {
        let mut req = SessionRequest::new(name);
        req.ttl_secs = ttl_secs;
        req.metadata.insert("model".into(), json!("test"));
        let created = client(node).open_session(&req).await.unwrap();
        let mut agent = Agent {
            socket: connect(node, &created.token, &created.session.id.to_string()).await,
            session: created.session,
            token: created.token,
        };
        let welcome = agent.next().await;
        assert!(
            matches!(welcome, NodeFrame::Welcome { session, .. } if session == agent.session.id)
        );
        agent
    }

    async fn send(&mut self, frame: &AgentFrame) {
        let text = serde_json::to_string(frame).unwrap();
        self.socket.send(tungstenite::Message::Text(text.into())).await.unwrap();
    }

    async fn send_text(&mut self, text: &str) {
        self.socket.send(tungstenite::Message::Text(text.to_owned().into())).await.unwrap();
    }

    async fn next(&mut self) -> NodeFrame {
        loop {
            let msg = tokio::time::timeout(T, self.socket.next()).await.expect("a frame in time");
            match msg.expect("the socket is open").expect("a frame") {
                tungstenite::Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Announces `contracts` and waits until they are served.
    async fn announce(&mut self, contracts: &[Value]) -> Vec<Cid> {
        let capabilities = contracts
            .iter()
            .map(|c| Announcement {
                contract: c.clone(),
                price: None,
                limits: None,
                latency_ms: None,
            })
            .collect();
        self.send(&AgentFrame::Announce { capabilities }).await;
        match self.next().await {
            NodeFrame::Announced { capabilities } => {
                capabilities.iter().map(|c| c.capability).collect()
            }
            other => panic!("announce answered {other:?}"),
        }
    }

    /// Answers calls by upper-casing until the socket closes; the frames it sees go to `seen`.
    fn serve(mut self, seen: mpsc::Sender<NodeFrame>) -> tokio::task::JoinHandle<Agent> {
        tokio::spawn(async move {
            loop {
                let Some(Ok(msg)) = self.socket.next().await else { return self };
                let tungstenite::Message::Text(t) = msg else { continue };
                let frame: NodeFrame = serde_json::from_str(t.as_str()).unwrap();
                if let NodeFrame::Call { call_id, args, .. } = &frame {
                    let text = args["text"].as_str().unwrap_or_default().to_uppercase();
                    let answer = AgentFrame::Result {
                        call_id: call_id.clone(),
                        output: json!({"text": text}),
                    };
                    self.send(&answer).await;
                }
                // Frames nobody reads past the queue are dropped: the tests read the first few.
                if let Err(mpsc::error::TrySendError::Closed(_)) = seen.try_send(frame) {
                    return self;
                }
            }
        })
    }
}

async fn connect(node: &TestNode, token: &str, session: &str) -> Socket {
    let mut req = format!("ws://{}/v1/sessions/{session}/runtime", node.node.api_addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    // Small client buffers, so that the memory measured with 100 agents in this process is
    // mostly the node's.
    let config = tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    tokio_tungstenite::connect_async_with_config(req, Some(config), true).await.unwrap().0
}

/// Waits until `node`'s replica holds exactly `n` live adverts of `cap`.
async fn adverts(node: &TestNode, cap: Cid, n: usize) {
    wait_for("adverts in the replica", T, || async {
        let have = node.adverts(&cap);
        if have == n { Ok(()) } else { Err(have) }
    })
    .await;
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_runtime_serves_the_mesh_with_receipts_that_name_its_session_and_the_trace() {
    // A (agent) — B — C (caller).
    let net = Testnet::line(3, |_, o| o).await.unwrap();
    let (a, c) = (net.node(0), net.node(2));
    let mut agent = Agent::open(a, "upper-agent", None).await;
    let contract = upper("agent.upper", false);
    let caps = agent.announce(std::slice::from_ref(&contract)).await;
    assert_eq!(caps, vec![id_of(&contract)]);
    let cap = caps[0];
    let session_id = agent.session.id.to_string();
    let (seen_tx, mut seen) = mpsc::channel(1024);
    let serving = agent.serve(seen_tx);
    adverts(c, cap, 1).await;

    // C calls it by id with a traceparent; the output comes from the agent.
    let trace: TraceId = TRACE.parse().unwrap();
    let caller = client(c).with_trace(trace);
    let done = caller.call(&CallRequest::new(cap, json!({"text": "hello"}))).await.unwrap();
    assert_eq!(done.output, Some(json!({"text": "HELLO"})));
    assert_eq!(done.provider, a.peer_id());
    assert_eq!(done.trace, Some(trace));
    let Some(NodeFrame::Call { trace: pushed, capability, .. }) = seen.recv().await else {
        panic!()
    };
    assert_eq!((pushed, capability), (Some(trace), cap));

    // Both ledgers verify, and both name the trace; A's names the session that served it.
    for node in [a, c] {
        wait_for("the receipt in the ledger", T, || async {
            let page = client(node).receipts(&Default::default()).await.unwrap();
            let found = page.entries.iter().any(|e| e.id == Some(done.receipt_id));
            if found { Ok(()) } else { Err(page.len) }
        })
        .await;
        verify_ledger(&node.node.store.ledger().unwrap()).unwrap();
    }
    let served = client(a).receipt(done.receipt_id).await.unwrap();
    let note = served.receipt.note.expect("the provider's note");
    assert_eq!(note.trace, Some(trace));
    assert_eq!(note.session_name.as_deref(), Some("upper-agent"));
    assert_eq!(note.session_id, Some(session_id));
    let made = client(c).receipt(done.receipt_id).await.unwrap();
    assert_eq!(made.receipt.note.unwrap().trace, Some(trace));
    assert_eq!(made.countersignature.unwrap().note.unwrap().trace, Some(trace));

    // The session shows what it serves and what it did.
    let sessions = client(a).sessions().await.unwrap().sessions;
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        sessions[0].capabilities.iter().map(|c| c.capability).collect::<Vec<_>>(),
        vec![cap]
    );
    assert_eq!((sessions[0].calls_served, sessions[0].runtime_attached), (1, true));
    serving.abort();
    net.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_runtime_is_retired_everywhere_and_calls_fail_over_to_another_agent() {
    let grace = Duration::from_secs(2);
    let net = Testnet::line(3, |_, o: NodeOpts| o.runtime_grace(grace)).await.unwrap();
    let (a, b, c) = (net.node(0), net.node(1), net.node(2));
    let contract = upper("agent.upper.shared", false);
    let cap = id_of(&contract);
    let mut on_a = Agent::open(a, "a", None).await;
    let mut on_b = Agent::open(b, "b", None).await;
    on_a.announce(std::slice::from_ref(&contract)).await;
    on_b.announce(std::slice::from_ref(&contract)).await;
    let (tx, _seen_a) = mpsc::channel(1024);
    let serving_a = on_a.serve(tx);
    let (tx, _seen_b) = mpsc::channel(1024);
    let serving_b = on_b.serve(tx);
    adverts(c, cap, 2).await;

    // A's agent goes away: after the grace period its advert is retired on every replica.
    serving_a.abort();
    let _ = serving_a.await;
    for node in [a, b, c] {
        wait_for("A's advert retired", T, || async {
            let providers: Vec<_> = client(node)
                .query(&capmesh_api::QueryRequest { capability: Some(cap), ..Default::default() })
                .await
                .unwrap()
                .hits
                .into_iter()
                .map(|h| h.provider)
                .collect();
            if providers == vec![b.peer_id()] { Ok(()) } else { Err(providers) }
        })
        .await;
    }
    let session = client(a).sessions().await.unwrap().sessions;
    assert!(!session[0].runtime_attached && session[0].capabilities.is_empty(), "{session:?}");
    // Calls go to B's agent.
    let done = client(c).call(&CallRequest::new(cap, json!({"text": "x"}))).await.unwrap();
    assert_eq!((done.provider, done.output), (b.peer_id(), Some(json!({"text": "X"}))));

    // B's agent goes too: a call fails clearly.
    serving_b.abort();
    let _ = serving_b.await;
    adverts(c, cap, 0).await;
    let e = client(c).call(&CallRequest::new(cap, json!({"text": "x"}))).await.unwrap_err();
    let ClientError::Api(e) = e else { panic!("{e}") };
    assert!(matches!(e.code, ErrorCode::NotFound | ErrorCode::CallFailed), "{e:?}");
    net.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expires_without_heartbeats_and_lives_on_with_them() {
    let net = Testnet::line(2, |_, o| o).await.unwrap();
    let (a, b) = (net.node(0), net.node(1));
    let mut quiet = Agent::open(a, "quiet", Some(5)).await;
    let contract = upper("agent.expiring", false);
    let cap = quiet.announce(std::slice::from_ref(&contract)).await[0];
    adverts(b, cap, 1).await;
    let beating = client(a)
        .open_session(&SessionRequest { ttl_secs: Some(5), ..SessionRequest::new("beating") })
        .await
        .unwrap();
    let beats = {
        let (api, id) = (client(a), beating.session.id);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if api.heartbeat(&id).await.is_err() {
                    return;
                }
            }
        })
    };
    // A third keeps itself alive with pings on its runtime socket.
    let mut pinging = Agent::open(a, "pinging", Some(5)).await;
    let pings = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            pinging.send(&AgentFrame::Ping).await;
            if !matches!(pinging.next().await, NodeFrame::Pong) {
                return;
            }
        }
    });
    // The quiet one ends (its socket is closed, its advert retired); the other two stay.
    wait_for("the quiet session's end", T, || async {
        let mut names: Vec<String> =
            client(a).sessions().await.unwrap().sessions.into_iter().map(|s| s.name).collect();
        names.sort();
        if names == ["beating", "pinging"] { Ok(()) } else { Err(names) }
    })
    .await;
    pings.abort();
    assert!(matches!(quiet.socket.next().await, Some(Ok(tungstenite::Message::Close(_))) | None));
    adverts(b, cap, 0).await;
    let with_token = client(a).with_token(quiet.token.clone());
    let e = with_token.status().await.unwrap_err();
    assert!(matches!(e, ClientError::Api(ref e) if e.code == ErrorCode::Unauthorized), "{e}");
    let alive = client(a).session(&beating.session.id).await.unwrap();
    assert!(alive.expires_ms > capmesh::now_ms());
    beats.abort();
    net.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_the_caller_reaches_the_agent_and_streamed_chunks_arrive_before_the_end() {
    let net = Testnet::line(2, |_, o| o).await.unwrap();
    let (a, c) = (net.node(0), net.node(1));
    let mut agent = Agent::open(a, "slow", None).await;
    let slow = upper("agent.slow", false);
    let stream = upper("agent.stream", true);
    let caps = agent.announce(&[slow.clone(), stream.clone()]).await;
    let (slow_cap, stream_cap) = (caps[0], caps[1]);
    adverts(c, slow_cap, 1).await;
    adverts(c, stream_cap, 1).await;
    let caller = client(c);

    // Cancel: the agent holds the call; the caller cancels; the agent is told.
    let accepted =
        caller.start_call(&CallRequest::new(slow_cap, json!({"text": "t"}))).await.unwrap();
    let NodeFrame::Call { call_id: pushed, .. } = agent.next().await else { panic!() };
    caller.cancel(&accepted.call_id).await.unwrap();
    match agent.next().await {
        NodeFrame::Cancel { call_id, reason } => {
            assert_eq!((call_id, reason), (pushed.clone(), CancelReason::Cancelled))
        }
        other => panic!("{other:?}"),
    }
    let status = wait_for("the call's end", T, || async {
        let s = caller.call_status(&accepted.call_id).await.unwrap();
        if s.state.is_final() { Ok(s) } else { Err(s.state) }
    })
    .await;
    assert_eq!(status.state, CallState::Cancelled);
    // An answer after the cancel is refused as unknown.
    agent.send(&AgentFrame::Result { call_id: pushed.clone(), output: json!({"text": "T"}) }).await;
    assert!(matches!(agent.next().await, NodeFrame::Error { code: FrameError::UnknownCall, .. }));

    // Streaming: the first chunk reaches the SSE client while the agent still holds the rest.
    let accepted =
        caller.start_call(&CallRequest::new(stream_cap, json!({"text": "t"}))).await.unwrap();
    let mut events = caller.call_events(&accepted.call_id, 0).await.unwrap();
    let NodeFrame::Call { call_id, .. } = agent.next().await else { panic!() };
    agent
        .send(&AgentFrame::Chunk {
            call_id: call_id.clone(),
            text: Some("first ".into()),
            data: None,
        })
        .await;
    let first = loop {
        let ev = tokio::time::timeout(T, events.next()).await.unwrap().unwrap().unwrap();
        assert!(!ev.event.is_final(), "the call ended before its second chunk: {ev:?}");
        if let CallEvent::Progress { data, .. } = ev.event {
            break data.0;
        }
    };
    assert_eq!(first, b"first ");
    assert_eq!(caller.call_status(&accepted.call_id).await.unwrap().state, CallState::Running);
    agent
        .send(&AgentFrame::Chunk {
            call_id: call_id.clone(),
            text: None,
            data: Some(capmesh_wire::repr::Bytes(b"second".to_vec())),
        })
        .await;
    agent.send(&AgentFrame::End { call_id }).await;
    let mut rest = Vec::new();
    while let Some(ev) = tokio::time::timeout(T, events.next()).await.unwrap() {
        rest.push(ev.unwrap().event);
    }
    let Some(CallEvent::Done { result, .. }) = rest.last() else { panic!("{rest:?}") };
    assert_eq!(result.chunks, 2);
    let all: Vec<u8> = result.stream.iter().flat_map(|b| b.0.clone()).collect();
    assert_eq!(all, b"first second");
    assert!(rest.iter().any(|e| matches!(e, CallEvent::Progress { seq: 1, .. })));
    net.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_typed_errors_and_the_node_keeps_serving_everyone_else() {
    let net = Testnet::line(2, |_, o| o).await.unwrap();
    let (a, c) = (net.node(0), net.node(1));
    let mut bad = Agent::open(a, "bad", None).await;
    let mut good = Agent::open(a, "good", None).await;
    let bad_cap = bad.announce(&[upper("agent.bad", false)]).await[0];
    let good_cap = good.announce(&[upper("agent.good", false)]).await[0];
    let (tx, _seen) = mpsc::channel(1024);
    let good_serving = good.serve(tx);
    adverts(c, bad_cap, 1).await;
    adverts(c, good_cap, 1).await;

    // Not JSON, an unknown call, a contract that is not one.
    bad.send_text("{oops").await;
    assert!(matches!(bad.next().await, NodeFrame::Error { code: FrameError::BadFrame, .. }));
    bad.send(&AgentFrame::Result { call_id: "c999".into(), output: json!({}) }).await;
    assert!(matches!(bad.next().await, NodeFrame::Error { code: FrameError::UnknownCall, .. }));
    bad.send(&AgentFrame::Announce {
        capabilities: vec![Announcement {
            contract: json!({"name": 1}),
            price: None,
            limits: None,
            latency_ms: None,
        }],
    })
    .await;
    assert!(matches!(bad.next().await, NodeFrame::Error { code: FrameError::BadContract, .. }));
    // Another session's capability is not taken over; an empty announce is answered.
    let taken = Announcement {
        contract: upper("agent.good", false),
        price: None,
        limits: None,
        latency_ms: None,
    };
    bad.send(&AgentFrame::Announce { capabilities: vec![taken] }).await;
    assert!(matches!(bad.next().await, NodeFrame::Error { code: FrameError::BadContract, .. }));
    bad.send(&AgentFrame::Announce { capabilities: vec![] }).await;
    assert_eq!(bad.next().await, NodeFrame::Announced { capabilities: vec![] });

    // An output that breaks the contract: the agent is told, the caller gets OutputInvalid.
    let caller = client(c);
    let call =
        tokio::spawn(
            async move { caller.call(&CallRequest::new(bad_cap, json!({"text": "x"}))).await },
        );
    let NodeFrame::Call { call_id, .. } = bad.next().await else { panic!() };
    bad.send(&AgentFrame::Result { call_id: call_id.clone(), output: json!({"text": 42}) }).await;
    match bad.next().await {
        NodeFrame::Error { code: FrameError::OutputInvalid, call_id: Some(id), .. } => {
            assert_eq!(id, call_id)
        }
        other => panic!("{other:?}"),
    }
    let e = call.await.unwrap().unwrap_err();
    let ClientError::Api(e) = e else { panic!("{e}") };
    let failure = e.call.expect("the call's failure");
    assert!(failure.attempts.iter().any(|t| t.code == "OutputInvalid"), "{failure:?}");

    // A flood from the bad agent: dropped with a typed error; the good agent still serves.
    let flood = capmesh_api::FRAME_BURST as usize * 2;
    let mut frames = futures::stream::iter(
        (0..flood).map(|_| Ok(tungstenite::Message::Text(r#"{"type":"ping"}"#.to_owned().into()))),
    );
    bad.socket.send_all(&mut frames).await.unwrap();
    let mut limited = false;
    for _ in 0..flood {
        match bad.next().await {
            NodeFrame::Error { code: FrameError::RateLimited, .. } => {
                limited = true;
                break;
            }
            NodeFrame::Pong => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(limited, "the flood was refused");
    let done = client(c).call(&CallRequest::new(good_cap, json!({"text": "ok"}))).await.unwrap();
    assert_eq!(done.output, Some(json!({"text": "OK"})));
    good_serving.abort();
    net.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_sessions_with_runtimes_on_one_node() {
    let net = Testnet::line(2, |_, o| o).await.unwrap();
    let (a, c) = (net.node(0), net.node(1));
    let rss_before = rss_kib();
    let mut serving = Vec::new();
    let mut caps = Vec::new();
    for i in 0..100 {
        let mut agent = Agent::open(a, &format!("agent-{i}"), None).await;
        caps.push(agent.announce(&[upper(&format!("agent.many{i}"), false)]).await[0]);
        let (tx, seen) = mpsc::channel(1024);
        serving.push((agent.serve(tx), seen));
    }
    let rss_after = rss_kib();
    eprintln!(
        "100 sessions with attached runtimes: process RSS {} KiB -> {} KiB (+{} KiB, {} KiB a session; \
         the test's 100 WebSocket clients with 4 KiB buffers are in the same process)",
        rss_before,
        rss_after,
        rss_after.saturating_sub(rss_before),
        rss_after.saturating_sub(rss_before) / 100
    );
    let sessions = client(a).sessions().await.unwrap().sessions;
    assert_eq!(sessions.len(), 100);
    assert!(sessions.iter().all(|s| s.runtime_attached && s.capabilities.len() == 1));
    for cap in [caps[0], caps[57], caps[99]] {
        adverts(c, cap, 1).await;
        let done = client(c).call(&CallRequest::new(cap, json!({"text": "m"}))).await.unwrap();
        assert_eq!(done.output, Some(json!({"text": "M"})));
    }
    for (task, _) in serving {
        task.abort();
    }
    net.shutdown().await.unwrap();
}

/// This process's resident set, from /proc.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
