//! The typed client of the API, as the CLI and Rust agents use it.

use std::{fmt, io, net::SocketAddr, path::Path, time::Duration};

use capmesh_types::Cid;
use capmesh_wire::CallId;
use futures::{Stream, StreamExt, stream::BoxStream};
use reqwest::{Method, RequestBuilder, Response};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    ApiError, ClientError, ErrorCode,
    agents::{
        CallAccepted, CallStatus, Sequenced, SessionCreated, SessionId, SessionInfo, SessionList,
        SessionRequest, TraceId,
    },
    error::ErrorBody,
    files::{ADDR_FILE, TOKEN_FILE},
    ndjson::{LineTooLong, Lines, MAX_LINE_BYTES},
    types::{
        AttestRequest, AttestationList, AttestationsRequest, Attested, BlockRequest, Blocked,
        CallRequest, CallResult, Cancelled, ContractInfo, FindEvent, FindRequest, LedgerHeadLine,
        LedgerPage, LedgerRequest, PeerInfo, PublishRequest, Published, QueryPage, QueryRequest,
        ReceiptEntries, Retired, Status,
    },
};

/// Default bound on a whole non-streaming call (connect, request, answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one node's API. Cheap to clone (connections are pooled and shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    addr: SocketAddr,
    base: String,
    token: String,
    timeout: Duration,
    /// Sent as a W3C `traceparent` with calls.
    trace: Option<TraceId>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("token", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Client {
    /// A client of the API at `addr` with `token`. No proxy is ever used.
    pub fn new(addr: SocketAddr, token: String) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .connect_timeout(DEFAULT_TIMEOUT)
            .user_agent(concat!("capmesh-api/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError::Http)?;
        Ok(Self {
            http,
            addr,
            base: format!("http://{addr}"),
            token,
            timeout: DEFAULT_TIMEOUT,
            trace: None,
        })
    }

    /// The client of the node running for `data_dir`, from its `api.addr` and `api.token`.
    /// [`ClientError::NotRunning`] when there is no `api.addr`. (Whether the node still runs
    /// shows at the first call: [`ClientError::Unreachable`].)
    pub fn from_data_dir(data_dir: impl AsRef<Path>) -> Result<Self, ClientError> {
        let data_dir = data_dir.as_ref();
        let read = |name: &str| {
            let path = data_dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| match source.kind() {
                io::ErrorKind::NotFound if name == ADDR_FILE => {
                    ClientError::NotRunning { data_dir: data_dir.to_owned() }
                }
                _ => ClientError::Io { path, error: source },
            })
        };
        let addr_text = read(ADDR_FILE)?;
        let addr = addr_text.trim().parse::<SocketAddr>().map_err(|_| ClientError::Io {
            path: data_dir.join(ADDR_FILE),
            error: io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{:?} is not IP:PORT; remove the file and restart the node",
                    addr_text.trim()
                ),
            ),
        })?;
        let token = read(TOKEN_FILE)?.trim().to_owned();
        Self::new(addr, token)
    }

    /// Bounds each non-streaming call to `timeout` (default [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same client with another bearer token (a session's).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }

    /// Sends `trace` as the W3C `traceparent` of every call (`POST /v1/call`, `/v1/calls`), so
    /// that the call's envelopes, result, events and both ledgers carry it.
    pub fn with_trace(mut self, trace: TraceId) -> Self {
        self.trace = Some(trace);
        self
    }

    /// The address the client talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET /v1/status`. Cancel-safe (it changes nothing).
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call_json(self.request(Method::GET, "/v1/status")).await
    }

    /// `GET /v1/peers`. Cancel-safe (it changes nothing).
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, ClientError> {
        self.call_json(self.request(Method::GET, "/v1/peers")).await
    }

    /// `GET /v1/blocked`. Cancel-safe (it changes nothing).
    pub async fn blocked(&self) -> Result<Blocked, ClientError> {
        self.call_json(self.request(Method::GET, "/v1/blocked")).await
    }

    /// `POST /v1/blocked`. Repeating it has the same effect, so a dropped future can be retried.
    pub async fn block(&self, req: &BlockRequest) -> Result<Blocked, ClientError> {
        self.call_json(self.request(Method::POST, "/v1/blocked").json(req)).await
    }

    /// `POST /v1/capabilities`. Not cancel-safe: once sent, the node may publish even if the
    /// future is dropped; ask [`status`](Self::status) (`published`) to know.
    pub async fn publish(&self, req: &PublishRequest) -> Result<Published, ClientError> {
        self.call_json(self.request(Method::POST, "/v1/capabilities").json(req)).await
    }

    /// `DELETE /v1/capabilities/{capability}`. Not cancel-safe: once sent, the node may retire
    /// even if the future is dropped.
    pub async fn retire(&self, capability: Cid) -> Result<Retired, ClientError> {
        self.call_json(self.request(Method::DELETE, &format!("/v1/capabilities/{capability}")))
            .await
    }

    /// `GET /v1/contracts/{capability}`: the capability's contract, from the node's replica or
    /// the mesh. A capability neither knows is [`ClientError::Api`] with
    /// [`ErrorCode::NotFound`]. Bounded by [`with_timeout`](Self::with_timeout), which should
    /// exceed the node's find timeout (15 s by default) for a search of the mesh to finish.
    /// Cancel-safe (at most, the node keeps in its replica what a search verified, as a find
    /// does).
    pub async fn contract(&self, capability: Cid) -> Result<ContractInfo, ClientError> {
        self.call_json(self.request(Method::GET, &format!("/v1/contracts/{capability}"))).await
    }

    /// `POST /v1/registry/query`. Cancel-safe (it changes nothing).
    pub async fn query(&self, req: &QueryRequest) -> Result<QueryPage, ClientError> {
        self.call_json(self.request(Method::POST, "/v1/registry/query").json(req)).await
    }

    /// `GET /v1/receipts?from=&limit=`: a page of the receipt ledger. Cancel-safe (it changes
    /// nothing).
    pub async fn receipts(&self, req: &LedgerRequest) -> Result<LedgerPage, ClientError> {
        self.call_json(self.request(Method::GET, "/v1/receipts").query(req)).await
    }

    /// `GET /v1/receipts/head`: the ledger's head, signed now by the node; the last line of an
    /// export. Cancel-safe.
    pub async fn ledger_head(&self) -> Result<LedgerHeadLine, ClientError> {
        self.call_json(self.request(Method::GET, "/v1/receipts/head")).await
    }

    /// `GET /v1/receipts/{receipt_id}`: a receipt's ledger entry and its countersignature's.
    /// An unknown receipt is [`ClientError::Api`] with [`ErrorCode::NotFound`]. Cancel-safe (it
    /// changes nothing).
    pub async fn receipt(&self, id: Cid) -> Result<ReceiptEntries, ClientError> {
        self.call_json(self.request(Method::GET, &format!("/v1/receipts/{id}"))).await
    }

    /// `POST /v1/call`: makes a call and waits for its end. A failed call is
    /// [`ClientError::Api`] whose [`ApiError::call`] says why, provider by provider.
    ///
    /// Not bounded by [`with_timeout`](Self::with_timeout) alone: with a `deadline_ms`, the
    /// bound is the deadline plus that timeout (the node may fail over and cancel until the
    /// deadline, then needs time to answer); without one, the node's default deadline ends the
    /// call and the client waits for it.
    ///
    /// Not cancel-safe in effect: dropping the future closes the connection, which makes the node
    /// cancel the call, but a call that already ran stays paid for. To stop a call and still
    /// hear how it ended, send your own `call_id` and [`cancel`](Self::cancel) it.
    pub async fn call(&self, req: &CallRequest) -> Result<CallResult, ClientError> {
        // Without a deadline, no bound of ours: the node's default deadline ends the call.
        let bound =
            req.deadline_ms.map(|ms| Duration::from_millis(ms).saturating_add(self.timeout));
        let mut builder = self.traced(self.untimed(Method::POST, "/v1/call").json(req));
        if let Some(bound) = bound {
            builder = builder.timeout(bound);
        }
        let response = builder.send().await.map_err(|e| self.transport_error_after(e, bound))?;
        let response = self.check(response).await?;
        let body = response.bytes().await.map_err(|e| self.transport_error_after(e, bound))?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `POST /v1/calls/{call_id}/cancel`: cancels a call in flight on the node (the provider is
    /// told with `TaskCancel`; the pending [`call`](Self::call) then fails with
    /// [`ErrorCode::Cancelled`]). A call that is not in flight (it ended, or has not started) is
    /// [`ClientError::Api`] with [`ErrorCode::NotFound`]. Cancel-safe (repeating it is harmless).
    pub async fn cancel(&self, call_id: &CallId) -> Result<Cancelled, ClientError> {
        let id = data_encoding::BASE64URL_NOPAD.encode(&call_id.0);
        self.call_json(self.request(Method::POST, &format!("/v1/calls/{id}/cancel"))).await
    }

    /// `POST /v1/calls`: starts a call and returns at once (`202`); follow it with
    /// [`call_status`](Self::call_status) or [`call_events`](Self::call_events). Not
    /// cancel-safe: once sent, the call may run; send a `call_id` to be able to ask for it.
    pub async fn start_call(&self, req: &CallRequest) -> Result<CallAccepted, ClientError> {
        self.call_json(self.traced(self.request(Method::POST, "/v1/calls").json(req))).await
    }

    /// `GET /v1/calls/{call_id}`. Cancel-safe.
    pub async fn call_status(&self, call_id: &CallId) -> Result<CallStatus, ClientError> {
        let id = data_encoding::BASE64URL_NOPAD.encode(&call_id.0);
        self.call_json(self.request(Method::GET, &format!("/v1/calls/{id}"))).await
    }

    /// `GET /v1/calls/{call_id}/events`: the events from id `from` on, as the node sends them
    /// (Server-Sent Events), ending after the final one (`done`, `failed`, `cancelled`) or with
    /// [`ClientError::Incomplete`] if the node closes the stream before. Not bounded by
    /// [`with_timeout`](Self::with_timeout). Cancel-safe, and so is reading the stream.
    pub async fn call_events(
        &self,
        call_id: &CallId,
        from: u64,
    ) -> Result<
        impl Stream<Item = Result<Sequenced, ClientError>> + Send + Unpin + 'static,
        ClientError,
    > {
        let id = data_encoding::BASE64URL_NOPAD.encode(&call_id.0);
        let response = self
            .untimed(Method::GET, &format!("/v1/calls/{id}/events?from={from}"))
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let response = self.check(response).await?;
        Ok(self.sse_events(response.bytes_stream().boxed()))
    }

    /// `POST /v1/sessions`: opens a session (its token is in the answer, once).
    pub async fn open_session(&self, req: &SessionRequest) -> Result<SessionCreated, ClientError> {
        self.call_json(self.request(Method::POST, "/v1/sessions").json(req)).await
    }

    /// `GET /v1/sessions`. Cancel-safe.
    pub async fn sessions(&self) -> Result<SessionList, ClientError> {
        self.call_json(self.request(Method::GET, "/v1/sessions")).await
    }

    /// `GET /v1/sessions/{id}`. Cancel-safe.
    pub async fn session(&self, id: &SessionId) -> Result<SessionInfo, ClientError> {
        self.call_json(self.request(Method::GET, &format!("/v1/sessions/{id}"))).await
    }

    /// `POST /v1/sessions/{id}/heartbeat`: extends the session. Cancel-safe (repeatable).
    pub async fn heartbeat(&self, id: &SessionId) -> Result<SessionInfo, ClientError> {
        self.call_json(self.request(Method::POST, &format!("/v1/sessions/{id}/heartbeat"))).await
    }

    /// `DELETE /v1/sessions/{id}`: ends the session. Cancel-safe (repeating it is `NotFound`).
    pub async fn end_session(&self, id: &SessionId) -> Result<SessionInfo, ClientError> {
        self.call_json(self.request(Method::DELETE, &format!("/v1/sessions/{id}"))).await
    }

    /// The request with this client's `traceparent`, if it has a trace (a fresh parent id per
    /// request, as the W3C spec asks).
    fn traced(&self, builder: RequestBuilder) -> RequestBuilder {
        let Some(trace) = self.trace else { return builder };
        let mut parent = [0u8; 8];
        if getrandom::fill(&mut parent).is_err() || parent == [0; 8] {
            parent = [1; 8];
        }
        let parent = data_encoding::HEXLOWER.encode(&parent);
        builder.header("traceparent", format!("00-{trace}-{parent}-01"))
    }

    fn sse_events(
        &self,
        body: BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    ) -> BoxStream<'static, Result<Sequenced, ClientError>> {
        // A `done` event carries the whole result: output and stream, 1 MiB each at most.
        let lines = Lines::with_max(4 * MAX_LINE_BYTES);
        let lines = BodyLines::new(body, lines, self.clone(), "an event");
        futures::stream::unfold(Some(lines), |lines| async move {
            let mut lines = lines?;
            // The fields of the message being read.
            let (mut id, mut data) = (None::<u64>, Vec::new());
            loop {
                let line = match lines.next().await {
                    Ok(Some(line)) => line,
                    Ok(None) => return Some((Err(ClientError::Incomplete), None)),
                    Err(e) => return Some((Err(e), None)),
                };
                let line = line.strip_suffix(b"\r").unwrap_or(&line);
                if !line.is_empty() {
                    // `field: value` (one optional space); comments start with `:`.
                    if let Some(rest) = line.strip_prefix(b"data:") {
                        data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
                    } else if let Some(rest) = line.strip_prefix(b"id:") {
                        let text = String::from_utf8_lossy(rest.strip_prefix(b" ").unwrap_or(rest))
                            .into_owned();
                        id = text.trim().parse().ok();
                    }
                    continue;
                }
                if data.is_empty() {
                    continue; // a comment (keep-alive) or an empty message
                }
                let Some(id) = id else {
                    return Some((Err(ClientError::Decode("an event without an id".into())), None));
                };
                let item = serde_json::from_slice::<crate::agents::CallEvent>(&data)
                    .map(|event| Sequenced { id, event })
                    .map_err(|e| ClientError::Decode(e.to_string()));
                let more = item.as_ref().is_ok_and(|e| !e.event.is_final());
                return Some((item, more.then_some(lines)));
            }
        })
        .boxed()
    }

    /// `POST /v1/attest`: signs an attestation, stores it and gossips it. Not cancel-safe:
    /// once sent, the node may issue it even if the future is dropped.
    pub async fn attest(&self, req: &AttestRequest) -> Result<Attested, ClientError> {
        self.call_json(self.request(Method::POST, "/v1/attest").json(req)).await
    }

    /// `GET /v1/attestations`: unexpired attestations the node holds that match `req`.
    /// Cancel-safe (it changes nothing).
    pub async fn attestations(
        &self,
        req: &AttestationsRequest,
    ) -> Result<AttestationList, ClientError> {
        self.call_json(self.request(Method::GET, "/v1/attestations").query(req)).await
    }

    /// `GET /v1/find/{capability}`: the events as the node sends them, ending after the
    /// `Done` (or with [`ClientError::Incomplete`] if the node closes the stream before it).
    /// The stream is not bounded by [`with_timeout`](Self::with_timeout): the node ends the
    /// search after `timeout_ms`. Dropping the stream stops the search.
    ///
    /// Cancel-safe, and so is reading the stream (each item is one complete event).
    pub async fn find(
        &self,
        req: &FindRequest,
    ) -> Result<
        impl Stream<Item = Result<FindEvent, ClientError>> + Send + Unpin + 'static,
        ClientError,
    > {
        #[derive(Serialize)]
        struct Params {
            #[serde(skip_serializing_if = "Option::is_none")]
            limit: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            timeout_ms: Option<u64>,
        }
        let params = Params { limit: req.limit, timeout_ms: req.timeout_ms };
        let builder = self
            .http
            .get(format!("{}/v1/find/{}", self.base, req.capability))
            .query(&params)
            .bearer_auth(&self.token);
        let response = builder.send().await.map_err(|e| self.transport_error(e))?;
        let response = self.check(response).await?;
        Ok(self.find_events(response.bytes_stream().boxed()))
    }

    fn find_events(
        &self,
        body: BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    ) -> BoxStream<'static, Result<FindEvent, ClientError>> {
        let lines = BodyLines::new(body, Lines::default(), self.clone(), "a find event");
        futures::stream::unfold(Some(lines), |lines| async move {
            let mut lines = lines?;
            loop {
                let line = match lines.next().await {
                    Ok(Some(line)) => line,
                    Ok(None) => return Some((Err(ClientError::Incomplete), None)),
                    Err(e) => return Some((Err(e), None)),
                };
                if line.trim_ascii().is_empty() {
                    continue;
                }
                let event = serde_json::from_slice::<FindEvent>(&line);
                let more = matches!(event, Ok(FindEvent::Hit(_)));
                let item = event.map_err(|e| ClientError::Decode(e.to_string()));
                return Some((item, more.then_some(lines)));
            }
        })
        .boxed()
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(self.timeout)
    }

    /// A request without the client's timeout.
    fn untimed(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        builder: RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = builder.send().await.map_err(|e| self.transport_error(e))?;
        let response = self.check(response).await?;
        let body = response.bytes().await.map_err(|e| self.transport_error(e))?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// The response if it is a success; its error body as [`ClientError::Api`] if not.
    async fn check(&self, response: Response) -> Result<Response, ClientError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.map_err(|e| self.transport_error(e))?;
        let error = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => error,
            // Not one of ours (a proxy, an older node): keep what it said.
            Err(_) => {
                let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
                ApiError::new(
                    ErrorCode::from_http_status(status.as_u16()),
                    format!("the node answered HTTP {status}: {}", text.trim()),
                )
            }
        };
        Err(ClientError::Api(error))
    }

    fn transport_error(&self, e: reqwest::Error) -> ClientError {
        self.transport_error_after(e, Some(self.timeout))
    }

    /// A transport error of a request bounded by `bound`.
    fn transport_error_after(&self, e: reqwest::Error, bound: Option<Duration>) -> ClientError {
        if e.is_connect() {
            ClientError::Unreachable { addr: self.addr, source: e }
        } else if e.is_timeout() {
            ClientError::TimedOut { after: bound.unwrap_or(self.timeout) }
        } else {
            ClientError::Http(e)
        }
    }
}

/// A streamed body read line by line (the NDJSON of find, the Server-Sent Events of a call).
struct BodyLines {
    body: futures::stream::Fuse<BoxStream<'static, reqwest::Result<axum::body::Bytes>>>,
    lines: Lines,
    client: Client,
    /// What a line is, for the error of one too long.
    what: &'static str,
}

impl BodyLines {
    fn new(
        body: BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
        lines: Lines,
        client: Client,
        what: &'static str,
    ) -> Self {
        Self { body: body.fuse(), lines, client, what }
    }

    /// The next line (without its newline); what follows the last newline comes as a last
    /// line; `Ok(None)` once the body has ended. Cancel-safe.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        loop {
            match self.lines.next_line() {
                Err(LineTooLong) => {
                    let max = self.lines.max();
                    return Err(ClientError::Decode(format!(
                        "{} is longer than {max} bytes",
                        self.what
                    )));
                }
                Ok(Some(line)) => return Ok(Some(line)),
                Ok(None) => match self.body.next().await {
                    Some(Ok(chunk)) => self.lines.push(&chunk),
                    Some(Err(e)) => return Err(self.client.transport_error(e)),
                    None => {
                        let rest = self.lines.rest();
                        return Ok((!rest.trim_ascii().is_empty()).then_some(rest));
                    }
                },
            }
        }
    }
}
