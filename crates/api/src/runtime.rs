//! The runtime socket (`GET /v1/sessions/{id}/runtime`): frames between an agent's WebSocket and
//! the backend's [`RuntimeLink`].
//!
//! The pump parses every text frame once into an [`AgentFrame`] and refuses what it cannot
//! take with a typed [`NodeFrame::Error`] on the same socket, which stays open: frames that are
//! not JSON or not a known frame, frames over [`FRAME_MAX`], frames beyond the rate
//! ([`FRAMES_PER_SEC`], bursts of [`FRAME_BURST`]) or beyond what the backend has room for.
//! Only well-formed frames reach the backend, so a misbehaving agent costs the node a bounded
//! amount of work and never blocks the pump's writes.

use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agents::{AgentFrame, FrameError, NodeFrame};

/// Largest message the WebSocket layer reads at all; past [`FRAME_MAX`] a message is refused
/// with `TooLarge` but the socket stays up, past this the socket is closed.
pub(crate) const SOCKET_MESSAGE_MAX: usize = 4 << 20;
/// Read buffer of a runtime socket.
pub(crate) const SOCKET_READ_BUFFER: usize = 16 << 10;
/// Largest frame the node takes from an agent: 1 MiB of output plus room for the envelope.
pub const FRAME_MAX: usize = (1 << 20) + (64 << 10);
/// Frames per second an agent may send, sustained …
pub const FRAMES_PER_SEC: f64 = 1000.0;
/// … and in a burst.
pub const FRAME_BURST: f64 = 2000.0;
/// Frames queued between the pump and the backend, each way.
pub const LINK_QUEUE: usize = 256;

/// The backend's ends of an attached runtime socket: frames from the agent (only well-formed
/// ones) and frames to it. Dropping `to_agent`'s sender closes the socket; the socket closing
/// drops `from_agent`.
#[derive(Debug)]
pub struct RuntimeLink {
    pub from_agent: mpsc::Sender<AgentFrame>,
    pub to_agent: mpsc::Receiver<NodeFrame>,
}

impl RuntimeLink {
    /// A link and the backend's ends of it: (link for the server, frames from the agent,
    /// sender of frames to the agent), each queue [`LINK_QUEUE`] long.
    pub fn new() -> (Self, mpsc::Receiver<AgentFrame>, mpsc::Sender<NodeFrame>) {
        let (from_tx, from_rx) = mpsc::channel(LINK_QUEUE);
        let (to_tx, to_rx) = mpsc::channel(LINK_QUEUE);
        (Self { from_agent: from_tx, to_agent: to_rx }, from_rx, to_tx)
    }
}

/// What the pump does with one message from the agent.
#[derive(Debug, PartialEq)]
pub(crate) enum Inbound {
    /// Hand it to the backend.
    Frame(AgentFrame),
    /// Refuse it with this error frame.
    Refuse(NodeFrame),
    /// Drop it silently (a flood already told; pings and pongs of the WebSocket layer).
    Ignore,
    /// The agent closed the socket.
    Closed,
}

/// The pump's state: the rate limiter. Pure, so tests drive it without a socket.
#[derive(Debug)]
pub(crate) struct Gate {
    tokens: f64,
    last: Instant,
    /// A `RateLimited` error was sent and no frame reached the backend since.
    told: bool,
    /// Frames refused for the rate, for the log.
    pub(crate) dropped: u64,
}

impl Gate {
    pub(crate) fn new(now: Instant) -> Self {
        Self { tokens: FRAME_BURST, last: now, told: false, dropped: 0 }
    }

    /// Judges one message that arrived at `now`.
    pub(crate) fn judge(&mut self, msg: Message, now: Instant) -> Inbound {
        let text = match msg {
            Message::Text(t) => Some(t),
            Message::Binary(_) => None,
            Message::Close(_) => return Inbound::Closed,
            Message::Ping(_) | Message::Pong(_) => return Inbound::Ignore,
        };
        if let Some(flood) = self.spend(now) {
            return flood;
        }
        let Some(text) = text else {
            return Inbound::Refuse(refuse(
                FrameError::BadFrame,
                "frames are JSON text, not binary",
            ));
        };
        if text.len() > FRAME_MAX {
            return Inbound::Refuse(refuse(
                FrameError::TooLarge,
                format!("a frame of {} bytes is over the limit of {FRAME_MAX}", text.len()),
            ));
        }
        match serde_json::from_str::<AgentFrame>(text.as_str()) {
            Ok(frame) => Inbound::Frame(frame),
            Err(e) => Inbound::Refuse(NodeFrame::Error {
                code: FrameError::BadFrame,
                message: format!(
                    "not a runtime frame ({e}); frames are JSON objects with a \"type\" of \
                     announce, retire, result, error, chunk, end or ping (specs/api.md §4.3)"
                ),
                call_id: call_id_of(text.as_str()),
            }),
        }
    }

    /// A frame reached the backend: a later drop starts a new flood (and is told again).
    pub(crate) fn delivered(&mut self) {
        self.told = false;
    }

    /// A frame dropped because the backend has no room: told once per flood, like the rate.
    pub(crate) fn backlogged(&mut self) -> Option<NodeFrame> {
        self.dropped += 1;
        if std::mem::replace(&mut self.told, true) {
            return None;
        }
        Some(refuse(
            FrameError::RateLimited,
            "the node is still working through earlier frames: frames are dropped until it \
             catches up; send fewer at once",
        ))
    }

    /// Takes one token for a data frame; `Some` when the bucket is empty (the frame is dropped:
    /// refused the first time in a flood, ignored after).
    fn spend(&mut self, now: Instant) -> Option<Inbound> {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * FRAMES_PER_SEC;
        self.tokens = (self.tokens + refill).min(FRAME_BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return None;
        }
        self.dropped += 1;
        if self.told {
            return Some(Inbound::Ignore);
        }
        self.told = true;
        Some(Inbound::Refuse(refuse(
            FrameError::RateLimited,
            format!(
                "more than {FRAMES_PER_SEC} frames a second: frames are dropped until the rate \
                 falls (this error is sent once per flood)"
            ),
        )))
    }
}

fn refuse(code: FrameError, message: impl Into<String>) -> NodeFrame {
    NodeFrame::Error { code, message: message.into(), call_id: None }
}

/// The `call_id` of a frame that did not parse, if its JSON has one (so the agent can tell
/// which answer was refused).
fn call_id_of(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.get("call_id")?.as_str().map(|s| s.chars().take(128).collect())
}

/// Pumps frames between `socket` and `link` until the agent closes the socket, the backend
/// drops its sender, or `shutdown` fires. Cancel-safe: dropping it drops the socket.
pub(crate) async fn pump(mut socket: WebSocket, link: RuntimeLink, shutdown: CancellationToken) {
    let RuntimeLink { from_agent, mut to_agent } = link;
    let mut gate = Gate::new(Instant::now());
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                close(&mut socket, close_code::AWAY, "the node is stopping").await;
                break;
            }
            out = to_agent.recv() => match out {
                Some(frame) => {
                    if send(&mut socket, &frame).await.is_err() {
                        break;
                    }
                }
                None => {
                    close(&mut socket, close_code::NORMAL, "the session ended or another socket replaced this one").await;
                    break;
                }
            },
            msg = socket.recv() => {
                let Some(Ok(msg)) = msg else { break };
                let refusal = match gate.judge(msg, Instant::now()) {
                    Inbound::Frame(frame) => match from_agent.try_send(frame) {
                        Ok(()) => {
                            gate.delivered();
                            None
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => gate.backlogged(),
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    },
                    Inbound::Refuse(frame) => Some(frame),
                    Inbound::Ignore => None,
                    Inbound::Closed => break,
                };
                if let Some(frame) = refusal
                    && send(&mut socket, &frame).await.is_err()
                {
                    break;
                }
            }
        }
    }
    if gate.dropped > 0 {
        tracing::debug!(dropped = gate.dropped, "runtime socket: frames dropped for the rate");
    }
}

async fn send(socket: &mut WebSocket, frame: &NodeFrame) -> Result<(), axum::Error> {
    let text = serde_json::to_string(frame).map_err(axum::Error::new)?;
    socket.send(Message::Text(text.into())).await
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn text(s: &str) -> Message {
        Message::Text(s.to_owned().into())
    }

    fn code(i: &Inbound) -> Option<FrameError> {
        match i {
            Inbound::Refuse(NodeFrame::Error { code, .. }) => Some(*code),
            _ => None,
        }
    }

    #[test]
    fn bad_frames_are_refused_by_type() {
        let now = Instant::now();
        let mut gate = Gate::new(now);
        assert_eq!(gate.judge(text(r#"{"type":"ping"}"#), now), Inbound::Frame(AgentFrame::Ping));
        assert_eq!(code(&gate.judge(text("{not json"), now)), Some(FrameError::BadFrame));
        let unknown = gate.judge(text(r#"{"type":"launch","call_id":"c7"}"#), now);
        assert!(
            matches!(&unknown, Inbound::Refuse(NodeFrame::Error { code: FrameError::BadFrame, call_id: Some(c), .. }) if c == "c7"),
            "{unknown:?}"
        );
        assert_eq!(
            code(&gate.judge(Message::Binary(vec![1, 2].into()), now)),
            Some(FrameError::BadFrame)
        );
        let big =
            format!(r#"{{"type":"error","call_id":"x","message":"{}"}}"#, "a".repeat(FRAME_MAX));
        assert_eq!(code(&gate.judge(text(&big), now)), Some(FrameError::TooLarge));
        assert_eq!(gate.judge(Message::Close(None), now), Inbound::Closed);
    }

    #[test]
    fn a_flood_is_told_once_and_dropped_until_the_rate_falls() {
        let start = Instant::now();
        let mut gate = Gate::new(start);
        let ping = || text(r#"{"type":"ping"}"#);
        let mut taken = 0;
        let mut refused = 0;
        let mut ignored = 0;
        for _ in 0..(FRAME_BURST as usize + 500) {
            match gate.judge(ping(), start) {
                Inbound::Frame(_) => taken += 1,
                Inbound::Refuse(NodeFrame::Error { code: FrameError::RateLimited, .. }) => {
                    refused += 1
                }
                Inbound::Ignore => ignored += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((taken, refused, ignored), (FRAME_BURST as usize, 1, 499));
        assert_eq!(gate.dropped, 500);
        // A second later the bucket has refilled: frames are taken again.
        let later = start + Duration::from_secs(1);
        assert_eq!(gate.judge(ping(), later), Inbound::Frame(AgentFrame::Ping));
    }
}
