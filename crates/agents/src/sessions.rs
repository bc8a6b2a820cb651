//! The session table: who an agent is on this node, the token scoped to it, and when it ends.
//!
//! Sessions live in memory only: a node restart ends them all (agents open new ones). A token
//! is kept as its BLAKE3 hash, so the table never holds a usable secret and a lookup compares
//! hashes, not the token's bytes one by one.

use std::{collections::HashMap, sync::Arc};

use capmesh_api::{
    ApiError, SESSION_METADATA_MAX, SESSION_NAME_MAX, SESSION_TTL_DEFAULT_SECS,
    SESSION_TTL_MAX_SECS, SESSION_TTL_MIN_SECS, SessionId, SessionInfo, SessionRequest,
};
use capmesh_market::SessionTag;
use tokio_util::sync::CancellationToken;

use crate::runtime::Attached;

/// One live session.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: SessionId,
    pub(crate) name: String,
    pub(crate) metadata: std::collections::BTreeMap<String, serde_json::Value>,
    pub(crate) ttl_ms: u64,
    pub(crate) created_ms: u64,
    pub(crate) expires_ms: u64,
    token_hash: [u8; 32],
    /// Fires when the session ends (expiry, `DELETE`, node shutdown).
    pub(crate) ended: CancellationToken,
    pub(crate) runtime: Arc<Attached>,
    pub(crate) calls_made: u64,
}

impl Session {
    pub(crate) fn tag(&self) -> SessionTag {
        SessionTag { id: self.id.to_string(), name: self.name.clone() }
    }

    pub(crate) fn info(&self) -> SessionInfo {
        let runtime = self.runtime.snapshot();
        SessionInfo {
            id: self.id,
            name: self.name.clone(),
            metadata: self.metadata.clone(),
            ttl_secs: self.ttl_ms / 1000,
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            runtime_attached: runtime.attached,
            capabilities: runtime.capabilities,
            calls_made: self.calls_made,
            calls_served: runtime.calls_served,
        }
    }
}

/// A request checked: name, metadata size and lifetime within their bounds.
pub(crate) struct Checked {
    pub(crate) name: String,
    pub(crate) metadata: std::collections::BTreeMap<String, serde_json::Value>,
    pub(crate) ttl_ms: u64,
}

pub(crate) fn check(req: SessionRequest) -> Result<Checked, ApiError> {
    if req.name.is_empty()
        || req.name.len() > SESSION_NAME_MAX
        || req.name.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "a session name is 1 to {SESSION_NAME_MAX} bytes without control characters"
        )));
    }
    let size = serde_json::to_vec(&req.metadata).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > SESSION_METADATA_MAX {
        return Err(ApiError::bad_request(format!(
            "session metadata is {size} bytes as JSON, over the limit of {SESSION_METADATA_MAX}"
        )));
    }
    let ttl = req.ttl_secs.unwrap_or(SESSION_TTL_DEFAULT_SECS);
    if !(SESSION_TTL_MIN_SECS..=SESSION_TTL_MAX_SECS).contains(&ttl) {
        return Err(ApiError::bad_request(format!(
            "ttl_secs must be {SESSION_TTL_MIN_SECS} to {SESSION_TTL_MAX_SECS}, not {ttl}"
        )));
    }
    Ok(Checked { name: req.name, metadata: req.metadata, ttl_ms: ttl * 1000 })
}

/// The sessions of a node, bounded in number.
#[derive(Debug, Default)]
pub(crate) struct Table {
    by_id: HashMap<SessionId, Session>,
    by_token: HashMap<[u8; 32], SessionId>,
}

/// A fresh session id and token (64 hex digits).
pub(crate) fn fresh() -> Result<(SessionId, String), ApiError> {
    let mut bytes = [0u8; 48];
    getrandom::fill(&mut bytes)
        .map_err(|e| ApiError::internal(format!("no randomness for a session: {e}")))?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[..16]);
    let token: String = bytes[16..].iter().map(|b| format!("{b:02x}")).collect();
    Ok((SessionId(id), token))
}

pub(crate) fn token_hash(token: &[u8]) -> [u8; 32] {
    *blake3::hash(token).as_bytes()
}

impl Table {
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert(
        &mut self,
        id: SessionId,
        token: &str,
        checked: Checked,
        now_ms: u64,
        ended: CancellationToken,
        runtime: Arc<Attached>,
    ) -> &Session {
        let token_hash = token_hash(token.as_bytes());
        self.by_token.insert(token_hash, id);
        self.by_id.entry(id).or_insert(Session {
            id,
            name: checked.name,
            metadata: checked.metadata,
            ttl_ms: checked.ttl_ms,
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(checked.ttl_ms),
            token_hash,
            ended,
            runtime,
            calls_made: 0,
        })
    }

    pub(crate) fn by_token(&self, token: &[u8], now_ms: u64) -> Option<SessionId> {
        let id = self.by_token.get(&token_hash(token))?;
        self.by_id.get(id).filter(|s| s.expires_ms > now_ms).map(|s| s.id)
    }

    pub(crate) fn get(&self, id: &SessionId) -> Option<&Session> {
        self.by_id.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &SessionId) -> Option<&mut Session> {
        self.by_id.get_mut(id)
    }

    pub(crate) fn remove(&mut self, id: &SessionId) -> Option<Session> {
        let session = self.by_id.remove(id)?;
        self.by_token.remove(&session.token_hash);
        Some(session)
    }

    pub(crate) fn expired(&self, now_ms: u64) -> Vec<SessionId> {
        self.by_id.values().filter(|s| s.expires_ms <= now_ms).map(|s| s.id).collect()
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &Session> {
        self.by_id.values()
    }

    pub(crate) fn ids(&self) -> Vec<SessionId> {
        self.by_id.keys().copied().collect()
    }
}
