"""The JSON shapes of the node's local API (specs/api.md), as frozen dataclasses.

Every model is built from the node's JSON by :meth:`Model.from_json`. Fields the client does not
know are ignored (the API may add some, specs/api.md §6) but kept: ``raw`` holds the JSON object
exactly as the node sent it.
"""

from __future__ import annotations

import base64
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from ._base import CapmeshError

__all__ = [
    "Attempt",
    "Attested",
    "Blocked",
    "CallAccepted",
    "CallEvent",
    "CallFailure",
    "CallResult",
    "CallState",
    "CallStatus",
    "ContractInfo",
    "DecodeError",
    "ErrorInfo",
    "FindDone",
    "FindHit",
    "FindResult",
    "GossipStatus",
    "LedgerEntry",
    "LedgerNote",
    "LedgerPage",
    "LedgerVerification",
    "Limits",
    "Model",
    "PeerInfo",
    "Price",
    "Published",
    "QueryHit",
    "QueryPage",
    "ReceiptEntries",
    "ReplicaStatus",
    "Retired",
    "ServedCapability",
    "SessionInfo",
    "Status",
    "b64url_decode",
    "b64url_encode",
]

CallState = Literal["finding", "negotiating", "running", "done", "failed", "cancelled"]
"""Where an asynchronous call is (specs/api.md §4.5); it only moves forward."""

FINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})
FINAL_EVENTS: frozenset[str] = frozenset({"done", "failed", "cancelled"})


class DecodeError(CapmeshError):
    """The node's answer does not have the shape the API documents."""


def b64url_decode(text: str) -> bytes:
    """Unpadded base64url (the API's encoding of bytes) to bytes."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url_encode(data: bytes) -> str:
    """Bytes to unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


M = TypeVar("M", bound="Model")


@dataclass(frozen=True, kw_only=True)
class Model:
    """Base of the API's answers: a frozen dataclass built from JSON."""

    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The JSON object as the node sent it, unknown fields included."""

    @classmethod
    def from_json(cls: type[M], data: Any) -> M:
        """Builds the model from the node's JSON (a dict); :class:`DecodeError` if it does not fit."""
        value = _decode(cls, data, cls.__name__)
        assert isinstance(value, cls)
        return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _decode(tp: Any, value: Any, where: str) -> Any:
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise DecodeError(f"{where}: null where a value is required")
        others = [a for a in args if a is not type(None)]
        if len(others) == 1:
            return _decode(others[0], value, where)
        return value
    if origin is list:
        if not isinstance(value, list):
            raise DecodeError(f"{where}: expected an array, got {type(value).__name__}")
        (item,) = get_args(tp) or (Any,)
        return [_decode(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise DecodeError(f"{where}: expected an object, got {type(value).__name__}")
        return value
    if origin is Literal:
        return value
    if isinstance(tp, type) and issubclass(tp, Model):
        if not isinstance(value, dict):
            raise DecodeError(f"{where}: expected an object, got {type(value).__name__}")
        hints = _hints(tp)
        kwargs: dict[str, Any] = {}
        for f in fields(tp):
            if f.name == "raw" or not f.init:
                continue
            key = f.metadata.get("json", f.name)
            if key in value:
                kwargs[f.name] = _decode(hints[f.name], value[key], f"{where}.{key}")
            elif f.default is MISSING and f.default_factory is MISSING:
                raise DecodeError(f"{where}: the field {key!r} is missing")
        kwargs["raw"] = value
        return tp(**kwargs)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DecodeError(f"{where}: expected a number, got {type(value).__name__}")
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise DecodeError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
        return value
    return value


# ---- parts ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Price(Model):
    """A price per call: ``amount`` in ``unit`` (e.g. ``Price(amount=2, unit="credit")``)."""

    amount: int
    unit: str

    def to_json(self) -> dict[str, Any]:
        return {"amount": self.amount, "unit": self.unit}


@dataclass(frozen=True, kw_only=True)
class Limits(Model):
    """What a provider bears per call."""

    timeout_ms: int
    max_input_bytes: int
    concurrency: int

    def to_json(self) -> dict[str, Any]:
        return {
            "timeout_ms": self.timeout_ms,
            "max_input_bytes": self.max_input_bytes,
            "concurrency": self.concurrency,
        }


# ---- status, peers, block list ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ReplicaStatus(Model):
    records: int
    stored: int
    duplicates: int
    refused: int
    dropped: int
    expired: int


@dataclass(frozen=True, kw_only=True)
class GossipStatus(Model):
    accepted: int
    ignored: int
    rejected: int
    rate_limited: int


@dataclass(frozen=True, kw_only=True)
class Status(Model):
    """``GET /v1/status`` (§3.1)."""

    peer_id: str
    version: str
    listen_addrs: list[str]
    external_addrs: list[str]
    connected_peers: int
    kad_mode: str
    routing_table_peers: int
    reachability: str = "unknown"
    relay_reservations: list[str] = field(default_factory=list)
    replica: ReplicaStatus
    gossip: GossipStatus
    published: list[str]
    uptime_ms: int


@dataclass(frozen=True, kw_only=True)
class PeerInfo(Model):
    """One entry of ``GET /v1/peers`` (§3.2)."""

    peer_id: str
    addrs: list[str]
    connected: bool
    last_seen: int
    connection: str = "none"


# ---- publishing, finding, the replica --------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Published(Model):
    """``POST /v1/capabilities`` (§3.3)."""

    capability: str
    advert_id: str
    seq: int
    expires: int


@dataclass(frozen=True, kw_only=True)
class Retired(Model):
    """``DELETE /v1/capabilities/{capability}`` (§3.4)."""

    capability: str
    retirement_id: str
    seq: int


@dataclass(frozen=True, kw_only=True)
class FindHit(Model):
    """A provider found by ``GET /v1/find/{capability}`` (§3.5)."""

    source: str
    kad_requests: int
    provider: str
    addrs: list[str]
    capability: str
    advert_id: str
    name: str
    version: str
    price: Price
    expires: int
    elapsed_ms: int


@dataclass(frozen=True, kw_only=True)
class FindDone(Model):
    """The last line of a find stream."""

    hits: int
    kad_requests: int
    elapsed_ms: int
    error: str | None = None


@dataclass(frozen=True)
class FindResult:
    """A whole find: its hits, and how it ended."""

    hits: list[FindHit]
    done: FindDone


@dataclass(frozen=True, kw_only=True)
class ContractInfo(Model):
    """``GET /v1/contracts/{capability}`` (§3.12)."""

    capability: str
    contract: dict[str, Any]
    source: str


@dataclass(frozen=True, kw_only=True)
class QueryHit(Model):
    """A live advert of the replica (§3.6)."""

    id: str
    capability: str
    name: str
    provider: str
    price: Price
    issued: int
    expires: int


@dataclass(frozen=True, kw_only=True)
class QueryPage(Model):
    """``POST /v1/registry/query`` (§3.6); ``next`` continues it."""

    hits: list[QueryHit]
    next: str | None = None


# ---- receipts ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LedgerNote(Model):
    """What the node knows locally about an entry's call (unsigned, not in the chain)."""

    trace: str | None = None
    session_id: str | None = None
    session_name: str | None = None


@dataclass(frozen=True, kw_only=True)
class LedgerEntry(Model):
    """One entry of the receipt ledger (§3.7); also one line of ``capmesh receipts export``."""

    seq: int
    hash: str
    kind: str
    id: str | None = None
    signed: str
    record: dict[str, Any] | None = None
    note: LedgerNote | None = None


@dataclass(frozen=True, kw_only=True)
class LedgerPage(Model):
    """``GET /v1/receipts`` (§3.7)."""

    entries: list[LedgerEntry]
    next: int | None = None
    len: int


@dataclass(frozen=True, kw_only=True)
class ReceiptEntries(Model):
    """``GET /v1/receipts/{receipt_id}`` (§3.8)."""

    receipt: LedgerEntry
    countersignature: LedgerEntry | None = None


@dataclass(frozen=True)
class LedgerVerification:
    """What ``capmesh receipts verify`` said about a ledger export."""

    ok: bool
    """Every ``seq``, chain hash and signature holds."""
    entries: int | None
    receipts: int | None
    countersignatures: int | None
    head: str | None
    """The chain head (hash of the last entry), when ``ok``."""
    message: str
    """What the verifier printed: ``ok: …`` or the first bad entry and why."""


# ---- calls -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Attempt(Model):
    """One try at one provider that did not succeed (§3.9)."""

    provider: str
    code: str
    message: str
    stage: str
    retry_after_ms: int | None = None


@dataclass(frozen=True, kw_only=True)
class CallFailure(Model):
    """Why a call failed, provider by provider (§5.1)."""

    call_id: str
    code: str
    """The protocol's code: ``InvalidArgs``, ``NotFound``, ``Failed``, ``Exhausted``, …"""
    attempts: list[Attempt]
    retry_after_ms: int | None = None


@dataclass(frozen=True, kw_only=True)
class CallResult(Model):
    """A call that succeeded (§3.9)."""

    call_id: str
    capability: str
    provider: str
    output: Any = None
    """The output (``None`` for a streaming capability: its output is its chunks)."""
    chunks: int
    stream_root: str | None = None
    stream: list[str]
    """The chunks, each unpadded base64url (at most 1 MiB in all); see :attr:`stream_bytes`."""
    stream_truncated: bool
    receipt_id: str
    receipt: dict[str, Any]
    ledger_seq: int
    price: Price
    warm: bool
    requests: int
    elapsed_ms: int
    attempts: list[Attempt]
    trace: str | None = None

    @property
    def chunk_bytes(self) -> list[bytes]:
        """The streamed chunks, decoded."""
        return [b64url_decode(c) for c in self.stream]

    @property
    def stream_bytes(self) -> bytes:
        """The streamed output, all chunks joined."""
        return b"".join(self.chunk_bytes)

    @property
    def stream_text(self) -> str:
        """The streamed output as UTF-8 text."""
        return self.stream_bytes.decode("utf-8")


@dataclass(frozen=True, kw_only=True)
class ErrorInfo(Model):
    """An error body's ``error`` (§5): the code, a message for people, and why a call failed."""

    code: str
    message: str
    call: CallFailure | None = None


@dataclass(frozen=True, kw_only=True)
class CallAccepted(Model):
    """``POST /v1/calls`` (§4.5)."""

    call_id: str
    trace: str
    state: str


@dataclass(frozen=True, kw_only=True)
class CallStatus(Model):
    """``GET /v1/calls/{call_id}`` (§4.5)."""

    call_id: str
    capability: str
    trace: str
    state: str
    session: str | None = None
    created_ms: int
    ended_ms: int | None = None
    provider: str | None = None
    events: int
    result: CallResult | None = None
    error: ErrorInfo | None = None

    @property
    def is_final(self) -> bool:
        """Whether the call has ended (``done``, ``failed`` or ``cancelled``)."""
        return self.state in FINAL_STATES


@dataclass(frozen=True, kw_only=True)
class CallEvent(Model):
    """One event of a call (§4.6). ``event`` names it; the other fields are set by the events
    that carry them (``providers``; ``offer``: provider, price, latency_ms; ``chosen``: provider,
    warm; ``accepted``: provider; ``attempt_failed``: attempt; ``progress``: seq, data (bytes);
    ``progress_truncated``: dropped; ``done``: receipt_id, trace, result; ``failed``: error,
    trace; ``cancelled``: trace)."""

    id: int
    event: str
    providers: list[str] = field(default_factory=list)
    provider: str | None = None
    price: Price | None = None
    latency_ms: int | None = None
    warm: bool | None = None
    attempt: Attempt | None = None
    seq: int | None = None
    data: bytes | None = None
    """A ``progress`` chunk, decoded."""
    dropped: int | None = None
    receipt_id: str | None = None
    trace: str | None = None
    result: CallResult | None = None
    error: ErrorInfo | None = None

    @property
    def is_final(self) -> bool:
        """Whether this is the call's last event (``done``, ``failed`` or ``cancelled``)."""
        return self.event in FINAL_EVENTS

    @classmethod
    def from_sse(cls, event_id: int, data: dict[str, Any]) -> CallEvent:
        """The event of an SSE message: its ``id`` and the JSON of its ``data``."""
        body = dict(data)
        chunk = body.pop("data", None)
        body.pop("id", None)
        decoded = _decode(cls, {**body, "id": event_id}, "CallEvent")
        assert isinstance(decoded, CallEvent)
        if chunk is not None:
            if not isinstance(chunk, str):
                raise DecodeError("CallEvent.data: expected base64url text")
            object.__setattr__(decoded, "data", b64url_decode(chunk))
        object.__setattr__(decoded, "raw", data)
        return decoded


# ---- sessions and attestations -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServedCapability(Model):
    """A capability a session's runtime serves."""

    capability: str
    name: str
    advert_id: str


@dataclass(frozen=True, kw_only=True)
class SessionInfo(Model):
    """A session as the node reports it (§4.1)."""

    id: str
    name: str
    metadata: dict[str, Any]
    ttl_secs: int
    created_ms: int
    expires_ms: int
    runtime_attached: bool
    capabilities: list[ServedCapability]
    calls_made: int
    calls_served: int


@dataclass(frozen=True, kw_only=True)
class Attested(Model):
    """``POST /v1/attest`` (§3.11): the attestation's id and its signed JSON projection."""

    id: str
    attestation: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Blocked(Model):
    """``GET``/``POST /v1/blocked`` (§3.13)."""

    peers: list[str]
