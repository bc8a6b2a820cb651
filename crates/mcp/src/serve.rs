//! Serving [`MeshTools`] over stdio and over streamable HTTP on a loopback address.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use rmcp::{
    ServiceExt,
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::MeshTools;

/// Path of the MCP endpoint on the HTTP server.
pub const MCP_PATH: &str = "/mcp";

/// Name of the token file in the data directory.
pub const TOKEN_FILE: &str = "mcp.token";

/// Why serving stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the MCP session over stdio failed: {0}")]
    Stdio(String),
    #[error("cannot serve MCP over HTTP: {0}")]
    Io(#[from] std::io::Error),
    #[error("MCP over HTTP is served on loopback addresses only, not {0}")]
    NotLoopback(SocketAddr),
}

/// Serves `tools` on stdin/stdout until the client closes them (or `cancel`).
pub async fn serve_stdio(tools: MeshTools, cancel: CancellationToken) -> Result<(), ServeError> {
    let running = tools
        .serve_with_ct(rmcp::transport::stdio(), cancel)
        .await
        .map_err(|e| ServeError::Stdio(e.to_string()))?;
    running.waiting().await.map_err(|e| ServeError::Stdio(e.to_string()))?;
    Ok(())
}

/// Binds `addr`, which must be a loopback address (port 0 picks one).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    if !addr.ip().is_loopback() {
        return Err(ServeError::NotLoopback(addr));
    }
    Ok(TcpListener::bind(addr).await?)
}

/// Serves `tools` over MCP streamable HTTP at [`MCP_PATH`] on `listener` until `cancel`. Every
/// request must carry `Authorization: Bearer <token>` (checked in constant time before anything
/// else; 401 otherwise), and a `Host` of the loopback (DNS rebinding).
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
    let service: StreamableHttpService<MeshTools, LocalSessionManager> =
        StreamableHttpService::new(move || Ok(tools.clone()), Arc::default(), config);
    let app = Router::new()
        .nest_service(MCP_PATH, service)
        .layer(middleware::from_fn_with_state(Arc::new(token), require_token));
    axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await?;
    Ok(())
}

async fn require_token(State(token): State<Arc<String>>, request: Request, next: Next) -> Response {
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
    next.run(request).await
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
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
    }
}
