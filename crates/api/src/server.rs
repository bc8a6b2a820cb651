//! The HTTP server: axum routes over a [`Backend`], behind a bearer [`Token`].
//!
//! Every request is checked against the token (in constant time) before anything else runs:
//! without it nothing is parsed and the backend is never called. The one exception is
//! `GET /v1/openapi.json` ([`PUBLIC_ROUTES`]): the API's OpenAPI document, the same for every
//! node of a version, served to anyone who can reach the port. Malformed input and unknown
//! routes get the typed error body of every other error (`{"error": {"code", "message"}}`),
//! never axum's plain-text rejections.

use std::{fmt, future::Future, io, marker::PhantomData, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{
        DefaultBodyLimit, Extension, FromRequest, FromRequestParts, Path, Query, Request, State,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use capmesh_types::Cid;
use capmesh_wire::CallId;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use tokio::{net::TcpListener, sync::mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    ApiError,
    agents::{
        CallAccepted, CallStatus, Sequenced, SessionCreated, SessionId, SessionInfo, SessionList,
        SessionRequest, TraceId,
    },
    error::ErrorBody,
    runtime::{self, RuntimeLink},
    types::{
        ATTESTATIONS_DEFAULT, ATTESTATIONS_MAX, AttestRequest, AttestationList,
        AttestationsRequest, Attested, BlockRequest, Blocked, CallRequest, CallResult, Cancelled,
        ContractInfo, FindEvent, FindRequest, LEDGER_PAGE_DEFAULT, LEDGER_PAGE_MAX, LedgerHeadLine,
        LedgerPage, LedgerRequest, PeerInfo, PublishRequest, Published, QueryPage, QueryRequest,
        ReceiptEntries, Retired, Status,
    },
};

/// Largest request body accepted (1 MiB); a larger one is a `BadRequest`.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What the node does for the API. The server calls it only for requests that carried the
/// right token and parsed. A handler's future is dropped when its client goes away, so these
/// futures must leave the node consistent when dropped at an `.await`.
pub trait Backend: Send + Sync + 'static {
    /// `GET /v1/status`.
    fn status(&self) -> impl Future<Output = Result<Status, ApiError>> + Send;
    /// `GET /v1/peers`.
    fn peers(&self) -> impl Future<Output = Result<Vec<PeerInfo>, ApiError>> + Send;
    /// `GET /v1/blocked`.
    fn blocked(&self) -> impl Future<Output = Result<Blocked, ApiError>> + Send;
    /// Changes the block list and answers the peers blocked afterwards. All or nothing: a list
    /// over the node's cap is `BadRequest` and changes nothing.
    ///
    /// `POST /v1/blocked`.
    fn block(&self, req: BlockRequest) -> impl Future<Output = Result<Blocked, ApiError>> + Send;
    /// `POST /v1/capabilities`.
    fn publish(
        &self,
        req: PublishRequest,
    ) -> impl Future<Output = Result<Published, ApiError>> + Send;
    /// `DELETE /v1/capabilities/{capability}`.
    fn retire(&self, capability: Cid) -> impl Future<Output = Result<Retired, ApiError>> + Send;
    /// Results as they arrive; the stream ends after one `FindEvent::Done`.
    ///
    /// `GET /v1/find/{capability}`. The server forwards each event as it is received and stops
    /// reading after the `Done`; it drops the receiver when the client goes away or the server
    /// shuts down, so a closed channel means nobody listens any more.
    fn find(
        &self,
        req: FindRequest,
    ) -> impl Future<Output = Result<mpsc::Receiver<FindEvent>, ApiError>> + Send;
    /// The contract of `capability`: from the replica if it holds it, else from a provider
    /// found on the mesh (checked to hash to the id); `NotFound` if neither has it.
    ///
    /// `GET /v1/contracts/{capability}`.
    fn contract(
        &self,
        capability: Cid,
    ) -> impl Future<Output = Result<ContractInfo, ApiError>> + Send;
    /// `POST /v1/registry/query`.
    fn query(&self, req: QueryRequest) -> impl Future<Output = Result<QueryPage, ApiError>> + Send;
    /// At most `limit` ledger entries from sequence `from` on (`limit` is 1 to
    /// [`LEDGER_PAGE_MAX`]; the server applies the default and refuses other values).
    ///
    /// `GET /v1/receipts?from=&limit=`.
    fn receipts(
        &self,
        from: u64,
        limit: u32,
    ) -> impl Future<Output = Result<LedgerPage, ApiError>> + Send;
    /// The ledger entries of receipt `id` and of its countersignature; `NotFound` if the ledger
    /// holds no such receipt.
    ///
    /// `GET /v1/receipts/{receipt_id}`.
    fn receipt(&self, id: Cid) -> impl Future<Output = Result<ReceiptEntries, ApiError>> + Send;
    /// Makes the call `req` under `call_id` (the request's, or one the server chose: `req.call_id`
    /// is ignored) and answers when it has ended. A failure is an [`ApiError::call`] whose code
    /// is [`ErrorCode::of_call`](crate::ErrorCode::of_call) of the call's code, except for the
    /// node's own failures.
    ///
    /// `POST /v1/call`. The future is dropped if the client goes away before the answer: the
    /// backend should then cancel the call. `trace` is the agent's `traceparent` trace id.
    fn call(
        &self,
        principal: Principal,
        call_id: CallId,
        req: CallRequest,
        trace: Option<TraceId>,
    ) -> impl Future<Output = Result<CallResult, ApiError>> + Send;
    /// Cancels the call `call_id` if it is in flight on this node and `principal` may see it;
    /// returns whether it was (the server answers `404 NotFound` if not).
    ///
    /// `POST /v1/calls/{call_id}/cancel`.
    fn cancel(
        &self,
        principal: Principal,
        call_id: CallId,
    ) -> impl Future<Output = Result<bool, ApiError>> + Send;
    /// Starts `req` under `call_id` and answers at once; the call runs on in the node.
    ///
    /// `POST /v1/calls` (202).
    fn start_call(
        &self,
        principal: Principal,
        call_id: CallId,
        req: CallRequest,
        trace: Option<TraceId>,
    ) -> impl Future<Output = Result<CallAccepted, ApiError>> + Send;
    /// An asynchronous call `principal` may see (running, or kept after it ended).
    ///
    /// `GET /v1/calls/{call_id}`.
    fn call_status(
        &self,
        principal: Principal,
        call_id: CallId,
    ) -> impl Future<Output = Result<CallStatus, ApiError>> + Send;
    /// The events of an asynchronous call from sequence number `from` on: those kept, then the
    /// new ones as they happen, the channel closing after the final one. The server drops the
    /// receiver when its client goes away.
    ///
    /// `GET /v1/calls/{call_id}/events`.
    fn call_events(
        &self,
        principal: Principal,
        call_id: CallId,
        from: u64,
    ) -> impl Future<Output = Result<mpsc::Receiver<Sequenced>, ApiError>> + Send;
    /// The session whose token `token` is, if any (the node's own token is checked by the
    /// server). Must not block: it runs for every request that is not the node's.
    fn authenticate(&self, token: &[u8]) -> Option<SessionId>;
    /// `POST /v1/sessions`.
    fn open_session(
        &self,
        req: SessionRequest,
    ) -> impl Future<Output = Result<SessionCreated, ApiError>> + Send;
    /// `GET /v1/sessions`.
    fn sessions(&self) -> impl Future<Output = Result<SessionList, ApiError>> + Send;
    /// `GET /v1/sessions/{id}`.
    fn session(&self, id: SessionId) -> impl Future<Output = Result<SessionInfo, ApiError>> + Send;
    /// Extends a session by its lifetime from now. `POST /v1/sessions/{id}/heartbeat`.
    fn heartbeat(
        &self,
        id: SessionId,
    ) -> impl Future<Output = Result<SessionInfo, ApiError>> + Send;
    /// Ends a session: its runtime's adverts are retired, its socket closed.
    /// `DELETE /v1/sessions/{id}`.
    fn end_session(
        &self,
        id: SessionId,
    ) -> impl Future<Output = Result<SessionInfo, ApiError>> + Send;
    /// Attaches a runtime socket to session `id` (a second socket replaces the first). The
    /// server pumps frames between the socket and the link until either side closes.
    ///
    /// `GET /v1/sessions/{id}/runtime` (a WebSocket upgrade).
    fn attach(&self, id: SessionId) -> impl Future<Output = Result<RuntimeLink, ApiError>> + Send;
    /// The ledger's length and last chain hash, signed now by the node.
    ///
    /// `GET /v1/receipts/head`.
    fn ledger_head(&self) -> impl Future<Output = Result<LedgerHeadLine, ApiError>> + Send;
    /// Signs an attestation, stores it and gossips it.
    ///
    /// `POST /v1/attest`.
    fn attest(&self, req: AttestRequest)
    -> impl Future<Output = Result<Attested, ApiError>> + Send;
    /// Unexpired attestations in the replica matching `req`, at most `limit` (checked by the
    /// server: 1 to [`ATTESTATIONS_MAX`]).
    ///
    /// `GET /v1/attestations`.
    fn attestations(
        &self,
        req: AttestationsRequest,
        limit: u32,
    ) -> impl Future<Output = Result<AttestationList, ApiError>> + Send;
}

/// The bearer token of the API: 32 random bytes as 64 lowercase hex digits. A new one is made
/// each time the node starts. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A fresh token from the operating system's random source.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(Self(data_encoding::HEXLOWER.encode(&bytes)))
    }

    /// The token as sent in `Authorization: Bearer <token>` and written to `api.token`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this token, in time independent of where they differ.
    fn matches(&self, candidate: &[u8]) -> bool {
        constant_time_eq(self.0.as_bytes(), candidate)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Compares in time that depends on the lengths only (and a token's length is no secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Binds the API's listener. Only loopback addresses are accepted: the API is for the node's
/// own user (the token file is the access control). Pass `127.0.0.1:0` for any free port and
/// read the port from [`TcpListener::local_addr`].
///
/// Cancel-safe: dropping the future leaves nothing bound.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the API listens on loopback only, not {addr}; use 127.0.0.1:PORT"),
        ));
    }
    TcpListener::bind(addr).await
}

/// Serves the API on `listener` until `shutdown` is cancelled, then stops accepting, ends open
/// find streams (their clients see the stream close without a `done`) and returns once the
/// requests in flight have been answered.
///
/// Cancel-safe in the sense that dropping the future stops the server at once: open
/// connections are closed without answers and backend futures in flight are dropped. Prefer
/// cancelling `shutdown` and awaiting this.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: Arc<B>,
    token: Token,
    shutdown: CancellationToken,
) -> io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::debug!(%addr, "API listening");
    }
    let app = router(backend, token, shutdown.clone());
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

struct App<B> {
    backend: Arc<B>,
    shutdown: CancellationToken,
}

impl<B> Clone for App<B> {
    fn clone(&self) -> Self {
        Self { backend: self.backend.clone(), shutdown: self.shutdown.clone() }
    }
}

fn router<B: Backend>(backend: Arc<B>, token: Token, shutdown: CancellationToken) -> Router {
    let auth = Auth { token, backend: backend.clone() };
    Router::new()
        .route("/v1/status", get(status::<B>))
        .route("/v1/peers", get(peers::<B>))
        .route("/v1/blocked", get(blocked::<B>).post(block::<B>))
        .route("/v1/capabilities", post(publish::<B>))
        .route("/v1/capabilities/{capability}", delete(retire::<B>))
        .route("/v1/find/{capability}", get(find::<B>))
        .route("/v1/contracts/{capability}", get(contract::<B>))
        .route("/v1/registry/query", post(query::<B>))
        .route("/v1/receipts", get(receipts::<B>))
        .route("/v1/receipts/head", get(ledger_head::<B>))
        .route("/v1/receipts/{receipt}", get(receipt::<B>))
        .route("/v1/call", post(call::<B>))
        .route("/v1/calls", post(start_call::<B>))
        .route("/v1/calls/{call_id}", get(call_status::<B>))
        .route("/v1/calls/{call_id}/events", get(call_events::<B>))
        .route("/v1/calls/{call_id}/cancel", post(cancel::<B>))
        .route("/v1/sessions", post(open_session::<B>).get(sessions::<B>))
        .route("/v1/sessions/{session}", get(session::<B>).delete(end_session::<B>))
        .route("/v1/sessions/{session}/heartbeat", post(heartbeat::<B>))
        .route("/v1/sessions/{session}/runtime", get(attach::<B>))
        .route("/v1/attest", post(attest::<B>))
        .route("/v1/attestations", get(attestations::<B>))
        .route("/v1/openapi.json", get(openapi))
        .fallback(no_route)
        .method_not_allowed_fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Added last, so it runs first of the layers: after routing (it reads the matched
        // route), before extractors and the backend. A session token on an unknown path is
        // refused as Denied: the route list is the node token's to probe.
        .layer(middleware::from_fn_with_state(Arc::new(auth), authorize::<B>))
        .with_state(App { backend, shutdown })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.call.as_ref().and_then(|c| c.retry_after_ms);
        let mut response = (status, axum::Json(ErrorBody { error: self })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(ms) = retry_after {
            // Whole seconds, rounded up: never earlier than the provider asked.
            let secs = ms.div_ceil(1000).max(1);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Who made a request: the holder of the node's token (`api.token`), or of a session's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// The node's operator or a trusted local program: everything.
    Node,
    /// An agent's session: calls (its own), finds, contracts, registry queries, status, and
    /// its own session and runtime.
    Session(SessionId),
}

impl Principal {
    /// The session, if it is one.
    pub fn session(self) -> Option<SessionId> {
        match self {
            Principal::Node => None,
            Principal::Session(id) => Some(id),
        }
    }
}

struct Auth<B> {
    token: Token,
    backend: Arc<B>,
}

/// Routes that need no token (by route pattern): nothing of the node's is in them. A token sent
/// with them is not read.
pub(crate) const PUBLIC_ROUTES: &[(Method, &str)] = &[(Method::GET, "/v1/openapi.json")];

/// Routes a session's token may use (by route pattern); the session's own id is checked by
/// the handlers of `/v1/sessions/{session}…`.
pub(crate) const SESSION_ROUTES: &[(Method, &str)] = &[
    (Method::GET, "/v1/status"),
    (Method::GET, "/v1/find/{capability}"),
    (Method::GET, "/v1/contracts/{capability}"),
    (Method::POST, "/v1/registry/query"),
    (Method::POST, "/v1/call"),
    (Method::POST, "/v1/calls"),
    (Method::GET, "/v1/calls/{call_id}"),
    (Method::GET, "/v1/calls/{call_id}/events"),
    (Method::POST, "/v1/calls/{call_id}/cancel"),
    (Method::GET, "/v1/sessions/{session}"),
    (Method::DELETE, "/v1/sessions/{session}"),
    (Method::POST, "/v1/sessions/{session}/heartbeat"),
    (Method::GET, "/v1/sessions/{session}/runtime"),
];

async fn authorize<B: Backend>(
    State(auth): State<Arc<Auth<B>>>,
    mut req: Request,
    next: Next,
) -> Response {
    if is_on(&req, PUBLIC_ROUTES) {
        return next.run(req).await;
    }
    let candidate = match bearer(req.headers()) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let principal = if auth.token.matches(candidate) {
        Principal::Node
    } else if let Some(id) = auth.backend.authenticate(candidate) {
        if !is_on(&req, SESSION_ROUTES) {
            return ApiError::new(
                crate::ErrorCode::Denied,
                format!(
                    "a session token may not use {} {}: it is scoped to calls, finds and its own \
                     session; use the node's token (api.token) for the rest",
                    req.method(),
                    req.uri().path()
                ),
            )
            .into_response();
        }
        Principal::Session(id)
    } else {
        return ApiError::unauthorized(
            "wrong token: use the one in api.token in the node's data directory (a new one is \
             made each time the node starts), or a live session's token",
        )
        .into_response();
    };
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// Whether `req` was routed to one of `routes`.
fn is_on(req: &Request, routes: &[(Method, &str)]) -> bool {
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .is_some_and(|p| routes.iter().any(|(m, r)| m == req.method() && *r == p.as_str()))
}

#[cfg(test)]
fn check_bearer(headers: &HeaderMap, token: &Token) -> Result<(), ApiError> {
    if token.matches(bearer(headers)?) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("wrong token"))
    }
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Result<&[u8], ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing `Authorization: Bearer <token>`; the token is in api.token in the node's \
             data directory",
        ));
    };
    let value = value.as_bytes();
    let scheme = b"bearer ";
    let candidate = match value.get(..scheme.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(scheme) => &value[scheme.len()..],
        _ => {
            return Err(ApiError::unauthorized(
                "the Authorization header must be `Bearer <token>`, with the token from api.token \
                 in the node's data directory",
            ));
        }
    };
    Ok(candidate.trim_ascii())
}

/// `GET /v1/openapi.json`: the OpenAPI document (public, see [`PUBLIC_ROUTES`]).
async fn openapi() -> Response {
    let headers = [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))];
    (headers, crate::openapi::json()).into_response()
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no endpoint {method} {}; see specs/api.md", uri.path()))
}

async fn status<B: Backend>(State(app): State<App<B>>) -> Result<Json<Status>, ApiError> {
    app.backend.status().await.map(Json)
}

async fn peers<B: Backend>(State(app): State<App<B>>) -> Result<Json<Vec<PeerInfo>>, ApiError> {
    app.backend.peers().await.map(Json)
}

async fn blocked<B: Backend>(State(app): State<App<B>>) -> Result<Json<Blocked>, ApiError> {
    app.backend.blocked().await.map(Json)
}

async fn block<B: Backend>(
    State(app): State<App<B>>,
    Json(req): Json<BlockRequest>,
) -> Result<Json<Blocked>, ApiError> {
    app.backend.block(req).await.map(Json)
}

async fn publish<B: Backend>(
    State(app): State<App<B>>,
    Json(req): Json<PublishRequest>,
) -> Result<Json<Published>, ApiError> {
    app.backend.publish(req).await.map(Json)
}

async fn retire<B: Backend>(
    State(app): State<App<B>>,
    CidPath(capability, _): CidPath<Capability>,
) -> Result<Json<Retired>, ApiError> {
    app.backend.retire(capability).await.map(Json)
}

async fn contract<B: Backend>(
    State(app): State<App<B>>,
    CidPath(capability, _): CidPath<Capability>,
) -> Result<Json<ContractInfo>, ApiError> {
    app.backend.contract(capability).await.map(Json)
}

async fn query<B: Backend>(
    State(app): State<App<B>>,
    Json(req): Json<QueryRequest>,
) -> Result<Json<QueryPage>, ApiError> {
    app.backend.query(req).await.map(Json)
}

/// The query string of `GET /v1/find/{capability}`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FindParams {
    /// Stop after this many hits (1 to 1000); absent: 20.
    limit: Option<u32>,
    /// Stop searching after this long (at most 120000); absent: the node's find timeout
    /// (15000 by default).
    timeout_ms: Option<u64>,
}

async fn receipts<B: Backend>(
    State(app): State<App<B>>,
    ApiQuery(req): ApiQuery<LedgerRequest>,
) -> Result<Json<LedgerPage>, ApiError> {
    let limit = req.limit.unwrap_or(LEDGER_PAGE_DEFAULT);
    if limit == 0 || limit > LEDGER_PAGE_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {LEDGER_PAGE_MAX}, not {limit}; page on with `from`"
        )));
    }
    app.backend.receipts(req.from.unwrap_or(0), limit).await.map(Json)
}

async fn ledger_head<B: Backend>(
    State(app): State<App<B>>,
) -> Result<Json<LedgerHeadLine>, ApiError> {
    app.backend.ledger_head().await.map(Json)
}

async fn receipt<B: Backend>(
    State(app): State<App<B>>,
    CidPath(id, _): CidPath<ReceiptId>,
) -> Result<Json<ReceiptEntries>, ApiError> {
    app.backend.receipt(id).await.map(Json)
}

/// The call id of a request, or a fresh one.
fn call_id_of(req: &CallRequest) -> Result<CallId, ApiError> {
    match req.call_id {
        Some(id) => Ok(id),
        None => CallId::random()
            .map_err(|e| ApiError::internal(format!("no randomness for a call id: {e}"))),
    }
}

/// The trace id of the request's W3C `traceparent` header, if it has one.
fn trace_of(headers: &HeaderMap) -> Result<Option<TraceId>, ApiError> {
    let Some(value) = headers.get("traceparent") else { return Ok(None) };
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("the traceparent header is not ASCII text"))?;
    TraceId::from_traceparent(text).map(Some).map_err(ApiError::bad_request)
}

async fn call<B: Backend>(
    State(app): State<App<B>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Json(req): Json<CallRequest>,
) -> Result<Json<CallResult>, ApiError> {
    let trace = trace_of(&headers)?;
    let call_id = call_id_of(&req)?;
    app.backend.call(principal, call_id, req, trace).await.map(Json)
}

async fn start_call<B: Backend>(
    State(app): State<App<B>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Json(req): Json<CallRequest>,
) -> Result<Response, ApiError> {
    let trace = trace_of(&headers)?;
    let call_id = call_id_of(&req)?;
    let accepted = app.backend.start_call(principal, call_id, req, trace).await?;
    let id = data_encoding::BASE64URL_NOPAD.encode(&accepted.call_id.0);
    let location = HeaderValue::from_str(&format!("/v1/calls/{id}"))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(accepted)).into_response())
}

async fn call_status<B: Backend>(
    State(app): State<App<B>>,
    Extension(principal): Extension<Principal>,
    CallIdPath(call_id): CallIdPath,
) -> Result<Json<CallStatus>, ApiError> {
    app.backend.call_status(principal, call_id).await.map(Json)
}

/// The query string of `GET /v1/calls/{call_id}/events`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsParams {
    /// First event id wanted; absent: the one after `Last-Event-ID`, or 0 without it.
    from: Option<u64>,
}

/// How often an idle event stream sends an SSE comment, so proxies and clients keep it open.
pub(crate) const SSE_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

async fn call_events<B: Backend>(
    State(app): State<App<B>>,
    Extension(principal): Extension<Principal>,
    CallIdPath(call_id): CallIdPath,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<EventsParams>,
) -> Result<Response, ApiError> {
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event id"))?
                .saturating_add(1),
        ),
        None => None,
    };
    let from = params.from.or(resume).unwrap_or(0);
    let events = app.backend.call_events(principal, call_id, from).await?;
    let body = sse_stream(events, SSE_KEEPALIVE).take_until(app.shutdown.cancelled_owned());
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    Ok((headers, Body::from_stream(body)).into_response())
}

/// Each event as an SSE message (`id`, `event`, `data` on one line), with a comment line after
/// `keepalive` of silence; ends after the final event or when the channel closes.
fn sse_stream(
    rx: mpsc::Receiver<Sequenced>,
    keepalive: std::time::Duration,
) -> impl Stream<Item = Result<Bytes, serde_json::Error>> + Send {
    futures::stream::unfold(Some(rx), move |rx| async move {
        let mut rx = rx?;
        match tokio::time::timeout(keepalive, rx.recv()).await {
            Err(_) => Some((Ok(Bytes::from_static(b": keep-alive\n\n")), Some(rx))),
            Ok(None) => None,
            Ok(Some(ev)) => {
                let last = ev.event.is_final();
                let message = serde_json::to_string(&ev.event).map(|data| {
                    Bytes::from(format!(
                        "id: {}\nevent: {}\ndata: {data}\n\n",
                        ev.id,
                        ev.event.name()
                    ))
                });
                Some((message, if last { None } else { Some(rx) }))
            }
        }
    })
}

async fn open_session<B: Backend>(
    State(app): State<App<B>>,
    Json(req): Json<SessionRequest>,
) -> Result<Response, ApiError> {
    let created = app.backend.open_session(req).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn sessions<B: Backend>(State(app): State<App<B>>) -> Result<Json<SessionList>, ApiError> {
    app.backend.sessions().await.map(Json)
}

async fn session<B: Backend>(
    State(app): State<App<B>>,
    SessionPath(id): SessionPath,
) -> Result<Json<SessionInfo>, ApiError> {
    app.backend.session(id).await.map(Json)
}

async fn heartbeat<B: Backend>(
    State(app): State<App<B>>,
    SessionPath(id): SessionPath,
) -> Result<Json<SessionInfo>, ApiError> {
    app.backend.heartbeat(id).await.map(Json)
}

async fn end_session<B: Backend>(
    State(app): State<App<B>>,
    SessionPath(id): SessionPath,
) -> Result<Json<SessionInfo>, ApiError> {
    app.backend.end_session(id).await.map(Json)
}

async fn attach<B: Backend>(
    State(app): State<App<B>>,
    SessionPath(id): SessionPath,
    upgrade: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|e| {
        ApiError::bad_request(format!(
            "the runtime endpoint is a WebSocket: connect with an Upgrade: websocket request ({})",
            e.body_text()
        ))
    })?;
    let link = app.backend.attach(id).await?;
    let shutdown = app.shutdown.clone();
    // Small buffers (the default is 128 KiB each way): a node holds a socket per session, and
    // frames are written whole, one at a time; the write buffer is bounded.
    Ok(upgrade
        .read_buffer_size(runtime::SOCKET_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(2 * runtime::SOCKET_MESSAGE_MAX)
        .max_message_size(runtime::SOCKET_MESSAGE_MAX)
        .max_frame_size(runtime::SOCKET_MESSAGE_MAX)
        .on_upgrade(move |socket| runtime::pump(socket, link, shutdown)))
}

async fn cancel<B: Backend>(
    State(app): State<App<B>>,
    Extension(principal): Extension<Principal>,
    CallIdPath(call_id): CallIdPath,
) -> Result<Json<Cancelled>, ApiError> {
    if app.backend.cancel(principal, call_id).await? {
        Ok(Json(Cancelled { cancelled: true }))
    } else {
        Err(ApiError::not_found(format!(
            "no call {call_id:?} in flight on this node: it ended, or never started here"
        )))
    }
}

async fn attestations<B: Backend>(
    State(app): State<App<B>>,
    ApiQuery(req): ApiQuery<AttestationsRequest>,
) -> Result<Json<AttestationList>, ApiError> {
    let limit = req.limit.unwrap_or(ATTESTATIONS_DEFAULT);
    if limit == 0 || limit > ATTESTATIONS_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {ATTESTATIONS_MAX}, not {limit}; narrow with subject, issuer or \
             claim"
        )));
    }
    app.backend.attestations(req, limit).await.map(Json)
}

async fn attest<B: Backend>(
    State(app): State<App<B>>,
    Json(req): Json<AttestRequest>,
) -> Result<Json<Attested>, ApiError> {
    app.backend.attest(req).await.map(Json)
}

async fn find<B: Backend>(
    State(app): State<App<B>>,
    CidPath(capability, _): CidPath<Capability>,
    ApiQuery(params): ApiQuery<FindParams>,
) -> Result<Response, ApiError> {
    let req = FindRequest { capability, limit: params.limit, timeout_ms: params.timeout_ms };
    let events = app.backend.find(req).await?;
    let lines = until_done(events)
        .map(|event| ndjson_line(&event))
        .take_until(app.shutdown.cancelled_owned());
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    Ok((headers, Body::from_stream(lines)).into_response())
}

/// The events of `rx` up to and including the first `Done`.
fn until_done(rx: mpsc::Receiver<FindEvent>) -> impl Stream<Item = FindEvent> + Send {
    futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        let event = rx.recv().await?;
        let next = if matches!(event, FindEvent::Done(_)) { None } else { Some(rx) };
        Some((event, next))
    })
}

fn ndjson_line(event: &FindEvent) -> Result<Bytes, serde_json::Error> {
    let mut line = serde_json::to_vec(event)?;
    line.push(b'\n');
    Ok(Bytes::from(line))
}

/// `axum::Json` whose rejections are typed `BadRequest`s.
struct Json<T>(T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::bad_request(format!(
            "the request body is larger than {MAX_BODY_BYTES} bytes (1 MiB)"
        ));
    }
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::bad_request(
            "the request body must be JSON, sent with `Content-Type: application/json`",
        ),
        other => ApiError::bad_request(other.body_text()),
    }
}

/// An id in the path, of the kind `K` names; a malformed one is a typed `BadRequest`.
struct CidPath<K>(Cid, PhantomData<K>);

/// What an id in a path is, for the message that refuses a malformed one.
trait IdKind {
    /// `"capability id"`.
    const WHAT: &'static str;
    /// Where the user finds a good one.
    const HINT: &'static str;
}

struct Capability;
impl IdKind for Capability {
    const WHAT: &'static str = "capability id";
    const HINT: &'static str = "pass the `b…` id `capmesh cap id` prints";
}

struct ReceiptId;
impl IdKind for ReceiptId {
    const WHAT: &'static str = "receipt id";
    const HINT: &'static str = "pass the `b…` id `capmesh receipts list` prints";
}

impl<S: Send + Sync, K: IdKind> FromRequestParts<S> for CidPath<K> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e: PathRejection| ApiError::bad_request(e.body_text()))?;
        text.parse::<Cid>().map(|id| CidPath(id, PhantomData)).map_err(|e| {
            ApiError::bad_request(format!("{text:?} is not a {} ({e}); {}", K::WHAT, K::HINT))
        })
    }
}

/// A call id in the path (16 bytes, unpadded base64url); a malformed one is a typed
/// `BadRequest`.
struct CallIdPath(CallId);

impl<S: Send + Sync> FromRequestParts<S> for CallIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e: PathRejection| ApiError::bad_request(e.body_text()))?;
        serde_json::from_value::<CallId>(serde_json::Value::String(text.clone()))
            .map(CallIdPath)
            .map_err(|_| {
                ApiError::bad_request(format!(
                    "{text:?} is not a call id: 16 bytes as unpadded base64url (22 characters), \
                     the `call_id` of the call"
                ))
            })
    }
}

/// A session id in the path, checked against the request's principal: a session's token may
/// name only its own session (another is `404`, as if it did not exist).
struct SessionPath(SessionId);

impl<S: Send + Sync> FromRequestParts<S> for SessionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e: PathRejection| ApiError::bad_request(e.body_text()))?;
        let id: SessionId = text.parse().map_err(ApiError::bad_request)?;
        match parts.extensions.get::<Principal>() {
            Some(Principal::Session(own)) if *own != id => {
                Err(ApiError::not_found(format!("no session {id}")))
            }
            _ => Ok(SessionPath(id)),
        }
    }
}

/// `axum::extract::Query` whose rejections are typed `BadRequest`s.
struct ApiQuery<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|e: QueryRejection| ApiError::bad_request(e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_64_lowercase_hex_and_redacted() {
        let (a, b) = (Token::generate().unwrap(), Token::generate().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 64);
        assert!(a.as_str().bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        assert_eq!(format!("{a:?}"), "Token(<redacted>)");
    }

    #[test]
    fn bearer_check() {
        let token = Token::generate().unwrap();
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            check_bearer(&headers, &token)
        };
        assert!(with(&format!("Bearer {}", token.as_str())).is_ok());
        assert!(with(&format!("bearer  {} ", token.as_str())).is_ok());
        let mut wrong = token.as_str().to_owned();
        wrong.replace_range(63.., if wrong.ends_with('0') { "1" } else { "0" });
        for bad in [
            format!("Bearer {wrong}"),
            token.as_str().to_owned(),
            "Bearer".into(),
            "Basic x".into(),
        ] {
            let e = with(&bad).unwrap_err();
            assert_eq!(e.code, crate::ErrorCode::Unauthorized, "{bad}");
        }
        assert!(check_bearer(&HeaderMap::new(), &token).is_err());
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[tokio::test]
    async fn bind_refuses_other_than_loopback() {
        let e = bind("0.0.0.0:0".parse().unwrap()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert!(listener.local_addr().unwrap().port() != 0);
    }
}
