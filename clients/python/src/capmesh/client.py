"""The synchronous client of a node's local API (specs/api.md). :mod:`capmesh.aio` has the same
methods as coroutines."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _protocol as p
from ._base import CapmeshError
from .errors import ApiError, NotFound, RequestTimeout, TransportError, Unauthorized, Unreachable
from .node import Endpoint, read_endpoint
from .types import (
    Attested,
    Blocked,
    CallAccepted,
    CallEvent,
    CallResult,
    CallStatus,
    ContractInfo,
    DecodeError,
    ErrorInfo,
    FindDone,
    FindHit,
    FindResult,
    LedgerEntry,
    LedgerPage,
    LedgerVerification,
    Limits,
    Model,
    PeerInfo,
    Published,
    QueryPage,
    ReceiptEntries,
    Retired,
    SessionInfo,
    Status,
)

__all__ = ["DEFAULT_TIMEOUT", "Client", "Session"]

DEFAULT_TIMEOUT = 30.0
"""Seconds a request that is not a call or a stream may take (connect, request, answer)."""

M = TypeVar("M", bound=Model)
PathLike = str | os.PathLike[str]


class _Common:
    """Where the node is and how to reach it, for both clients."""

    def __init__(
        self,
        data_dir: PathLike | None = None,
        *,
        addr: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        trace: str | None = None,
    ) -> None:
        if addr is not None or token is not None:
            if addr is None or token is None:
                raise ValueError(
                    "give both addr and token, or neither (to read them from the data directory)"
                )
            self.endpoint = Endpoint(addr=addr, token=token, data_dir=Path(data_dir) if data_dir else None)
        else:
            self.endpoint = read_endpoint(data_dir)
        self.timeout = timeout
        self.trace = trace
        """Sent as the W3C ``traceparent`` of every call, unless a call names its own."""

    @property
    def addr(self) -> str:
        return self.endpoint.addr

    @property
    def token(self) -> str:
        return self.endpoint.token

    @property
    def data_dir(self) -> Path | None:
        return self.endpoint.data_dir

    def __repr__(self) -> str:
        return f"{type(self).__name__}(addr={self.addr!r}, token=<redacted>)"

    def _httpx_timeout(self, req: p.Req) -> httpx.Timeout:
        read = self.timeout if req.read_timeout == "default" else req.read_timeout
        assert read is None or isinstance(read, (int, float))
        return httpx.Timeout(connect=self.timeout, read=read, write=self.timeout, pool=self.timeout)

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}", "user-agent": "capmesh-python/0.1"}

    def _transport(self, e: httpx.HTTPError) -> CapmeshError:
        where = f" (data directory {self.data_dir})" if self.data_dir else ""
        if isinstance(e, httpx.ConnectError):
            return Unreachable(f"no capmesh node answers at {self.addr}{where}: {e}; is it running?")
        if isinstance(e, httpx.TimeoutException):
            return RequestTimeout(f"the node at {self.addr} did not answer in time: {type(e).__name__}")
        return TransportError(f"talking to the node at {self.addr} failed: {type(e).__name__}: {e}")

    def _call_read_timeout(self, deadline_ms: int | None) -> float | None:
        # Without a deadline, no bound of ours: the node's default deadline ends the call.
        return None if deadline_ms is None else deadline_ms / 1000 + self.timeout

    def _trace_for(self, trace: str | None) -> str | None:
        return trace if trace is not None else self.trace


def _decode_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as e:
        raise DecodeError(f"the node's answer to {response.request.url.path} is not JSON") from e


class Client(_Common):
    """A client of one node's API.

    ``Client()`` finds the node from the data directory (``$CAPMESH_DATA_DIR`` or the platform
    default); ``Client("/tmp/a")`` from that one; ``Client(addr="127.0.0.1:4100", token=…)``
    talks to an address with a token (a session's, for instance). Calls and streams are not
    bounded by ``timeout``: a call by its ``deadline_ms`` (plus ``timeout``), streams by the
    node. Thread-safe; close it (or use ``with``) to release its connections.
    """

    def __init__(
        self,
        data_dir: PathLike | None = None,
        *,
        addr: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        trace: str | None = None,
    ) -> None:
        super().__init__(data_dir, addr=addr, token=token, timeout=timeout, trace=trace)
        self._http = httpx.Client(
            base_url=self.endpoint.base_url, headers=self._headers(), trust_env=False, timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def with_token(self, token: str) -> Client:
        """A new client of the same node with another bearer token (a session's)."""
        return Client(self.data_dir, addr=self.addr, token=token, timeout=self.timeout, trace=self.trace)

    # ---- plumbing ----------------------------------------------------------------------------

    def _send(self, req: p.Req) -> Any:
        try:
            response = self._http.request(
                req.method,
                req.path,
                params=req.params,
                json=req.body if req.has_body else None,
                headers=req.headers,
                timeout=self._httpx_timeout(req),
            )
        except httpx.HTTPError as e:
            raise self._transport(e) from e
        if response.status_code >= 300:
            raise ApiError.from_response(response.status_code, response.content, response.headers)
        return _decode_json(response)

    def _model(self, cls: type[M], req: p.Req) -> M:
        return cls.from_json(self._send(req))

    def _lines(self, req: p.Req) -> Iterator[str]:
        try:
            with self._http.stream(
                req.method,
                req.path,
                params=req.params,
                headers=req.headers,
                timeout=self._httpx_timeout(req),
            ) as response:
                if response.status_code >= 300:
                    response.read()
                    raise ApiError.from_response(response.status_code, response.content, response.headers)
                yield from response.iter_lines()
        except httpx.HTTPError as e:
            raise self._transport(e) from e

    # ---- the node ------------------------------------------------------------------------------

    def status(self) -> Status:
        """``GET /v1/status``: what the node is and how it is doing."""
        return self._model(Status, p.Req("GET", "/v1/status"))

    def peers(self) -> list[PeerInfo]:
        """``GET /v1/peers``."""
        return [PeerInfo.from_json(x) for x in self._send(p.Req("GET", "/v1/peers"))]

    def blocked(self) -> Blocked:
        """``GET /v1/blocked``: the peers this node refuses."""
        return self._model(Blocked, p.Req("GET", "/v1/blocked"))

    def block(self, block: Iterable[str] = (), unblock: Iterable[str] = ()) -> Blocked:
        """``POST /v1/blocked``: blocks and unblocks peers; the list afterwards."""
        body = {"block": list(block), "unblock": list(unblock)}
        return self._model(Blocked, p.Req("POST", "/v1/blocked", body=body))

    # ---- capabilities --------------------------------------------------------------------------

    def publish(
        self,
        contract: Mapping[str, Any],
        *,
        price: p.PriceLike | None = None,
        limits: Limits | Mapping[str, int] | None = None,
        ttl_ms: int | None = None,
        announce_only: bool = False,
    ) -> Published:
        """``POST /v1/capabilities``: advertises a contract this node serves (or, with
        ``announce_only``, one served elsewhere). To serve a Python function, use
        :class:`capmesh.Agent` instead."""
        body: dict[str, Any] = {"contract": dict(contract)}
        if price is not None:
            body["price"] = p.price_json(price)
        if limits is not None:
            body["limits"] = limits.to_json() if isinstance(limits, Limits) else dict(limits)
        if ttl_ms is not None:
            body["ttl_ms"] = ttl_ms
        if announce_only:
            body["announce_only"] = True
        return self._model(Published, p.Req("POST", "/v1/capabilities", body=body))

    def retire(self, capability: str) -> Retired:
        """``DELETE /v1/capabilities/{capability}``: retires this node's advert everywhere."""
        return self._model(Retired, p.Req("DELETE", f"/v1/capabilities/{capability}"))

    def contract(self, capability: str) -> ContractInfo:
        """``GET /v1/contracts/{capability}``: the contract, from the replica or the mesh."""
        return self._model(ContractInfo, p.Req("GET", f"/v1/contracts/{capability}"))

    def find_iter(
        self, capability: str, *, limit: int | None = None, timeout_ms: int | None = None
    ) -> Iterator[FindHit | FindDone]:
        """``GET /v1/find/{capability}``: providers as they are found (replica, then
        Kademlia), then one :class:`FindDone`. :class:`IncompleteStream` if the node stops
        first. Closing the iterator stops the search."""
        params: dict[str, Any] = {}
        if limit is not None:
            params["limit"] = limit
        if timeout_ms is not None:
            params["timeout_ms"] = timeout_ms
        reader = p.FindReader()
        req = p.Req("GET", f"/v1/find/{capability}", params=params or None, read_timeout=None)
        for line in self._lines(req):
            item = reader.line(line)
            if item is not None:
                yield item
                if isinstance(item, FindDone):
                    return
        reader.finish()

    def find(self, capability: str, *, limit: int | None = None, timeout_ms: int | None = None) -> FindResult:
        """The whole find (see :meth:`find_iter`): every hit and how the search ended."""
        hits: list[FindHit] = []
        for item in self.find_iter(capability, limit=limit, timeout_ms=timeout_ms):
            if isinstance(item, FindHit):
                hits.append(item)
            else:
                return FindResult(hits, item)
        raise AssertionError("find_iter ends with done or raises")

    def query(
        self,
        *,
        capability: str | None = None,
        tags: Iterable[str] | None = None,
        text: str | None = None,
        name_prefix: str | None = None,
        provider: str | None = None,
        max_price: p.PriceLike | None = None,
        claim: str | None = None,
        issuer: str | None = None,
        issued_after: int | None = None,
        newest: bool = False,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> QueryPage:
        """``POST /v1/registry/query``: live adverts in the node's replica (no network). Every
        filter given must hold; ``claim`` (with ``issuer``) keeps providers holding an
        attestation of that claim. Continue with ``cursor=page.next``."""
        body = p.query_body(
            capability=capability,
            tags=tags,
            text=text,
            name_prefix=name_prefix,
            provider=provider,
            max_price=max_price,
            claim=claim,
            issuer=issuer,
            issued_after=issued_after,
            newest=newest,
            limit=limit,
            cursor=cursor,
        )
        return self._model(QueryPage, p.Req("POST", "/v1/registry/query", body=body))

    # ---- calls ---------------------------------------------------------------------------------

    def call(
        self,
        capability: str,
        args: Any,
        *,
        call_id: str | None = None,
        optimize: Mapping[str, float] | None = None,
        max_price: p.PriceLike | None = None,
        deadline_ms: int | None = None,
        trace: str | None = None,
    ) -> CallResult:
        """``POST /v1/call``: calls a capability and waits for its end. A failed call raises the
        :class:`ApiError` of its code, whose ``call`` says why provider by provider. The call
        gets a fresh ``call_id`` unless given one: :meth:`cancel` it from another thread."""
        body = p.call_body(capability, args, call_id, optimize, max_price, deadline_ms)
        req = p.call_req("/v1/call", body, self._trace_for(trace), self._call_read_timeout(deadline_ms))
        return self._model(CallResult, req)

    def start_call(
        self,
        capability: str,
        args: Any,
        *,
        call_id: str | None = None,
        optimize: Mapping[str, float] | None = None,
        max_price: p.PriceLike | None = None,
        deadline_ms: int | None = None,
        trace: str | None = None,
    ) -> CallAccepted:
        """``POST /v1/calls``: starts a call and returns at once; follow it with
        :meth:`call_events`, :meth:`wait_call` or :meth:`call_status`."""
        body = p.call_body(capability, args, call_id, optimize, max_price, deadline_ms)
        req = p.call_req("/v1/calls", body, self._trace_for(trace), "default")
        return self._model(CallAccepted, req)

    def call_status(self, call_id: str) -> CallStatus:
        """``GET /v1/calls/{call_id}``: the call's state, and its result or error once ended."""
        return self._model(CallStatus, p.Req("GET", f"/v1/calls/{call_id}"))

    def call_events(
        self, call_id: str, *, start: int | None = None, last_event_id: int | None = None
    ) -> Iterator[CallEvent]:
        """``GET /v1/calls/{call_id}/events``: the call's events as they happen (from event
        ``start``, or after ``last_event_id``, or from the first), ending with its final event
        (``done``, ``failed`` or ``cancelled``). :class:`IncompleteStream` if the node closes the
        stream before. Closing the iterator does not affect the call."""
        reader = p.EventReader()
        for line in self._lines(p.events_req(call_id, start, last_event_id)):
            event = reader.line(line)
            if event is not None:
                yield event
                if event.is_final:
                    return
        reader.finish()

    def wait_call(self, call_id: str) -> CallResult:
        """Follows a call to its end: its result, or the :class:`ApiError` it failed with."""
        for event in self.call_events(call_id):
            if event.event == "done" and event.result is not None:
                return event.result
            if event.event == "failed" and event.error is not None:
                raise ApiError.of(event.error)
            if event.event == "cancelled":
                status = self.call_status(call_id)
                raise ApiError.of(
                    status.error or ErrorInfo(code="Cancelled", message="the call was cancelled")
                )
        raise AssertionError("call_events ends with a final event or raises")

    def cancel(self, call_id: str) -> bool:
        """``POST /v1/calls/{call_id}/cancel``: cancels a call in flight (the provider is told).
        :class:`NotFound` if it is not in flight."""
        return bool(self._send(p.Req("POST", f"/v1/calls/{call_id}/cancel")).get("cancelled"))

    # ---- receipts and attestations ---------------------------------------------------------

    def receipts(self, *, from_seq: int | None = None, limit: int | None = None) -> LedgerPage:
        """``GET /v1/receipts``: a page of the receipt ledger; continue with ``from_seq=page.next``."""
        params: dict[str, Any] = {}
        if from_seq is not None:
            params["from"] = from_seq
        if limit is not None:
            params["limit"] = limit
        return self._model(LedgerPage, p.Req("GET", "/v1/receipts", params=params or None))

    def iter_receipts(self, *, from_seq: int = 0, page_size: int = 1000) -> Iterator[LedgerEntry]:
        """Every ledger entry from ``from_seq`` on, page after page."""
        next_seq: int | None = from_seq
        while next_seq is not None:
            page = self.receipts(from_seq=next_seq, limit=page_size)
            yield from page.entries
            next_seq = page.next

    def receipt(self, receipt_id: str) -> ReceiptEntries:
        """``GET /v1/receipts/{receipt_id}``: a receipt's entry and its countersignature's."""
        return self._model(ReceiptEntries, p.Req("GET", f"/v1/receipts/{receipt_id}"))

    def ledger_head(self) -> dict[str, Any]:
        """``GET /v1/receipts/head``: the ledger's length and last chain hash, signed now by the
        node (protocol.md §6.9); the line that ends an export."""
        head: dict[str, Any] = self._send(p.Req("GET", "/v1/receipts/head"))
        return head

    def export_receipts(self, path: PathLike) -> int:
        """Writes the ledger to ``path`` as ``capmesh receipts export`` does: one entry per line,
        then the node's signed head (read first, so the entries written are exactly the ``len``
        it signs, whatever is appended meanwhile); the number of entries."""
        head = self.ledger_head()
        n, want = 0, _head_len(head)
        with open(path, "w", encoding="utf-8") as out:
            for entry in self.iter_receipts():
                if n == want:
                    break
                out.write(_entry_line(entry))
                n += 1
            out.write(json.dumps(head, separators=(",", ":"), ensure_ascii=False) + "\n")
        return n

    def verify_receipts(
        self, export: PathLike | None = None, *, capmesh_bin: PathLike | None = None
    ) -> LedgerVerification:
        """Verifies a ledger export offline (sequence numbers, BLAKE3 chain, every signature)
        with ``capmesh receipts verify``; without ``export``, this node's ledger, exported
        through the API first. The API serves entries without verifying them, so verification
        needs the ``capmesh`` binary (``capmesh_bin``, ``$CAPMESH_BIN`` or PATH)."""
        if export is not None:
            return p.verify_export(export, capmesh_bin)
        with tempfile.TemporaryDirectory(prefix="capmesh-ledger-") as tmp:
            path = Path(tmp) / "ledger.ndjson"
            self.export_receipts(path)
            return p.verify_export(path, capmesh_bin)

    def attest(self, subject: str, claim: str, *, expires_ms: int | None = None) -> Attested:
        """``POST /v1/attest``: signs an attestation that ``subject`` (a peer id or a CID) holds
        ``claim``; the node stores and gossips it. Replica queries filter providers by it
        (``query(claim=…, issuer=…)``)."""
        body: dict[str, Any] = {"subject": subject, "claim": claim}
        if expires_ms is not None:
            body["expires_ms"] = expires_ms
        return self._model(Attested, p.Req("POST", "/v1/attest", body=body))

    def attestations(
        self,
        *,
        subject: str | None = None,
        issuer: str | None = None,
        claim: str | None = None,
        limit: int | None = None,
    ) -> list[Attested]:
        """``GET /v1/attestations``: the unexpired attestations the node holds (its own and
        those gossiped to it) matching every filter given; ``limit`` 1 to 1000 (default 100)."""
        params = p.attestations_params(subject, issuer, claim, limit)
        doc = self._send(p.Req("GET", "/v1/attestations", params=params))
        return [Attested.from_json(a) for a in doc["attestations"]]

    # ---- sessions ------------------------------------------------------------------------------

    def open_session(
        self, name: str, *, metadata: Mapping[str, Any] | None = None, ttl_secs: int | None = None
    ) -> Session:
        """``POST /v1/sessions``: opens a session (node token only). The :class:`Session` holds
        its token and a client that uses it; ``with`` ends it."""
        doc = self._send(p.Req("POST", "/v1/sessions", body=p.session_body(name, metadata, ttl_secs)))
        return Session(self, SessionInfo.from_json(doc["session"]), doc["token"])

    def sessions(self) -> list[SessionInfo]:
        """``GET /v1/sessions``: every session, oldest first (node token only)."""
        return [SessionInfo.from_json(s) for s in self._send(p.Req("GET", "/v1/sessions"))["sessions"]]

    def session(self, session_id: str) -> SessionInfo:
        """``GET /v1/sessions/{id}``."""
        return self._model(SessionInfo, p.Req("GET", f"/v1/sessions/{session_id}"))

    def heartbeat(self, session_id: str) -> SessionInfo:
        """``POST /v1/sessions/{id}/heartbeat``: extends the session by its ``ttl_secs``."""
        return self._model(SessionInfo, p.Req("POST", f"/v1/sessions/{session_id}/heartbeat"))

    def end_session(self, session_id: str) -> SessionInfo:
        """``DELETE /v1/sessions/{id}``: ends the session (its adverts are retired); the session
        as it was just before."""
        return self._model(SessionInfo, p.Req("DELETE", f"/v1/sessions/{session_id}"))


def _head_len(head: dict[str, Any]) -> int:
    """The entry count a head line signs (its ``record.payload.len``)."""
    return int(head["record"]["payload"]["len"])


def _entry_line(entry: LedgerEntry) -> str:
    return json.dumps(entry.raw, separators=(",", ":"), ensure_ascii=False) + "\n"


class Session:
    """An agent session (specs/api.md §4.1): ``id``, its bearer ``token``, and ``client``, a
    :class:`Client` that uses the token (calls made with it are attributed to the session).

    Keep it alive with :meth:`heartbeat` within its ``ttl_secs``, or :meth:`keep_alive`;
    :meth:`end` (or leaving a ``with`` block) ends it."""

    def __init__(self, owner: Client, info: SessionInfo, token: str) -> None:
        self.info = info
        self.id = info.id
        self.token = token
        self.client = owner.with_token(token)
        self._stop = threading.Event()
        self._beats: threading.Thread | None = None
        self._ended = False

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, name={self.info.name!r})"

    def heartbeat(self) -> SessionInfo:
        """Extends the session by its ``ttl_secs`` (with its own token)."""
        self.info = self.client.heartbeat(self.id)
        return self.info

    def refresh(self) -> SessionInfo:
        """The session as the node reports it now."""
        self.info = self.client.session(self.id)
        return self.info

    def keep_alive(self, interval: float | None = None) -> None:
        """Heartbeats from a daemon thread every ``interval`` seconds (default a third of
        ``ttl_secs``) until :meth:`end`."""
        if self._beats is not None:
            return
        every = interval if interval is not None else max(1.0, self.info.ttl_secs / 3)

        def beat() -> None:
            while not self._stop.wait(every):
                try:
                    self.heartbeat()
                except (Unauthorized, NotFound):
                    return
                except CapmeshError:
                    continue

        self._beats = threading.Thread(target=beat, name=f"capmesh-heartbeat-{self.id[:8]}", daemon=True)
        self._beats.start()

    def end(self) -> SessionInfo | None:
        """Ends the session (``DELETE``); ``None`` if it had already ended."""
        self._stop.set()
        if self._ended:
            return None
        self._ended = True
        try:
            return self.client.end_session(self.id)
        except (NotFound, Unauthorized):
            return None
        finally:
            self.client.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.end()
