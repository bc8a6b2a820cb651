//! The agent-facing bodies of the API (`specs/api.md` §4): sessions, the frames of a runtime
//! attached over a WebSocket, and asynchronous calls with their events.
//!
//! Protocol codes, states and event names are enums parsed once here, at the edge; the node
//! never matches their strings.

use std::{collections::BTreeMap, fmt, str::FromStr};

use capmesh_types::{Cid, PeerId};
use capmesh_wire::{CallId, CallLimits, Price, repr::Bytes};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::{
    ApiError,
    types::{Attempt, CallResult, repr},
};

/// Shortest and longest session lifetime without a heartbeat, and the default.
pub const SESSION_TTL_MIN_SECS: u64 = 5;
pub const SESSION_TTL_MAX_SECS: u64 = 86_400;
pub const SESSION_TTL_DEFAULT_SECS: u64 = 300;
/// Longest session name, in bytes.
pub const SESSION_NAME_MAX: usize = 128;
/// Largest session metadata, as compact JSON, in bytes.
pub const SESSION_METADATA_MAX: usize = 4096;

/// A session id: 16 random bytes as 32 lowercase hex digits. Parsed once, where it enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl FromStr for SessionId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bytes = data_encoding::HEXLOWER
            .decode(s.as_bytes())
            .ok()
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .ok_or_else(|| {
                format!("{s:?} is not a session id: 32 lowercase hex digits, as POST /v1/sessions answered")
            })?;
        Ok(SessionId(bytes))
    }
}

impl Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for SessionId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SessionId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A session id: 16 random bytes as 32 lowercase hex digits.",
            "type": "string",
            "pattern": "^[0-9a-f]{32}$",
        })
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A W3C trace id (`traceparent`'s second field): 16 bytes as 32 lowercase hex digits, not all
/// zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

impl TraceId {
    /// The trace id of a W3C `traceparent` header value
    /// (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`), as the Trace Context spec
    /// parses it: version `ff` and all-zero ids are invalid; a version above `00` may carry
    /// more fields after the flags.
    pub fn from_traceparent(header: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "traceparent {header:?} is malformed ({why}): send \
                 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>"
            )
        };
        let header = header.trim();
        let mut parts = header.split('-');
        let (Some(version), Some(trace), Some(parent), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("too few fields"));
        };
        let hex = |s: &str, n: usize| {
            s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2) || version == "ff" {
            return Err(bad("version"));
        }
        if version == "00" && parts.next().is_some() {
            return Err(bad("version 00 has exactly four fields"));
        }
        if !hex(trace, 32) || trace.bytes().all(|b| b == b'0') {
            return Err(bad("trace id"));
        }
        if !hex(parent, 16) || parent.bytes().all(|b| b == b'0') {
            return Err(bad("parent id"));
        }
        if !hex(flags, 2) {
            return Err(bad("flags"));
        }
        trace.parse()
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl FromStr for TraceId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        data_encoding::HEXLOWER
            .decode(s.as_bytes())
            .ok()
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .filter(|b| b.iter().any(|x| *x != 0))
            .map(TraceId)
            .ok_or_else(|| format!("{s:?} is not a trace id: 32 lowercase hex digits, not all 0"))
    }
}

impl Serialize for TraceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for TraceId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TraceId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A W3C trace id: 16 bytes as 32 lowercase hex digits, not all zero.",
            "type": "string",
            "pattern": "^[0-9a-f]{32}$",
            "not": { "const": "00000000000000000000000000000000" },
        })
    }
}

impl<'de> Deserialize<'de> for TraceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Open a session: `POST /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// Who the agent is, for people and ledgers: 1 to [`SESSION_NAME_MAX`] bytes.
    pub name: String,
    /// Anything the agent wants kept with the session (at most [`SESSION_METADATA_MAX`] bytes
    /// as JSON).
    #[serde(
        default,
        deserialize_with = "crate::types::null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Lifetime without a heartbeat, [`SESSION_TTL_MIN_SECS`] to [`SESSION_TTL_MAX_SECS`];
    /// absent: [`SESSION_TTL_DEFAULT_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

impl SessionRequest {
    /// A session named `name` with the default lifetime and no metadata.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), metadata: BTreeMap::new(), ttl_secs: None }
    }
}

/// A session just opened: the answer of `POST /v1/sessions`. The token is shown once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionCreated {
    pub session: SessionInfo,
    /// The bearer token scoped to this session (64 hex digits).
    pub token: String,
}

/// A session as the node reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionInfo {
    pub id: SessionId,
    pub name: String,
    pub metadata: BTreeMap<String, serde_json::Value>,
    pub ttl_secs: u64,
    /// Unix ms.
    pub created_ms: u64,
    /// When it ends unless a heartbeat comes first (unix ms).
    pub expires_ms: u64,
    /// Whether an agent's runtime socket is attached now.
    pub runtime_attached: bool,
    /// The capabilities its runtime announced and the node serves for it.
    pub capabilities: Vec<ServedCapability>,
    /// Calls made under it (`POST /v1/call`, `POST /v1/calls`).
    pub calls_made: u64,
    /// Calls its runtime served.
    pub calls_served: u64,
}

/// A capability served for a session's runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServedCapability {
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::Cid")]
    pub capability: Cid,
    pub name: String,
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::Cid")]
    pub advert_id: Cid,
}

/// `GET /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionInfo>,
}

/// One capability an agent's runtime announces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Announcement {
    /// The contract (`specs/schemas/records/Contract.json`); its CID is the capability id.
    #[schemars(with = "crate::openapi::Contract")]
    pub contract: serde_json::Value,
    /// Price per call; absent: 0 `free` (as for `POST /v1/capabilities`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::openapi::Price>")]
    pub price: Option<Price>,
    /// Limits offered; absent: the node's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::openapi::Limits>")]
    pub limits: Option<CallLimits>,
    /// Expected latency quoted in offers; absent: the running average of past runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
}

/// A frame an agent sends on its runtime socket (`GET /v1/sessions/{id}/runtime`), as JSON text
/// with a `type` tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentFrame {
    /// Serve these capabilities for the session's lifetime (answered by `announced`).
    Announce { capabilities: Vec<Announcement> },
    /// Stop serving one (answered by `retired`).
    Retire {
        #[serde(with = "repr")]
        #[schemars(with = "crate::openapi::Cid")]
        capability: Cid,
    },
    /// The output of call `call_id` (checked against the contract's output schema).
    Result { call_id: String, output: serde_json::Value },
    /// Call `call_id` failed in the agent; `message` reaches the caller.
    Error { call_id: String, message: String },
    /// A chunk of a streaming call: `text` (UTF-8) or `data` (unpadded base64url), exactly one.
    Chunk {
        call_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "Option<crate::openapi::Bytes>")]
        data: Option<Bytes>,
    },
    /// The end of a streaming call's chunks.
    End { call_id: String },
    /// Keeps the socket alive and extends the session like a heartbeat; answered by `pong`.
    Ping,
}

/// A frame the node sends on a runtime socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeFrame {
    /// First frame on a socket: the session and what it serves already (after a reconnect
    /// within the grace period, the earlier announcements still stand).
    Welcome { session: SessionId, capabilities: Vec<ServedCapability> },
    /// Answer to `announce`: every capability is served and advertised.
    Announced { capabilities: Vec<ServedCapability> },
    /// Answer to `retire`.
    Retired {
        #[serde(with = "repr")]
        #[schemars(with = "crate::openapi::Cid")]
        capability: Cid,
    },
    /// Run a call: answer with `result` or `error`, or `chunk`s then `end` for a streaming
    /// contract, before `deadline_ms` (unix ms).
    Call {
        call_id: String,
        #[serde(with = "repr")]
        #[schemars(with = "crate::openapi::Cid")]
        capability: Cid,
        args: serde_json::Value,
        deadline_ms: u64,
        /// The call's trace id, for the agent's logs.
        #[serde(default)]
        trace: Option<TraceId>,
    },
    /// Stop call `call_id`: the caller cancelled, or the deadline passed. Nothing the agent
    /// sends for it afterwards is used.
    Cancel { call_id: String, reason: CancelReason },
    /// Something the agent sent was refused; the socket stays open.
    Error {
        code: FrameError,
        message: String,
        #[serde(default)]
        call_id: Option<String>,
    },
    /// Answer to `ping`.
    Pong,
}

/// Why the node cancelled a call pushed to an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CancelReason {
    /// The caller cancelled the call.
    Cancelled,
    /// The call's time ran out.
    Timeout,
    /// The node is stopping or the session ended.
    Shutdown,
}

/// Why a frame from an agent was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum FrameError {
    /// Not JSON, or not one of the frames of `specs/api.md` §4.3.
    BadFrame,
    /// Larger than the frame limit.
    TooLarge,
    /// More frames than the node takes per second: this one was dropped.
    RateLimited,
    /// An announced contract is not well-formed, or cannot be served.
    BadContract,
    /// A frame for a call id the node did not push (or one already answered or cancelled).
    UnknownCall,
    /// `retire` of a capability this session does not serve.
    NotServed,
    /// More capabilities than a session may serve.
    TooMany,
    /// The output does not match the contract's output schema: the call fails with
    /// `OutputInvalid`.
    OutputInvalid,
    /// A chunk for a contract that does not stream, a result for one that does, or both or
    /// neither of `text` and `data`.
    WrongAnswer,
    /// The node could not publish or retire an advert; try again.
    Unavailable,
}

/// Where an asynchronous call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// Looking for providers.
    Finding,
    /// Asking providers for offers.
    Negotiating,
    /// A provider runs it.
    Running,
    /// Succeeded: `result` holds the output and the receipt.
    Done,
    /// Failed: `error` says why.
    Failed,
    /// Cancelled by the agent or the node stopping.
    Cancelled,
}

impl CallState {
    /// Whether the call has ended.
    pub fn is_final(self) -> bool {
        matches!(self, CallState::Done | CallState::Failed | CallState::Cancelled)
    }
}

/// A call accepted for asynchronous running: the answer (`202`) of `POST /v1/calls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CallAccepted {
    #[schemars(with = "crate::openapi::CallId")]
    pub call_id: CallId,
    pub trace: TraceId,
    pub state: CallState,
}

/// An asynchronous call: `GET /v1/calls/{call_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CallStatus {
    #[schemars(with = "crate::openapi::CallId")]
    pub call_id: CallId,
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::Cid")]
    pub capability: Cid,
    pub trace: TraceId,
    pub state: CallState,
    /// The session it was made under; `null` for the node's own token.
    #[serde(default)]
    pub session: Option<SessionId>,
    /// Unix ms.
    pub created_ms: u64,
    #[serde(default)]
    pub ended_ms: Option<u64>,
    /// The provider of the current (or last) try.
    #[serde(with = "crate::types::repr::option", default)]
    #[schemars(with = "Option<crate::openapi::PeerId>")]
    pub provider: Option<PeerId>,
    /// Events so far (the `id` of the next event is this number).
    pub events: u64,
    /// The result, once `done`.
    #[serde(default)]
    pub result: Option<Box<CallResult>>,
    /// Why it failed or was cancelled.
    #[serde(default)]
    pub error: Option<ApiError>,
}

/// One event of an asynchronous call, as sent on `GET /v1/calls/{call_id}/events` (the SSE
/// `event:` field is its `event` tag, [`CallEvent::name`]; `data:` this JSON; `id:` its sequence
/// number).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum CallEvent {
    /// Providers found (after this node's policy), in the order they are asked.
    Providers {
        #[serde(with = "peer_list")]
        #[schemars(with = "Vec<crate::openapi::PeerId>")]
        providers: Vec<PeerId>,
    },
    /// A usable offer.
    Offer {
        #[serde(with = "repr")]
        #[schemars(with = "crate::openapi::PeerId")]
        provider: PeerId,
        #[schemars(with = "crate::openapi::Price")]
        price: Price,
        latency_ms: u64,
    },
    /// A try starts at this provider (`warm`: under a standing offer).
    Chosen {
        #[serde(with = "repr")]
        #[schemars(with = "crate::openapi::PeerId")]
        provider: PeerId,
        warm: bool,
    },
    /// The provider accepted the call and runs it.
    Accepted {
        #[serde(with = "repr")]
        #[schemars(with = "crate::openapi::PeerId")]
        provider: PeerId,
    },
    /// A try failed; the call fails over if it can.
    AttemptFailed { attempt: Attempt },
    /// A chunk of a streaming output, as it arrived (`seq` from 0).
    Progress {
        seq: u64,
        #[schemars(with = "crate::openapi::Bytes")]
        data: Bytes,
    },
    /// Chunks past the call's event budget were not kept as events (they are still counted
    /// and covered by the receipt's stream root).
    ProgressTruncated { dropped: u64 },
    /// The call succeeded.
    Done {
        #[serde(with = "repr")]
        #[schemars(with = "crate::openapi::Cid")]
        receipt_id: Cid,
        trace: TraceId,
        result: Box<CallResult>,
    },
    /// The call failed.
    Failed { error: ApiError, trace: TraceId },
    /// The call was cancelled.
    Cancelled { trace: TraceId },
}

impl CallEvent {
    /// The SSE event name (the `event` tag).
    pub fn name(&self) -> &'static str {
        match self {
            CallEvent::Providers { .. } => "providers",
            CallEvent::Offer { .. } => "offer",
            CallEvent::Chosen { .. } => "chosen",
            CallEvent::Accepted { .. } => "accepted",
            CallEvent::AttemptFailed { .. } => "attempt_failed",
            CallEvent::Progress { .. } => "progress",
            CallEvent::ProgressTruncated { .. } => "progress_truncated",
            CallEvent::Done { .. } => "done",
            CallEvent::Failed { .. } => "failed",
            CallEvent::Cancelled { .. } => "cancelled",
        }
    }

    /// Whether it is the last event of a call.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            CallEvent::Done { .. } | CallEvent::Failed { .. } | CallEvent::Cancelled { .. }
        )
    }
}

/// An event with its sequence number (the SSE `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sequenced {
    pub id: u64,
    #[serde(flatten)]
    pub event: CallEvent,
}

mod peer_list {
    use capmesh_types::PeerId;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(peers: &[PeerId], s: S) -> Result<S::Ok, S::Error> {
        peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PeerId>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|p| p.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parses_as_w3c_says() {
        let t =
            TraceId::from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // A later version may add fields.
        assert!(
            TraceId::from_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_ok()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(TraceId::from_traceparent(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn frames_have_their_json_form() {
        let f: AgentFrame =
            serde_json::from_str(r#"{"type":"result","call_id":"c1","output":{"x":1}}"#).unwrap();
        assert_eq!(
            f,
            AgentFrame::Result { call_id: "c1".into(), output: serde_json::json!({"x": 1}) }
        );
        assert!(serde_json::from_str::<AgentFrame>(r#"{"type":"launch"}"#).is_err());
        let n = NodeFrame::Cancel { call_id: "c1".into(), reason: CancelReason::Timeout };
        assert_eq!(
            serde_json::to_value(&n).unwrap(),
            serde_json::json!({"type": "cancel", "call_id": "c1", "reason": "Timeout"})
        );
        let id: SessionId = "000102030405060708090a0b0c0d0e0f".parse().unwrap();
        assert_eq!(id.to_string(), "000102030405060708090a0b0c0d0e0f");
        assert!("0001".parse::<SessionId>().is_err());
    }
}
