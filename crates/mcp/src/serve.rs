//! Serving [`MeshTools`] over stdio and over streamable HTTP on a loopback address.

use std::{
    io::Read,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use rmcp::{
    ServiceExt,
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use tokio::{
    io::{AsyncRead, ReadBuf},
    net::TcpListener,
    sync::mpsc,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::MeshTools;

/// Path of the MCP endpoint on the HTTP server.
pub const MCP_PATH: &str = "/mcp";

/// Name of the token file in the data directory.
pub const TOKEN_FILE: &str = "mcp.token";

/// Bytes read from stdin at once, and chunks of them queued for the session.
const STDIN_CHUNK: usize = 64 * 1024;
const STDIN_QUEUE: usize = 16;

/// Why serving stopped or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("the MCP session over stdio failed: {0}")]
    Stdio(String),
    #[error("cannot serve MCP over HTTP: {0}")]
    Io(#[from] std::io::Error),
    #[error("MCP over HTTP is served on loopback addresses only, not {0}")]
    NotLoopback(SocketAddr),
}

/// Serves `tools` on stdin/stdout until the client closes them or `cancel`, whichever comes
/// first: a client that keeps stdin open does not keep the process alive past `cancel` (a
/// signal). Meanwhile [`MeshTools::watch`] tells the client when the tools change.
///
/// Stdin is read on a thread of its own, not on tokio's blocking pool: a blocking read cannot
/// be cancelled, and a runtime shutting down waits for its blocking pool, so a read pending on
/// an open stdin would hold the process until the client wrote or closed it. The thread ends at
/// end of input or at its next read once the session is over; a process exits without waiting
/// for it. It is the one thread here that no cancellation token can stop.
pub async fn serve_stdio(tools: MeshTools, cancel: CancellationToken) -> Result<(), ServeError> {
    let stdin = StdinReader::spawn()?;
    let session = cancel.child_token();
    let mut tasks = JoinSet::new();
    {
        let (tools, session) = (tools.clone(), session.clone());
        tasks.spawn(async move { tools.watch(session).await });
    }
    let served = async {
        let running = match tools.serve_with_ct((stdin, tokio::io::stdout()), session.clone()).await
        {
            Ok(running) => running,
            // Stopped before the client's handshake.
            Err(_) if cancel.is_cancelled() => return Ok(()),
            Err(e) => return Err(ServeError::Stdio(e.to_string())),
        };
        running.waiting().await.map_err(|e| ServeError::Stdio(e.to_string()))?;
        Ok(())
    }
    .await;
    session.cancel();
    while tasks.join_next().await.is_some() {}
    served
}

/// Standard input as an [`AsyncRead`], read by a thread of its own into a bounded queue (see
/// [`serve_stdio`]).
#[derive(Debug)]
struct StdinReader {
    chunks: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

impl StdinReader {
    fn spawn() -> std::io::Result<Self> {
        let (tx, chunks) = mpsc::channel(STDIN_QUEUE);
        std::thread::Builder::new().name("capmesh-mcp-stdin".into()).spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; STDIN_CHUNK];
            loop {
                let chunk = match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => Ok(buf[..n].to_vec()),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let failed = chunk.is_err();
                // Fails once the session is over (the reader is gone).
                if tx.blocking_send(chunk).is_err() || failed {
                    return;
                }
            }
        })?;
        Ok(Self { chunks, chunk: Vec::new(), at: 0 })
    }
}

impl AsyncRead for StdinReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if self.at < self.chunk.len() {
                let n = out.remaining().min(self.chunk.len() - self.at);
                let at = self.at;
                out.put_slice(&self.chunk[at..at + n]);
                self.at += n;
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(self.chunks.poll_recv(cx)) {
                Some(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                // End of input: nothing put in `out`.
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Binds `addr`, which must be a loopback address (port 0 picks one).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    if !addr.ip().is_loopback() {
        return Err(ServeError::NotLoopback(addr));
    }
    Ok(TcpListener::bind(addr).await?)
}

/// Serves `tools` over MCP streamable HTTP at [`MCP_PATH`] on `listener` until `cancel`.
/// Before the SDK sees a request: an `Origin` header, when there is one, must be a loopback
/// origin (403 and a JSON-RPC error otherwise: DNS rebinding, MCP 2025-06-18 "Security
/// Warning"; clients other than browsers send none); every request must carry
/// `Authorization: Bearer <token>` (checked in constant time; 401 otherwise); and the `Host`
/// must be of the loopback. A session's `DELETE` is answered 204. Meanwhile
/// [`MeshTools::watch`] tells the sessions when the tools change.
pub async fn serve_http(
    listener: TcpListener,
    tools: MeshTools,
    token: String,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    // Host validation (DNS rebinding) admits the loopback names and the bound address itself.
    let bound = listener.local_addr()?;
    let hosts =
        ["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned(), bound.ip().to_string()];
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_cancellation_token(cancel.child_token());
    let mut tasks = JoinSet::new();
    let watching = cancel.child_token();
    {
        let (tools, watching) = (tools.clone(), watching.clone());
        tasks.spawn(async move { tools.watch(watching).await });
    }
    let service: StreamableHttpService<MeshTools, LocalSessionManager> =
        StreamableHttpService::new(move || Ok(tools.clone()), Arc::default(), config);
    let app = Router::new()
        .nest_service(MCP_PATH, service)
        .layer(middleware::from_fn_with_state(Arc::new(token), guard));
    let served = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await;
    watching.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(served?)
}

/// What every HTTP request goes through before the SDK: the `Origin` check, then the bearer
/// token; and the SDK's answer to a session `DELETE` (202) made a 204, which clients expect
/// (the Python SDK takes a 202 for a failure).
async fn guard(State(token): State<Arc<String>>, request: Request, next: Next) -> Response {
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !is_loopback_origin(origin) {
            tracing::warn!(origin, "MCP request from a page that is not of the loopback: refused");
            return forbidden_origin(origin);
        }
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    if !constant_time_eq(given, token.as_bytes()) {
        let body = "missing or wrong bearer token: send `Authorization: Bearer <the contents of \
                    mcp.token in the node's data directory>`";
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body)
            .into_response();
    }
    let delete = request.method() == Method::DELETE;
    let response = next.run(request).await;
    if delete && response.status() == StatusCode::ACCEPTED {
        let (mut parts, _) = response.into_parts();
        parts.status = StatusCode::NO_CONTENT;
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::CONTENT_TYPE);
        return Response::from_parts(parts, Body::empty());
    }
    response
}

/// Whether `origin` (an `Origin` header) is a page of this machine: `http://127.0.0.1`,
/// `http://localhost` or `http://[::1]`, with or without a port.
fn is_loopback_origin(origin: &str) -> bool {
    let rest = match origin.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &origin[7..],
        _ => return false,
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        match v6.split_once(']') {
            Some((host, port)) => (host, port),
            None => return false,
        }
    } else {
        match rest.find(':') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        }
    };
    let port_ok = match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(digits) => {
            !digits.is_empty()
                && digits.len() <= 5
                && digits.bytes().all(|b| b.is_ascii_digit())
                && digits.parse::<u16>().is_ok()
        }
    };
    let host_ok = host == "127.0.0.1" || host.eq_ignore_ascii_case("localhost") || host == "::1";
    host_ok && port_ok
}

/// 403 with a JSON-RPC error saying why.
fn forbidden_origin(origin: &str) -> Response {
    let shown: String = origin.chars().take(200).collect();
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": -32600,
            "message": format!(
                "Forbidden: Origin {shown:?} is not a loopback origin. capmesh mcp --http answers \
                 pages of http://127.0.0.1, http://localhost and http://[::1] (any port) and \
                 clients that send no Origin (protection against DNS rebinding)"
            ),
        },
    });
    (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "application/json")], body.to_string())
        .into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of MCP over HTTP for `data_dir`: read from [`TOKEN_FILE`], or made (32 random
/// bytes, hex) and written there with mode 0600 on first use. Unlike the API's token it
/// survives node restarts, so an MCP client's configuration keeps working.
pub fn token(data_dir: &Path) -> std::io::Result<String> {
    let path: PathBuf = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    let token = data_encoding::HEXLOWER.encode(&bytes);
    // Written to a file of this process, then linked into place only if none is there: of two
    // processes starting at once, the second reads the first one's token.
    let tmp = data_dir.join(format!("{TOKEN_FILE}.{}.tmp", std::process::id()));
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(token.as_bytes())?;
        file.sync_all()?;
    }
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(token),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)?.trim().to_owned())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("capmesh-mcp-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let a = token(&dir).unwrap_or_else(|e| panic!("{e}"));
        let b = token(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(TOKEN_FILE)).map(|m| m.permissions().mode());
            assert_eq!(mode.ok().map(|m| m & 0o777), Some(0o600));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_loopback_origins_pass() {
        for ok in [
            "http://127.0.0.1",
            "http://127.0.0.1:8080",
            "http://localhost",
            "http://LOCALHOST:3000",
            "HTTP://localhost:65535",
            "http://[::1]",
            "http://[::1]:6274",
        ] {
            assert!(is_loopback_origin(ok), "{ok}");
        }
        for bad in [
            "",
            "null",
            "https://127.0.0.1",
            "http://evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example:80",
            "http://127.0.0.2",
            "http://[::2]:80",
            "http://[::1",
            "http://localhost:",
            "http://localhost:65536",
            "http://localhost:80/path",
            "http://user@localhost",
            "file://",
            "http://",
        ] {
            assert!(!is_loopback_origin(bad), "{bad}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
    }
}
