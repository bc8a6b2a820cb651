"""The asynchronous client (asyncio): :class:`AsyncClient` has the methods of
:class:`capmesh.Client` as coroutines, and async iterators for the streams."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _protocol as p
from ._base import CapmeshError
from .client import DEFAULT_TIMEOUT, PathLike, _Common, _decode_json, _entry_line, _head_len
from .errors import ApiError, NotFound, Unauthorized
from .types import (
    Attested,
    Blocked,
    CallAccepted,
    CallEvent,
    CallResult,
    CallStatus,
    ContractInfo,
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

__all__ = ["AsyncClient", "AsyncSession"]

M = TypeVar("M", bound=Model)


class AsyncClient(_Common):
    """An asyncio client of one node's API; see :class:`capmesh.Client` for the constructor.
    Close it with ``await client.aclose()`` or ``async with``."""

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
        self._http = httpx.AsyncClient(
            base_url=self.endpoint.base_url, headers=self._headers(), trust_env=False, timeout=timeout
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def with_token(self, token: str) -> AsyncClient:
        """A new client of the same node with another bearer token (a session's)."""
        return AsyncClient(self.data_dir, addr=self.addr, token=token, timeout=self.timeout, trace=self.trace)

    # ---- plumbing ----------------------------------------------------------------------------

    async def _send(self, req: p.Req) -> Any:
        try:
            response = await self._http.request(
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

    async def _model(self, cls: type[M], req: p.Req) -> M:
        return cls.from_json(await self._send(req))

    async def _lines(self, req: p.Req) -> AsyncGenerator[str, None]:
        try:
            async with self._http.stream(
                req.method,
                req.path,
                params=req.params,
                headers=req.headers,
                timeout=self._httpx_timeout(req),
            ) as response:
                if response.status_code >= 300:
                    await response.aread()
                    raise ApiError.from_response(response.status_code, response.content, response.headers)
                async for line in response.aiter_lines():
                    yield line
        except httpx.HTTPError as e:
            raise self._transport(e) from e

    # ---- the node ------------------------------------------------------------------------------

    async def status(self) -> Status:
        """``GET /v1/status``."""
        return await self._model(Status, p.Req("GET", "/v1/status"))

    async def peers(self) -> list[PeerInfo]:
        """``GET /v1/peers``."""
        return [PeerInfo.from_json(x) for x in await self._send(p.Req("GET", "/v1/peers"))]

    async def blocked(self) -> Blocked:
        """``GET /v1/blocked``."""
        return await self._model(Blocked, p.Req("GET", "/v1/blocked"))

    async def block(self, block: Iterable[str] = (), unblock: Iterable[str] = ()) -> Blocked:
        """``POST /v1/blocked``."""
        body = {"block": list(block), "unblock": list(unblock)}
        return await self._model(Blocked, p.Req("POST", "/v1/blocked", body=body))

    # ---- capabilities --------------------------------------------------------------------------

    async def publish(
        self,
        contract: Mapping[str, Any],
        *,
        price: p.PriceLike | None = None,
        limits: Limits | Mapping[str, int] | None = None,
        ttl_ms: int | None = None,
        announce_only: bool = False,
    ) -> Published:
        """``POST /v1/capabilities``; see :meth:`capmesh.Client.publish`."""
        body: dict[str, Any] = {"contract": dict(contract)}
        if price is not None:
            body["price"] = p.price_json(price)
        if limits is not None:
            body["limits"] = limits.to_json() if isinstance(limits, Limits) else dict(limits)
        if ttl_ms is not None:
            body["ttl_ms"] = ttl_ms
        if announce_only:
            body["announce_only"] = True
        return await self._model(Published, p.Req("POST", "/v1/capabilities", body=body))

    async def retire(self, capability: str) -> Retired:
        """``DELETE /v1/capabilities/{capability}``."""
        return await self._model(Retired, p.Req("DELETE", f"/v1/capabilities/{capability}"))

    async def contract(self, capability: str) -> ContractInfo:
        """``GET /v1/contracts/{capability}``."""
        return await self._model(ContractInfo, p.Req("GET", f"/v1/contracts/{capability}"))

    async def find_iter(
        self, capability: str, *, limit: int | None = None, timeout_ms: int | None = None
    ) -> AsyncIterator[FindHit | FindDone]:
        """``GET /v1/find/{capability}``; see :meth:`capmesh.Client.find_iter`."""
        params: dict[str, Any] = {}
        if limit is not None:
            params["limit"] = limit
        if timeout_ms is not None:
            params["timeout_ms"] = timeout_ms
        reader = p.FindReader()
        req = p.Req("GET", f"/v1/find/{capability}", params=params or None, read_timeout=None)
        lines = self._lines(req)
        try:
            async for line in lines:
                item = reader.line(line)
                if item is not None:
                    yield item
                    if isinstance(item, FindDone):
                        return
        finally:
            await lines.aclose()
        reader.finish()

    async def find(
        self, capability: str, *, limit: int | None = None, timeout_ms: int | None = None
    ) -> FindResult:
        """The whole find: every hit and how the search ended."""
        hits: list[FindHit] = []
        async for item in self.find_iter(capability, limit=limit, timeout_ms=timeout_ms):
            if isinstance(item, FindHit):
                hits.append(item)
            else:
                return FindResult(hits, item)
        raise AssertionError("find_iter ends with done or raises")

    async def query(
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
        """``POST /v1/registry/query``; see :meth:`capmesh.Client.query`."""
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
        return await self._model(QueryPage, p.Req("POST", "/v1/registry/query", body=body))

    # ---- calls ---------------------------------------------------------------------------------

    async def call(
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
        """``POST /v1/call``; see :meth:`capmesh.Client.call`. Cancelling the coroutine closes
        the connection, which cancels the call on the node."""
        body = p.call_body(capability, args, call_id, optimize, max_price, deadline_ms)
        req = p.call_req("/v1/call", body, self._trace_for(trace), self._call_read_timeout(deadline_ms))
        return await self._model(CallResult, req)

    async def start_call(
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
        """``POST /v1/calls``: starts a call and returns at once."""
        body = p.call_body(capability, args, call_id, optimize, max_price, deadline_ms)
        req = p.call_req("/v1/calls", body, self._trace_for(trace), "default")
        return await self._model(CallAccepted, req)

    async def call_status(self, call_id: str) -> CallStatus:
        """``GET /v1/calls/{call_id}``."""
        return await self._model(CallStatus, p.Req("GET", f"/v1/calls/{call_id}"))

    async def call_events(
        self, call_id: str, *, start: int | None = None, last_event_id: int | None = None
    ) -> AsyncIterator[CallEvent]:
        """``GET /v1/calls/{call_id}/events``; see :meth:`capmesh.Client.call_events`."""
        reader = p.EventReader()
        lines = self._lines(p.events_req(call_id, start, last_event_id))
        try:
            async for line in lines:
                event = reader.line(line)
                if event is not None:
                    yield event
                    if event.is_final:
                        return
        finally:
            await lines.aclose()
        reader.finish()

    async def wait_call(self, call_id: str) -> CallResult:
        """Follows a call to its end: its result, or the :class:`ApiError` it failed with."""
        async for event in self.call_events(call_id):
            if event.event == "done" and event.result is not None:
                return event.result
            if event.event == "failed" and event.error is not None:
                raise ApiError.of(event.error)
            if event.event == "cancelled":
                status = await self.call_status(call_id)
                raise ApiError.of(
                    status.error or ErrorInfo(code="Cancelled", message="the call was cancelled")
                )
        raise AssertionError("call_events ends with a final event or raises")

    async def cancel(self, call_id: str) -> bool:
        """``POST /v1/calls/{call_id}/cancel``."""
        return bool((await self._send(p.Req("POST", f"/v1/calls/{call_id}/cancel"))).get("cancelled"))

    # ---- receipts and attestations ---------------------------------------------------------

    async def receipts(self, *, from_seq: int | None = None, limit: int | None = None) -> LedgerPage:
        """``GET /v1/receipts``."""
        params: dict[str, Any] = {}
        if from_seq is not None:
            params["from"] = from_seq
        if limit is not None:
            params["limit"] = limit
        return await self._model(LedgerPage, p.Req("GET", "/v1/receipts", params=params or None))

    async def iter_receipts(self, *, from_seq: int = 0, page_size: int = 1000) -> AsyncIterator[LedgerEntry]:
        """Every ledger entry from ``from_seq`` on."""
        next_seq: int | None = from_seq
        while next_seq is not None:
            page = await self.receipts(from_seq=next_seq, limit=page_size)
            for entry in page.entries:
                yield entry
            next_seq = page.next

    async def receipt(self, receipt_id: str) -> ReceiptEntries:
        """``GET /v1/receipts/{receipt_id}``."""
        return await self._model(ReceiptEntries, p.Req("GET", f"/v1/receipts/{receipt_id}"))

    async def ledger_head(self) -> dict[str, Any]:
        """``GET /v1/receipts/head``."""
        head: dict[str, Any] = await self._send(p.Req("GET", "/v1/receipts/head"))
        return head

    async def export_receipts(self, path: PathLike) -> int:
        """Writes the ledger to ``path`` as ``capmesh receipts export`` does (entries, then the
        signed head, read first)."""
        head = await self.ledger_head()
        want = _head_len(head)
        lines: list[str] = []
        async for entry in self.iter_receipts():
            if len(lines) == want:
                break
            lines.append(_entry_line(entry))
        lines.append(json.dumps(head, separators=(",", ":"), ensure_ascii=False) + "\n")
        Path(path).write_text("".join(lines), encoding="utf-8")
        return len(lines) - 1

    async def verify_receipts(
        self, export: PathLike | None = None, *, capmesh_bin: PathLike | None = None
    ) -> LedgerVerification:
        """Verifies a ledger export (or this node's ledger) with ``capmesh receipts verify``;
        see :meth:`capmesh.Client.verify_receipts`."""
        if export is not None:
            return await asyncio.to_thread(p.verify_export, export, capmesh_bin)
        with tempfile.TemporaryDirectory(prefix="capmesh-ledger-") as tmp:
            path = Path(tmp) / "ledger.ndjson"
            await self.export_receipts(path)
            return await asyncio.to_thread(p.verify_export, path, capmesh_bin)

    async def attest(self, subject: str, claim: str, *, expires_ms: int | None = None) -> Attested:
        """``POST /v1/attest``."""
        body: dict[str, Any] = {"subject": subject, "claim": claim}
        if expires_ms is not None:
            body["expires_ms"] = expires_ms
        return await self._model(Attested, p.Req("POST", "/v1/attest", body=body))

    async def attestations(
        self,
        *,
        subject: str | None = None,
        issuer: str | None = None,
        claim: str | None = None,
        limit: int | None = None,
    ) -> list[Attested]:
        """``GET /v1/attestations``."""
        params = p.attestations_params(subject, issuer, claim, limit)
        doc = await self._send(p.Req("GET", "/v1/attestations", params=params))
        return [Attested.from_json(a) for a in doc["attestations"]]

    # ---- sessions ------------------------------------------------------------------------------

    async def open_session(
        self, name: str, *, metadata: Mapping[str, Any] | None = None, ttl_secs: int | None = None
    ) -> AsyncSession:
        """``POST /v1/sessions``; ``async with`` ends the session."""
        doc = await self._send(p.Req("POST", "/v1/sessions", body=p.session_body(name, metadata, ttl_secs)))
        return AsyncSession(self, SessionInfo.from_json(doc["session"]), doc["token"])

    async def sessions(self) -> list[SessionInfo]:
        """``GET /v1/sessions``."""
        doc = await self._send(p.Req("GET", "/v1/sessions"))
        return [SessionInfo.from_json(s) for s in doc["sessions"]]

    async def session(self, session_id: str) -> SessionInfo:
        """``GET /v1/sessions/{id}``."""
        return await self._model(SessionInfo, p.Req("GET", f"/v1/sessions/{session_id}"))

    async def heartbeat(self, session_id: str) -> SessionInfo:
        """``POST /v1/sessions/{id}/heartbeat``."""
        return await self._model(SessionInfo, p.Req("POST", f"/v1/sessions/{session_id}/heartbeat"))

    async def end_session(self, session_id: str) -> SessionInfo:
        """``DELETE /v1/sessions/{id}``."""
        return await self._model(SessionInfo, p.Req("DELETE", f"/v1/sessions/{session_id}"))


class AsyncSession:
    """An agent session for asyncio code; see :class:`capmesh.Session`."""

    def __init__(self, owner: AsyncClient, info: SessionInfo, token: str) -> None:
        self.info = info
        self.id = info.id
        self.token = token
        self.client = owner.with_token(token)
        self._beats: asyncio.Task[None] | None = None
        self._ended = False

    def __repr__(self) -> str:
        return f"AsyncSession(id={self.id!r}, name={self.info.name!r})"

    async def heartbeat(self) -> SessionInfo:
        self.info = await self.client.heartbeat(self.id)
        return self.info

    async def refresh(self) -> SessionInfo:
        self.info = await self.client.session(self.id)
        return self.info

    def keep_alive(self, interval: float | None = None) -> None:
        """Heartbeats from a task every ``interval`` seconds (default a third of ``ttl_secs``)
        until :meth:`end`."""
        if self._beats is not None:
            return
        every = interval if interval is not None else max(1.0, self.info.ttl_secs / 3)

        async def beat() -> None:
            while True:
                await asyncio.sleep(every)
                try:
                    await self.heartbeat()
                except (Unauthorized, NotFound):
                    return
                except CapmeshError:
                    continue

        self._beats = asyncio.get_running_loop().create_task(beat())

    async def end(self) -> SessionInfo | None:
        """Ends the session; ``None`` if it had already ended."""
        if self._beats is not None:
            self._beats.cancel()
        if self._ended:
            return None
        self._ended = True
        try:
            return await self.client.end_session(self.id)
        except (NotFound, Unauthorized):
            return None
        finally:
            await self.client.aclose()

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.end()
