//! The MCP bridge between real nodes on 127.0.0.1, driven with the official SDK's client and
//! server (rmcp): mesh capabilities as MCP tools through `capmesh mcp` (stdio, as a process,
//! which a signal stops even while its stdin stays open) and streamable HTTP (in-process),
//! clients told when the selected capabilities change on the mesh, long calls reporting
//! progress, and MCP servers' tools imported as capabilities and called from another node, a
//! changed tool republished under a new id and the old one retired.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use capmesh_exec::Builtin;
use capmesh_market::CallRequest;
use capmesh_mcp::{FIND_TOOL, META_ERROR, META_RECEIPT, MeshTools, Selection};
use capmesh_store::{LedgerKind, verify_ledger};
use capmesh_testkit::{NodeOpts, TestNode, Testnet, wait_for};
use capmesh_types::Cid;
use capmesh_wire::{CallStatus, Receipt, Signed, cbor::Limits};
use rmcp::{
    ClientHandler, ErrorData, RoleClient, RoleServer, ServerHandler, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject,
        ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    },
    service::{
        NotificationContext, RequestContext, RunningService, RxJsonRpcMessage, TxJsonRpcMessage,
    },
    transport::{
        StreamableHttpClientTransport, TokioChildProcess, Transport,
        async_rw::AsyncRwTransport,
        streamable_http_client::StreamableHttpClientTransportConfig,
        streamable_http_server::{
            StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
        },
    },
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::common::{cap_of, receipts_in};

const T: Duration = Duration::from_secs(60);

async fn sees(node: &TestNode, cap: Cid) {
    crate::common::sees(node, cap, 1).await;
}

fn object(v: Value) -> JsonObject {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn call(name: &str, args: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(name.to_owned()).with_arguments(object(args))
}

/// The receipt a tool result names in `_meta`: in `node`'s ledger, signed by `provider`, with
/// `status`; and the whole ledger verifies.
fn receipt_of(result: &CallToolResult, node: &TestNode) -> Receipt {
    let meta = result.meta.as_ref().expect("_meta");
    let id: Cid = meta.0[META_RECEIPT].as_str().expect("receipt id").parse().unwrap();
    let (entry, _) = node.node.store.ledger_find(&id).unwrap();
    let entry = entry.expect("the receipt is in the caller's ledger");
    assert_eq!(entry.kind, LedgerKind::Receipt);
    let signed = Signed::<Receipt>::from_bytes(&entry.signed, Limits::default()).unwrap();
    let receipt = signed.verify(capmesh::now_ms(), &Default::default()).unwrap();
    verify_ledger(&node.node.store.ledger().unwrap()).unwrap();
    receipt.record
}

fn text_of(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn tool_named<'a>(tools: &'a [Tool], prefix: &str) -> &'a Tool {
    tools.iter().find(|t| t.name.starts_with(prefix)).unwrap_or_else(|| {
        panic!("no tool {prefix}…: {:?}", tools.iter().map(|t| &t.name).collect::<Vec<_>>())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capmesh_mcp_over_stdio_lists_and_calls_mesh_tools_with_verified_receipts() {
    let bin = tokio::task::spawn_blocking(capmesh_system_tests::capmesh_bin).await.unwrap();
    let net =
        Testnet::line(2, |i, o| if i == 0 { o.serve_builtin(Builtin::Blake3, 1, 5) } else { o })
            .await
            .unwrap();
    let (provider, caller) = (net.node(0), net.node(1));
    let cap = cap_of(Builtin::Blake3);
    sees(caller, cap).await;

    let mut command = tokio::process::Command::new(bin);
    command.arg("--data-dir").arg(caller.data_dir()).args(["mcp", "--tag", "builtin"]);
    let client = ().serve(TokioChildProcess::new(command).unwrap()).await.unwrap();

    let tools = client.peer().list_all_tools().await.unwrap();
    let contract = Builtin::Blake3.contract();
    let blake3 = tool_named(&tools, "builtin_blake3_");
    assert!(blake3.description.as_deref().unwrap().contains(&cap.to_string()));
    assert_eq!(Value::Object((*blake3.input_schema).clone()), contract.input);
    assert_eq!(blake3.output_schema.as_deref().cloned().map(Value::Object), Some(contract.output));
    assert!(tools.iter().any(|t| t.name == FIND_TOOL));

    let result = client.call_tool(call(&blake3.name, json!({"text": "hello"}))).await.unwrap();
    let digest = blake3::hash(b"hello").to_hex().to_string();
    assert_eq!(result.is_error, Some(false));
    assert_eq!(result.structured_content, Some(json!({"digest": digest})));
    let receipt = receipt_of(&result, caller);
    assert_eq!(
        (receipt.status, receipt.provider, receipt.caller),
        (CallStatus::Ok, provider.peer_id(), caller.peer_id())
    );
    assert_eq!(receipt.capability, cap);

    // Arguments the contract refuses: a tool error with the code and the reason.
    let refused = client.call_tool(call(&blake3.name, json!({"txt": 1}))).await.unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert_eq!(refused.meta.as_ref().unwrap().0[META_ERROR], json!("InvalidArgs"));
    assert!(text_of(&refused).contains("text"), "{}", text_of(&refused));

    // capmesh_find by id reaches the provider.
    let found =
        client.call_tool(call(FIND_TOOL, json!({"capability": cap.to_string()}))).await.unwrap();
    let results = found.structured_content.unwrap()["results"].clone();
    assert!(
        results
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["provider"] == json!(provider.peer_id().to_string())
                && r["tool"] == json!(blake3.name)),
        "{results}"
    );
    client.cancel().await.unwrap();
}

/// The HTTP status of an `initialize` POSTed to `url` with the header lines `auth`.
async fn raw_post_status(url: &str, auth: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#;
    let request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0; 12];
    stream.read_exact(&mut head).await.unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

/// An MCP client of `url` with bearer `token`.
async fn http_client(url: &str, token: &str) -> Result<RunningService<RoleClient, ()>, String> {
    let config =
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token.to_owned());
    ().serve(StreamableHttpClientTransport::from_config(config)).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_over_http_needs_the_token_and_cancellation_cancels_the_mesh_call() {
    let net = Testnet::line(2, |i, o| {
        if i == 0 {
            o.serve_builtin(Builtin::Echo, 0, 5)
                .serve_builtin(Builtin::Sleep, 0, 5)
                .inline_window(Duration::from_millis(300))
        } else {
            o
        }
    })
    .await
    .unwrap();
    let (provider, caller) = (net.node(0), net.node(1));
    let (echo, sleep) = (cap_of(Builtin::Echo), cap_of(Builtin::Sleep));
    sees(caller, echo).await;
    sees(caller, sleep).await;

    let api =
        capmesh_api::Client::new(caller.node.api_addr, caller.node.api_token.clone()).unwrap();
    let selection = Selection { pinned: vec![echo, sleep], ..Selection::default() };
    let listener = capmesh_mcp::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{}{}", listener.local_addr().unwrap(), capmesh_mcp::MCP_PATH);
    let cancel = CancellationToken::new();
    let server = tokio::spawn(capmesh_mcp::serve_http(
        listener,
        MeshTools::new(api, selection),
        "sesame".into(),
        cancel.clone(),
    ));

    for auth in ["", "Authorization: Bearer wrong\r\n"] {
        assert_eq!(raw_post_status(&url, auth).await, 401, "{auth:?}");
    }
    assert!(http_client(&url, "wrong").await.is_err(), "the SDK's client is refused too");
    let client = http_client(&url, "sesame").await.unwrap();
    let tools = client.peer().list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 3, "the two pinned capabilities and capmesh_find");
    let echo_tool = tool_named(&tools, "builtin_echo_").name.to_string();
    let sleep_tool = tool_named(&tools, "builtin_sleep_").name.to_string();

    let result = client.call_tool(call(&echo_tool, json!({"a": [1, 2]}))).await.unwrap();
    assert_eq!(result.structured_content, Some(json!({"a": [1, 2]})));
    assert_eq!(receipt_of(&result, caller).status, CallStatus::Ok);

    // A long call, abandoned by the MCP client once the provider runs it: the SDK sends
    // notifications/cancelled, the bridge cancels the mesh call, the provider stops it.
    let runs = || provider.node.market.runs(&sleep).unwrap_or(0);
    let long = client.peer().call_tool_once(call(&sleep_tool, json!({"ms": 600_000})));
    tokio::select! {
        r = long => panic!("the 10-minute call ended: {r:?}"),
        () = wait_for("the provider running the call", T, || async { if runs() == 1 { Ok(()) } else { Err(runs()) } }) => {}
    }
    let cancelled = wait_for("a cancelled receipt in the caller's ledger", T, || async {
        let receipts: Vec<Receipt> =
            receipts_in(caller).into_iter().filter(|r| r.capability == sleep).collect();
        match receipts.first() {
            Some(r) => Ok(r.status),
            None => Err(receipts.len()),
        }
    })
    .await;
    assert_eq!(cancelled, CallStatus::Cancelled);

    client.cancel().await.unwrap();
    cancel.cancel();
    server.await.unwrap().unwrap();
}

/// Starts `capmesh --data-dir <dir> mcp` with its stdin and stdout piped.
fn capmesh_mcp(bin: &std::path::Path, dir: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(bin)
        .arg("--data-dir")
        .arg(dir)
        .arg("mcp")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capmesh_mcp_over_stdio_stops_on_a_signal_while_its_stdin_stays_open() {
    let bin = tokio::task::spawn_blocking(capmesh_system_tests::capmesh_bin).await.unwrap();
    let net = Testnet::line(1, |_, o| o).await.unwrap();
    let node = net.node(0);
    for signal in ["-TERM", "-INT"] {
        let mut child = capmesh_mcp(bin, &node.data_dir());
        let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        // An idle client after its handshake: it keeps stdin open and sends nothing more.
        let client = ().serve((stdout, stdin)).await.unwrap();
        assert!(client.peer().list_all_tools().await.unwrap().iter().any(|t| t.name == FIND_TOOL));

        let pid = child.id().unwrap().to_string();
        let killed = std::process::Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(killed.success());
        // The one timing asserted: the requirement is "within 2 s of the signal".
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "capmesh mcp still runs 2 s after kill {signal} with its stdin open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "a clean exit on {signal}: {status:?}");
        drop(client);
    }
    net.shutdown().await.unwrap();
}

/// A client that counts the `notifications/tools/list_changed` it is sent.
#[derive(Clone)]
struct ToldOfChanges(tokio::sync::mpsc::Sender<()>);

impl ClientHandler for ToldOfChanges {
    async fn on_tool_list_changed(&self, _ctx: NotificationContext<RoleClient>) {
        let _ = self.0.try_send(());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_told_when_the_selected_capabilities_change_on_the_mesh() {
    let net = Testnet::line(1, |_, o| o).await.unwrap();
    let node = net.node(0);
    let publish = |name: &'static str| async move {
        let mut contract = capmesh_contract::scaffold(name).unwrap();
        contract.tags = vec!["watched".into()];
        node.node.mesh.publish(contract, None, None, None).await.unwrap().capability
    };
    let one = publish("watched.one").await;
    sees(node, one).await;

    let api = capmesh_api::Client::new(node.node.api_addr, node.node.api_token.clone()).unwrap();
    let selection = Selection {
        tags: vec!["watched".into()],
        refresh: Duration::from_millis(200),
        ..Selection::default()
    };
    let listener = capmesh_mcp::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{}{}", listener.local_addr().unwrap(), capmesh_mcp::MCP_PATH);
    let cancel = CancellationToken::new();
    let server = tokio::spawn(capmesh_mcp::serve_http(
        listener,
        MeshTools::new(api, selection),
        "sesame".into(),
        cancel.clone(),
    ));
    let (told_tx, mut told) = tokio::sync::mpsc::channel(16);
    let config =
        StreamableHttpClientTransportConfig::with_uri(url.clone()).auth_header("sesame".to_owned());
    let client = ToldOfChanges(told_tx)
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
        .unwrap();
    let names =
        |tools: Vec<Tool>| tools.into_iter().map(|t| t.name.to_string()).collect::<Vec<_>>();
    let short = capmesh_mcp::names::short_id;
    let before = names(client.peer().list_all_tools().await.unwrap());
    assert_eq!(before.len(), 2, "watched.one and capmesh_find: {before:?}");
    assert!(before.iter().any(|n| n.ends_with(&short(&one))), "{before:?}");

    // A new capability the selection chooses: the client is told without asking.
    let two = publish("watched.two").await;
    tokio::time::timeout(T, told.recv()).await.expect("tools/list_changed").unwrap();
    let after = names(client.peer().list_all_tools().await.unwrap());
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.iter().any(|n| n.ends_with(&short(&two))), "{after:?}");

    client.cancel().await.unwrap();
    cancel.cancel();
    server.await.unwrap().unwrap();
    net.shutdown().await.unwrap();
}

/// A client transport that logs every message it sends and receives, in wire order.
struct Recording<T> {
    inner: T,
    log: Arc<std::sync::Mutex<Vec<(&'static str, Value)>>>,
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for Recording<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.log.lock().unwrap().push(("sent", serde_json::to_value(&item).unwrap()));
        self.inner.send(item)
    }

    fn receive(&mut self) -> impl Future<Output = Option<RxJsonRpcMessage<RoleClient>>> + Send {
        let log = self.log.clone();
        let next = self.inner.receive();
        async move {
            let message = next.await;
            if let Some(m) = &message {
                log.lock().unwrap().push(("received", serde_json::to_value(m).unwrap()));
            }
            message
        }
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_call_reports_progress_before_its_result() {
    let net =
        Testnet::line(2, |i, o| if i == 0 { o.serve_builtin(Builtin::Sleep, 0, 5) } else { o })
            .await
            .unwrap();
    let caller = net.node(1);
    let sleep = cap_of(Builtin::Sleep);
    sees(caller, sleep).await;
    let api =
        capmesh_api::Client::new(caller.node.api_addr, caller.node.api_token.clone()).unwrap();
    let selection = Selection { pinned: vec![sleep], ..Selection::default() };

    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let (server_read, server_write) = tokio::io::split(server_end);
    let server = tokio::spawn(async move {
        let running = MeshTools::new(api, selection).serve((server_read, server_write)).await?;
        running.waiting().await.map(|_| ()).map_err(anyhow::Error::from)
    });
    let (client_read, client_write) = tokio::io::split(client_end);
    let log = Arc::default();
    let transport = Recording {
        inner: AsyncRwTransport::new_client(client_read, client_write),
        log: Arc::clone(&log),
    };
    let client = ().serve(transport).await.unwrap();
    let tools = client.peer().list_all_tools().await.unwrap();
    let sleep_tool = tool_named(&tools, "builtin_sleep_").name.to_string();

    // The SDK's client gives every request a progressToken.
    let result = client.call_tool(call(&sleep_tool, json!({"ms": 2500}))).await.unwrap();
    assert_eq!(result.is_error, Some(false), "{}", text_of(&result));

    let log = log.lock().unwrap().clone();
    let request = log
        .iter()
        .find(|(way, m)| *way == "sent" && m["method"] == "tools/call")
        .map(|(_, m)| m.clone())
        .expect("the tools/call request");
    let token = request["params"]["_meta"]["progressToken"].clone();
    assert!(!token.is_null(), "{request}");
    let answered = log
        .iter()
        .position(|(way, m)| {
            *way == "received" && m["id"] == request["id"] && m["method"].is_null()
        })
        .expect("the tools/call response");
    let progress: Vec<&Value> = log[..answered]
        .iter()
        .filter(|(way, m)| {
            *way == "received"
                && m["method"] == "notifications/progress"
                && m["params"]["progressToken"] == token
        })
        .map(|(_, m)| &m["params"])
        .collect();
    assert!(progress.len() >= 2, "at least two progress notifications before the result: {log:?}");
    let values: Vec<f64> = progress.iter().map(|p| p["progress"].as_f64().unwrap()).collect();
    assert!(values.windows(2).all(|w| w[0] < w[1]), "increasing: {values:?}");
    assert!(progress.iter().all(|p| p["message"].as_str().is_some_and(|m| !m.is_empty())));
    // The call's own steps (its events on the node) are among them, not only the time waited.
    let messages: Vec<&str> = progress.iter().filter_map(|p| p["message"].as_str()).collect();
    assert!(
        messages.iter().any(|m| m.starts_with("calling ")),
        "the chosen provider: {messages:?}"
    );

    client.cancel().await.unwrap();
    server.await.unwrap().unwrap();
    net.shutdown().await.unwrap();
}

/// An MCP server of the tests: `add` (structured output), `shout` (text content), `broken`
/// (always a tool error). Its tool list can be changed while it runs.
#[derive(Clone)]
struct Calc {
    tools: Arc<RwLock<Vec<Tool>>>,
    /// Clients that finished their handshake, told when the tools change.
    peers: Arc<std::sync::Mutex<Vec<rmcp::Peer<RoleServer>>>>,
}

fn add_tool(description: &str) -> Tool {
    let input = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
    });
    let mut tool = Tool::new("add", description.to_owned(), Arc::new(object(input)));
    let output =
        json!({"type": "object", "properties": {"sum": {"type": "number"}}, "required": ["sum"]});
    tool.output_schema = Some(Arc::new(object(output)));
    tool
}

impl Calc {
    fn new() -> Self {
        let text = json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]});
        let tools = vec![
            add_tool("Adds two numbers."),
            Tool::new("shout", "Upper-cases a text.", Arc::new(object(text))),
            Tool::new("broken", "Always fails.", Arc::new(object(json!({"type": "object"})))),
        ];
        Self { tools: Arc::new(RwLock::new(tools)), peers: Arc::default() }
    }

    /// Replaces tool `i` and says so to every client (`notifications/tools/list_changed`).
    async fn change(&self, i: usize, tool: Tool) -> usize {
        self.tools.write().unwrap()[i] = tool;
        let peers = self.peers.lock().unwrap().clone();
        let mut told = 0;
        for peer in peers {
            if peer.notify_tool_list_changed().await.is_ok() {
                told += 1;
            }
        }
        told
    }
}

impl ServerHandler for Calc {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder().enable_tools().enable_tool_list_changed().build(),
        )
    }

    async fn on_initialized(&self, ctx: rmcp::service::NotificationContext<RoleServer>) {
        self.peers.lock().unwrap().push(ctx.peer);
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult { tools: self.tools.read().unwrap().clone(), ..Default::default() })
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let result = match request.name.as_ref() {
            "add" => {
                let n = |k: &str| args.get(k).and_then(Value::as_f64).unwrap_or(0.0);
                CallToolResult::structured(json!({"sum": n("a") + n("b")}))
            }
            "shout" => {
                let text = args.get("text").and_then(Value::as_str).unwrap_or("");
                CallToolResult::success(vec![ContentBlock::text(text.to_uppercase())])
            }
            "broken" => CallToolResult::error(vec![ContentBlock::text("division by zero")]),
            other => return Err(ErrorData::invalid_params(format!("no tool {other}"), None)),
        };
        Ok(result.into())
    }
}

/// Serves `calc` over streamable HTTP on 127.0.0.1; returns its URL.
async fn serve_calc(calc: Calc, cancel: CancellationToken) -> String {
    let config =
        StreamableHttpServerConfig::default().with_cancellation_token(cancel.child_token());
    let service: StreamableHttpService<Calc, LocalSessionManager> =
        StreamableHttpService::new(move || Ok(calc.clone()), Default::default(), config);
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
            .unwrap();
    });
    url
}

fn import_entry(name: &str) -> capmesh::config::ImportEntry {
    capmesh::config::ImportEntry {
        name: name.into(),
        command: Vec::new(),
        env: BTreeMap::new(),
        cwd: None,
        url: None,
        token_file: None,
        tags: Vec::new(),
        tools: Vec::new(),
        price_amount: 1,
        price_unit: "credit".into(),
        latency_ms: Some(5),
        timeout_ms: 30_000,
        max_input_bytes: 1 << 20,
        concurrency: 8,
        // An hour: a change is seen because the server says so, not by polling.
        refresh_secs: 3600,
    }
}

async fn served_by(node: &TestNode, tool: &str, not: Option<Cid>) -> Cid {
    let importer = &node.node.importers[0];
    wait_for("the imported tool served", T, || async {
        match importer.served().get(tool) {
            Some(cap) if Some(*cap) != not => Ok(*cap),
            other => Err((other.copied(), importer.refused())),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_mcp_server_is_called_from_another_node_and_a_changed_tool_gets_a_new_id() {
    let cancel = CancellationToken::new();
    let calc = Calc::new();
    let url = serve_calc(calc.clone(), cancel.clone()).await;
    let mut entry = import_entry("calc");
    entry.url = Some(url);
    let mut importer_opts = NodeOpts::new();
    importer_opts.config.import.push(entry);
    let mut net = Testnet::default();
    net.add(importer_opts).await.unwrap();
    net.add(NodeOpts::new().bootstrap(&[0])).await.unwrap();
    let (importer, caller) = (net.node(0), net.node(1));

    let add = served_by(importer, "add", None).await;
    let shout = served_by(importer, "shout", None).await;
    let broken = served_by(importer, "broken", None).await;
    for cap in [add, shout, broken] {
        sees(caller, cap).await;
    }
    // The contract names its origin and keeps the tool's schemas (the draft-07 dialect dropped).
    let contract = importer.node.store.contract(&add).unwrap().unwrap();
    assert_eq!(contract.name, "calc.add");
    assert_eq!(contract.tags, ["mcp", "calc"]);
    assert_eq!(contract.input["required"], json!(["a", "b"]));

    let outcome =
        caller.node.market.call(CallRequest::new(add, json!({"a": 2, "b": 3.5}))).await.unwrap();
    assert_eq!(outcome.output, Some(json!({"sum": 5.5})));
    assert_eq!(outcome.provider, importer.peer_id());
    let receipt = outcome.receipt.verify(capmesh::now_ms(), &Default::default()).unwrap();
    assert_eq!(receipt.record.status, CallStatus::Ok);
    verify_ledger(&caller.node.store.ledger().unwrap()).unwrap();

    let outcome =
        caller.node.market.call(CallRequest::new(shout, json!({"text": "hi"}))).await.unwrap();
    assert_eq!(outcome.output, Some(json!({"content": [{"type": "text", "text": "HI"}]})));

    // The tool's own error is a failed call with its text, and a receipt that says Failed.
    let failed = caller.node.market.call(CallRequest::new(broken, json!({}))).await.unwrap_err();
    assert!(failed.to_string().contains("division by zero"), "{failed}");

    // The server changes `add` and says so: a new id is published, the old one retired on both
    // nodes, and no longer served.
    let told = calc.change(0, add_tool("Adds two numbers, now documented better.")).await;
    assert_eq!(told, 1, "the importer's session heard the change");
    let add2 = served_by(importer, "add", Some(add)).await;
    assert_ne!(add2, add);
    sees(caller, add2).await;
    for node in [importer, caller] {
        wait_for("the old id retired", T, || async {
            let n = node.adverts(&add);
            if n == 0 { Ok(()) } else { Err(n) }
        })
        .await;
    }
    assert_eq!(
        importer.node.importers[0].served().get("shout"),
        Some(&shout),
        "unchanged tools keep their id"
    );
    let outcome =
        caller.node.market.call(CallRequest::new(add2, json!({"a": 1, "b": 1}))).await.unwrap();
    // (2.0 comes back as 2: the canonical CBOR of the output writes integral floats as integers.)
    assert_eq!(outcome.output.unwrap()["sum"].as_f64(), Some(2.0));
    assert!(!importer.node.market.served().contains(&add), "the old id is not served");
    let gone =
        caller.node.market.call(CallRequest::new(add, json!({"a": 1, "b": 1}))).await.unwrap_err();
    // Refused by the importer even through the standing offer the caller still holds.
    assert_eq!(gone.code(), capmesh_wire::Code::NotFound, "{gone}");

    net.shutdown().await.unwrap();
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_mcp_server_is_imported_and_called_through_the_mesh() {
    // Node 0 serves blake3; node 1's `capmesh mcp` (a stdio MCP server over node 1's API) is
    // imported by node 2; node 1 calls the imported tool at node 2, whose mcp runtime asks
    // `capmesh mcp`, which calls blake3 at node 0.
    let bin = tokio::task::spawn_blocking(capmesh_system_tests::capmesh_bin).await.unwrap();
    let mut net =
        Testnet::line(2, |i, o| if i == 0 { o.serve_builtin(Builtin::Blake3, 0, 5) } else { o })
            .await
            .unwrap();
    let blake3 = cap_of(Builtin::Blake3);
    sees(net.node(1), blake3).await;
    let mut entry = import_entry("relay");
    entry.command = vec![
        bin.display().to_string(),
        "--data-dir".into(),
        net.node(1).data_dir().display().to_string(),
        "mcp".into(),
        "--pin".into(),
        blake3.to_string(),
    ];
    let mut opts = NodeOpts::new().bootstrap(&[1]);
    opts.config.import.push(entry);
    net.add(opts).await.unwrap();
    let importer = net.node(2);
    let tools = importer.node.importers[0].served();
    let imported = match tools.values().next() {
        Some(cap) => *cap,
        None => {
            let name = format!("builtin_blake3_{}", capmesh_mcp::names::short_id(&blake3));
            served_by(importer, &name, None).await
        }
    };
    let caller = net.node(1);
    sees(caller, imported).await;
    let outcome =
        caller.node.market.call(CallRequest::new(imported, json!({"text": "abc"}))).await.unwrap();
    let digest = blake3::hash(b"abc").to_hex().to_string();
    assert_eq!(outcome.output, Some(json!({"digest": digest})));
    assert_eq!(outcome.provider, importer.peer_id());
    // Two receipts in node 1's ledger: its call of the import, and the bridge's call of blake3.
    assert_eq!(receipts_in(caller).len(), 2);
    verify_ledger(&caller.node.store.ledger().unwrap()).unwrap();
    net.shutdown().await.unwrap();
}
