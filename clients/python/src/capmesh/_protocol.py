"""What the sync and async clients share: request bodies, stream parsers, ids, traceparents."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._base import CapmeshError
from .errors import IncompleteStream
from .types import CallEvent, DecodeError, FindDone, FindHit, LedgerVerification, Price, b64url_encode

PriceLike = Price | Mapping[str, Any] | tuple[int, str]
"""A price: ``Price(amount=2, unit="credit")``, ``{"amount": 2, "unit": "credit"}`` or ``(2, "credit")``."""

_NOBODY: Any = object()


@dataclass
class Req:
    """One request to the API, independent of the HTTP library."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    body: Any = _NOBODY
    headers: dict[str, str] = field(default_factory=dict)
    read_timeout: float | None | str = "default"
    """Seconds to wait for the answer; ``None``: no bound; ``"default"``: the client's."""

    @property
    def has_body(self) -> bool:
        return self.body is not _NOBODY


def new_call_id() -> str:
    """A fresh call id: 16 random bytes as unpadded base64url (22 characters)."""
    return b64url_encode(secrets.token_bytes(16))


def new_trace_id() -> str:
    """A fresh W3C trace id: 32 lowercase hex digits, not all zero."""
    while True:
        t = secrets.token_hex(16)
        if t != "0" * 32:
            return t


_TRACE = re.compile(r"^[0-9a-f]{32}$")


def traceparent(trace: str) -> str:
    """A W3C ``traceparent`` naming ``trace`` (a fresh parent id each time)."""
    if not _TRACE.match(trace) or trace == "0" * 32:
        raise ValueError(f"a trace id is 32 lowercase hex digits, not all zero: {trace!r}")
    parent = secrets.token_hex(8)
    if parent == "0" * 16:
        parent = "0" * 15 + "1"
    return f"00-{trace}-{parent}-01"


def price_json(price: PriceLike) -> dict[str, Any]:
    if isinstance(price, Price):
        return price.to_json()
    if isinstance(price, tuple):
        amount, unit = price
        return {"amount": amount, "unit": unit}
    return {"amount": price["amount"], "unit": price["unit"]}


def call_body(
    capability: str,
    args: Any,
    call_id: str | None,
    optimize: Mapping[str, float] | None,
    max_price: PriceLike | None,
    deadline_ms: int | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"capability": capability, "args": args, "call_id": call_id or new_call_id()}
    if optimize is not None:
        body["optimize"] = dict(optimize)
    if max_price is not None:
        body["max_price"] = price_json(max_price)
    if deadline_ms is not None:
        body["deadline_ms"] = deadline_ms
    return body


def call_req(
    path: str,
    body: dict[str, Any],
    trace: str | None,
    read_timeout: float | None | str,
) -> Req:
    headers = {"traceparent": traceparent(trace)} if trace else {}
    return Req("POST", path, body=body, headers=headers, read_timeout=read_timeout)


def query_body(
    *,
    capability: str | None,
    tags: Iterable[str] | None,
    text: str | None,
    name_prefix: str | None,
    provider: str | None,
    max_price: PriceLike | None,
    claim: str | None,
    issuer: str | None,
    issued_after: int | None,
    newest: bool,
    limit: int | None,
    cursor: str | None,
) -> dict[str, Any]:
    filt: dict[str, Any] = {"tags": list(tags or [])}
    for key, value in (
        ("text", text),
        ("name_prefix", name_prefix),
        ("provider", provider),
        ("claim", claim),
        ("issuer", issuer),
        ("issued_after", issued_after),
    ):
        if value is not None:
            filt[key] = value
    if max_price is not None:
        filt["max_price"] = price_json(max_price)
    body: dict[str, Any] = {"filter": filt}
    if capability is not None:
        body["capability"] = capability
    if newest:
        body["newest"] = True
    if limit is not None:
        body["limit"] = limit
    if cursor is not None:
        body["cursor"] = cursor
    return body


def session_body(name: str, metadata: Mapping[str, Any] | None, ttl_secs: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name}
    if metadata:
        body["metadata"] = dict(metadata)
    if ttl_secs is not None:
        body["ttl_secs"] = ttl_secs
    return body


def events_req(call_id: str, start: int | None, last_event_id: int | None) -> Req:
    params = {"from": start} if start is not None else None
    headers = {"accept": "text/event-stream"}
    if last_event_id is not None:
        headers["last-event-id"] = str(last_event_id)
    return Req("GET", f"/v1/calls/{call_id}/events", params=params, headers=headers, read_timeout=None)


# ---- streams -------------------------------------------------------------------------------------


class SseParser:
    """Server-Sent Events, line by line (the ``text/event-stream`` format of the HTML standard)."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event: str | None = None
        self.last_id: str | None = None

    def line(self, line: str) -> tuple[str | None, str, str] | None:
        """Feeds one line (without its end); returns ``(id, event, data)`` when a message ends."""
        if line.endswith("\r"):
            line = line[:-1]
        if line == "":
            if not self._data:
                self._event = None
                return None
            message = (self.last_id, self._event or "message", "\n".join(self._data))
            self._data = []
            self._event = None
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "id":
            self.last_id = value
        elif name == "event":
            self._event = value
        return None


class EventReader:
    """Turns SSE messages of ``GET /v1/calls/{id}/events`` into :class:`CallEvent` objects and
    knows whether the final one came."""

    def __init__(self) -> None:
        self.sse = SseParser()
        self.last_id: int | None = None
        self.ended = False

    def line(self, line: str) -> CallEvent | None:
        message = self.sse.line(line)
        if message is None:
            return None
        raw_id, _name, data = message
        try:
            event_id = int(raw_id) if raw_id is not None else (self.last_id or -1) + 1
            doc = json.loads(data)
            event = CallEvent.from_sse(event_id, doc)
        except (ValueError, TypeError) as e:
            raise DecodeError(f"a call event that is not the API's: {e}: {data[:200]!r}") from e
        self.last_id = event.id
        if event.is_final:
            self.ended = True
        return event

    def finish(self) -> None:
        """The stream ended: an error unless its final event came."""
        if not self.ended:
            raise IncompleteStream(
                "the call's event stream ended before its final event (the node is stopping); "
                "resume with start=last_id + 1 once it runs again",
                self.last_id,
            )


class FindReader:
    """Lines of the find stream (NDJSON of ``{"hit": …}`` then ``{"done": …}``)."""

    def __init__(self) -> None:
        self.done: FindDone | None = None

    def line(self, line: str) -> FindHit | FindDone | None:
        if not line.strip():
            return None
        try:
            doc = json.loads(line)
        except ValueError as e:
            raise DecodeError(f"a find line that is not JSON: {line[:200]!r}") from e
        if isinstance(doc, dict) and "hit" in doc:
            return FindHit.from_json(doc["hit"])
        if isinstance(doc, dict) and "done" in doc:
            self.done = FindDone.from_json(doc["done"])
            return self.done
        raise DecodeError(f"a find line that is neither a hit nor done: {line[:200]!r}")

    def finish(self) -> FindDone:
        if self.done is None:
            raise IncompleteStream("the find stream ended without its done line (the node is stopping)")
        return self.done


# ---- verifying an export -------------------------------------------------------------------------


def capmesh_binary(explicit: str | os.PathLike[str] | None) -> str:
    """The ``capmesh`` executable: ``explicit``, else ``$CAPMESH_BIN``, else ``capmesh`` on PATH."""
    if explicit is not None:
        return os.fspath(explicit)
    env = os.environ.get("CAPMESH_BIN")
    if env:
        return env
    found = shutil.which("capmesh")
    if found is None:
        raise CapmeshError(
            "verifying a ledger runs `capmesh receipts verify`, and no capmesh binary was found: "
            "put it on PATH, set CAPMESH_BIN, or pass capmesh_bin"
        )
    return found


_SUMMARY = re.compile(r"^ok: (\d+) entries \((\d+) receipts, (\d+) countersignatures\), chain head (\S+)")


def verify_export(
    path: str | os.PathLike[str], capmesh_bin: str | os.PathLike[str] | None
) -> LedgerVerification:
    """Runs ``capmesh receipts verify FILE`` (offline: sequence numbers, BLAKE3 chain, every
    signature) and reads its verdict."""
    binary = capmesh_binary(capmesh_bin)
    env = {k: v for k, v in os.environ.items() if k != "CAPMESH_DATA_DIR"}
    run = subprocess.run(
        [binary, "receipts", "verify", os.fspath(Path(path))],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    out, err = run.stdout.strip(), run.stderr.strip()
    if run.returncode == 0:
        m = _SUMMARY.match(out)
        if m is None:
            return LedgerVerification(True, None, None, None, None, out)
        return LedgerVerification(True, int(m[1]), int(m[2]), int(m[3]), m[4], out)
    if err.startswith("error:") or run.returncode != 1:
        raise CapmeshError(f"`capmesh receipts verify` could not check {path}: {err or out}")
    return LedgerVerification(False, None, None, None, None, err)


def attestations_params(
    subject: str | None, issuer: str | None, claim: str | None, limit: int | None
) -> dict[str, Any] | None:
    """Query parameters of ``GET /v1/attestations`` (api.md §3.14): the filters given."""
    params = {"subject": subject, "issuer": issuer, "claim": claim, "limit": limit}
    given = {k: v for k, v in params.items() if v is not None}
    return given or None
