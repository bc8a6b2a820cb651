"""Serving Python functions on the mesh: an :class:`Agent` opens a session on its node, attaches
a runtime over the session's WebSocket (specs/api.md §4.2–§4.4), announces a capability per
decorated function, and answers the calls the node pushes.

::

    import capmesh

    agent = capmesh.Agent("text-tools")

    @agent.capability(tags=["text"], read_only=True, idempotent=True)
    def shout(text: str, times: int = 1) -> str:
        \"\"\"Upper-cases text.\"\"\"
        return text.upper() * times

    agent.run()   # until ctrl-c; the capability id is logged and in agent.ids

A function's contract comes from its type hints (see :mod:`capmesh.schema`) and docstring, or
from ``input=`` / ``output=`` JSON Schemas given to the decorator. Arguments arrive as keyword
arguments (one per property of the arguments object). A plain function runs in a worker thread,
a coroutine function on the agent's event loop; a generator (sync or async) streams its items as
chunks (``str`` as text, ``bytes`` as data, anything else as JSON text), then ends the call.
Raising :class:`~capmesh.ToolError` fails the call with its message; any other exception fails
it with ``<Type>: <message>``. A parameter annotated :class:`CallContext` receives the call's
id, deadline, trace, and whether the caller cancelled it.

The agent heartbeats its session with ``ping`` frames, reconnects its socket when it drops
(within the node's grace period the capabilities stay served), and when the session is gone
(the node restarted) reads ``api.addr`` / ``api.token`` again, opens a new session and announces
again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import json
import logging
import re
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

import websockets
from websockets.asyncio.client import ClientConnection, connect

from . import _protocol as p
from ._base import CapmeshError
from .aio import AsyncClient
from .errors import (
    AnnounceError,
    ApiError,
    BadRequest,
    Denied,
    FrameError,
    NotFound,
    NotRunning,
    RuntimeReplaced,
    ToolError,
    TransportError,
    Unauthorized,
)
from .node import Endpoint, read_endpoint
from .schema import JsonSchema, from_json_value, function_schemas, to_json_value
from .types import Limits, SessionInfo, b64url_encode

__all__ = ["Agent", "CallContext", "Capability"]

log = logging.getLogger("capmesh.agent")

F = TypeVar("F", bound=Callable[..., Any])

FRAME_MAX = (1 << 20) + (64 << 10)
"""The largest frame the node takes from an agent (specs/api.md §4.8)."""
CHUNK_SPLIT = 256 << 10
"""Chunks larger than this are sent as several frames."""
SEND_RATE = 500.0
"""Frames a second the agent sends at most (the node takes 1000, bursts of 2000)."""
SEND_BURST = 200.0
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_END = object()


@dataclass
class CallContext:
    """A call the node pushed to the agent. Declare a parameter of this type to receive it."""

    call_id: str
    """The call's name on the socket (``c1``, ``c2``, …)."""
    capability: str
    deadline_ms: int
    """When the node stops waiting (unix ms)."""
    trace: str | None
    """The call's trace id, for logs."""
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    cancel_reason: str | None = None
    """``Cancelled`` (the caller), ``Timeout`` (the deadline), ``Shutdown`` (the session ended)
    or ``Disconnected`` (the socket dropped), once cancelled."""

    @property
    def cancelled(self) -> bool:
        """Whether the call is over for the node: stop working on it."""
        return self._cancelled.is_set()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Blocks (in a plain function's thread) until the call is cancelled or ``timeout``
        passes; whether it was cancelled."""
        return self._cancelled.wait(timeout)

    @property
    def remaining(self) -> float:
        """Seconds until the deadline."""
        return max(0.0, self.deadline_ms / 1000 - time.time())

    def _cancel(self, reason: str) -> None:
        if not self._cancelled.is_set():
            self.cancel_reason = reason
            self._cancelled.set()


class Capability:
    """A function served as a capability: its contract, terms, and (once announced) id."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        version: str = "1.0.0",
        description: str | None = None,
        tags: Sequence[str] = (),
        input: JsonSchema | None = None,
        output: JsonSchema | None = None,
        price: p.PriceLike | None = None,
        limits: Limits | Mapping[str, int] | None = None,
        latency_ms: int | None = None,
        read_only: bool = False,
        idempotent: bool = False,
        streaming: bool | None = None,
    ) -> None:
        self.fn = fn
        self.name = name if name is not None else fn.__name__.lower()
        if not _NAME.match(self.name):
            raise ValueError(
                f"{self.name!r} is not a capability name (^[a-z][a-z0-9_.-]{{0,63}}$): pass name="
            )
        sig = function_schemas(fn, CallContext)
        self._params = sig.params
        self._context_param = sig.context_param
        self._explicit_input = input is not None
        self.streaming = sig.streaming if streaming is None else streaming
        if self.streaming and not sig.streaming:
            raise TypeError(f"{fn.__qualname__}: a streaming capability is a generator function")
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
        doc = description if description is not None else inspect.getdoc(fn) or ""
        self.contract: dict[str, Any] = {
            "name": self.name,
            "version": version,
            "description": doc,
            "input": input if input is not None else sig.input,
            "output": output if output is not None else sig.output,
            "tags": list(tags),
            "read_only": read_only,
            "idempotent": idempotent,
            "streaming": self.streaming,
        }
        self.price = p.price_json(price) if price is not None else None
        self.limits = (
            limits.to_json() if isinstance(limits, Limits) else dict(limits) if limits is not None else None
        )
        self.latency_ms = latency_ms
        self.id: str | None = None
        """The capability id (CID of the contract), once the node announced it."""
        self.advert_id: str | None = None

    def __repr__(self) -> str:
        return f"Capability(name={self.name!r}, id={self.id!r})"

    def announcement(self) -> dict[str, Any]:
        """The capability's entry of an ``announce`` frame."""
        out: dict[str, Any] = {"contract": self.contract}
        if self.price is not None:
            out["price"] = self.price
        if self.limits is not None:
            out["limits"] = self.limits
        if self.latency_ms is not None:
            out["latency_ms"] = self.latency_ms
        return out

    def bind(self, args: Any, ctx: CallContext) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The function's arguments for a call's JSON ``args``: one keyword argument per
        property (converted to the parameter's type), and the context if it takes one. Arguments
        that are not an object (an explicit ``input`` schema may allow them) are passed as the
        one positional argument."""
        if isinstance(args, dict):
            posargs: tuple[Any, ...] = ()
            kwargs = {
                k: from_json_value(self._params[k], v) if k in self._params else v for k, v in args.items()
            }
        elif self._explicit_input:
            posargs, kwargs = (args,), {}
        else:
            raise TypeError(f"the arguments of {self.name} are a JSON object, not {type(args).__name__}")
        if self._context_param is not None:
            kwargs[self._context_param] = ctx
        return posargs, kwargs


class Agent:
    """Serves decorated Python functions on the mesh from one session of a node.

    ``Agent(name)`` finds the node from the data directory (``$CAPMESH_DATA_DIR`` or the
    platform default), ``Agent(name, "/tmp/a")`` from that one, ``Agent(name, addr=…,
    token=…)`` at an address with the node's token. ``ttl_secs`` is the session's lifetime
    without a heartbeat (the agent pings every third of it). Run it with :meth:`run` (blocks),
    :meth:`start` / :meth:`stop` (a background thread), or ``await`` :meth:`serve` /
    ``async with agent`` in asyncio code.
    """

    def __init__(
        self,
        name: str = "python-agent",
        data_dir: str | Path | None = None,
        *,
        addr: str | None = None,
        token: str | None = None,
        ttl_secs: int = 60,
        metadata: Mapping[str, Any] | None = None,
        ping_interval: float | None = None,
        max_workers: int = 32,
        timeout: float = 30.0,
    ) -> None:
        self.name = name
        self._data_dir = data_dir
        self._fixed: Endpoint | None = None
        if addr is not None or token is not None:
            if addr is None or token is None:
                raise ValueError("give both addr and token, or neither")
            self._fixed = Endpoint(addr=addr, token=token)
        self.ttl_secs = ttl_secs
        self.metadata = dict(metadata or {"client": "capmesh-python"})
        self.ping_interval = ping_interval if ping_interval is not None else min(20.0, ttl_secs / 3)
        self.timeout = timeout
        self.max_workers = max_workers
        self.capabilities: list[Capability] = []
        self.session: SessionInfo | None = None
        """The session serving now (``None`` between sessions)."""
        self.frame_errors: deque[FrameError] = deque(maxlen=100)
        """The latest frames the node refused (an output that broke the contract, …)."""
        self.error: BaseException | None = None
        """What stopped the agent, if it stopped on an error."""
        self._by_fn: dict[Callable[..., Any], Capability] = {}
        # Per run (set in serve()).
        self._token: str | None = None
        self._endpoint: Endpoint | None = None
        self._ws: ClientConnection | None = None
        self._calls: dict[str, tuple[asyncio.Task[None], CallContext]] = {}
        self._control: asyncio.Queue[dict[str, Any]] | None = None
        self._stopping: asyncio.Event | None = None
        self._ready: asyncio.Future[dict[str, str]] | None = None
        self._send_lock: asyncio.Lock | None = None
        self._tokens = SEND_BURST
        self._tokens_at = 0.0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._verbose = False

    # ---- declaring capabilities --------------------------------------------------------------

    @overload
    def capability(self, fn: F, /) -> F: ...

    @overload
    def capability(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        version: str = "1.0.0",
        description: str | None = None,
        tags: Sequence[str] = (),
        input: JsonSchema | None = None,
        output: JsonSchema | None = None,
        price: p.PriceLike | None = None,
        limits: Limits | Mapping[str, int] | None = None,
        latency_ms: int | None = None,
        read_only: bool = False,
        idempotent: bool = False,
        streaming: bool | None = None,
    ) -> Callable[[F], F]: ...

    def capability(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Serves the decorated function as a capability (``@agent.capability`` or
        ``@agent.capability(tags=[…], price=(1, "credit"), …)``). Its contract: ``name`` (the
        function's name), ``version`` (1.0.0), ``description`` (the docstring), ``tags``,
        ``input`` / ``output`` JSON Schemas (derived from the type hints when not given),
        ``read_only``, ``idempotent``, ``streaming`` (a generator function streams); its terms:
        ``price``, ``limits``, ``latency_ms``. The function is returned unchanged."""

        def register(f: F) -> F:
            if self._task is not None or self._thread is not None:
                raise CapmeshError("declare capabilities before the agent starts")
            cap = Capability(f, **options)
            if any(c.name == cap.name and c.contract == cap.contract for c in self.capabilities):
                raise ValueError(f"{cap.name} is declared twice")
            self.capabilities.append(cap)
            self._by_fn[f] = cap
            return f

        if fn is not None:
            return register(fn)
        return register

    @property
    def ids(self) -> dict[str, str]:
        """Capability name → id, for those announced."""
        return {c.name: c.id for c in self.capabilities if c.id is not None}

    def id_of(self, fn_or_name: Callable[..., Any] | str) -> str:
        """The capability id of a decorated function (or of a capability name)."""
        cap = self._by_fn.get(fn_or_name) if callable(fn_or_name) else None
        if cap is None:
            cap = next((c for c in self.capabilities if c.name == fn_or_name), None)
        if cap is None or cap.id is None:
            raise KeyError(f"{fn_or_name!r} is not an announced capability of this agent")
        return cap.id

    # ---- running: sync ------------------------------------------------------------------------

    def run(self, *, quiet: bool = False) -> None:
        """Serves until interrupted (ctrl-c), then ends the session. Unless ``quiet``, says on
        stderr what it serves (each capability's id) and when it waits for the node."""
        self._verbose = not quiet
        try:
            asyncio.run(self.serve())
        except KeyboardInterrupt:
            pass

    def start(self, timeout: float = 60.0) -> dict[str, str]:
        """Serves from a background thread; returns once every capability is announced
        (name → capability id). :meth:`stop` ends it."""
        if self._thread is not None:
            raise CapmeshError("the agent is already running")
        ready: concurrent.futures.Future[dict[str, str]] = concurrent.futures.Future()

        async def main() -> None:
            self._thread_loop = asyncio.get_running_loop()
            try:
                ids = await self.astart()
            except BaseException as e:
                ready.set_exception(e)
                return
            ready.set_result(ids)
            assert self._task is not None
            try:
                await self._task
            except BaseException as e:  # already in self.error
                log.debug("agent stopped: %r", e)

        self._thread = threading.Thread(target=lambda: asyncio.run(main()), name="capmesh-agent", daemon=True)
        self._thread.start()
        try:
            return ready.result(timeout)
        except concurrent.futures.TimeoutError:
            self.stop()
            raise TimeoutError(f"the agent was not ready within {timeout} s") from None
        except BaseException:
            self._thread.join()
            self._thread = None
            raise

    def stop(self, timeout: float = 30.0) -> None:
        """Stops an agent :meth:`start` started: ends the session (its adverts are retired)."""
        thread, loop = self._thread, self._thread_loop
        if thread is None:
            return
        if loop is not None and not loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(self.astop(), loop).result(timeout)
            except (RuntimeError, concurrent.futures.CancelledError):
                pass
        thread.join(timeout)
        self._thread = None
        self._thread_loop = None

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- running: asyncio ---------------------------------------------------------------------

    async def astart(self) -> dict[str, str]:
        """Starts serving in a task; returns once every capability is announced."""
        if self._task is not None:
            raise CapmeshError("the agent is already running")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[dict[str, str]] = loop.create_future()
        self._ready = ready
        task = self._task = loop.create_task(self.serve())
        waiting: set[asyncio.Future[Any]] = {ready, task}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and not ready.cancelled() and ready.exception() is None:
            return ready.result()
        self._task = None
        try:
            await task
        except BaseException as e:
            raise e from None
        raise CapmeshError("the agent stopped before it was ready")

    async def astop(self) -> None:
        """Stops serving: ends the session and waits for the agent's task."""
        if self._stopping is not None:
            self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await task
            except BaseException as e:
                log.debug("agent ended with %r", e)

    async def __aenter__(self) -> Agent:
        await self.astart()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()

    async def serve(self) -> None:
        """Serves until :meth:`astop` (or the task is cancelled), then ends the session.
        Raises what stopped it: :class:`AnnounceError` if the node refused a capability,
        :class:`RuntimeReplaced` if another socket took the session over."""
        if not self.capabilities:
            raise CapmeshError("nothing to serve: decorate a function with @agent.capability")
        self._stopping = asyncio.Event()
        self._control = asyncio.Queue()
        self._send_lock = asyncio.Lock()
        ready = self._ready
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.max_workers, thread_name_prefix="capmesh-call"
        )
        self.error = None
        try:
            await self._main()
        except BaseException as e:
            self.error = e
            if ready is not None and not ready.done():
                if isinstance(e, asyncio.CancelledError):
                    ready.cancel()
                else:
                    ready.set_exception(e)
            raise
        finally:
            await self._shutdown()
            if ready is not None and not ready.done():
                ready.cancel()
            self._ready = None

    # ---- the session and its socket -----------------------------------------------------------

    def _client(self, token: str | None = None) -> AsyncClient:
        assert self._endpoint is not None
        return AsyncClient(
            addr=self._endpoint.addr, token=token or self._endpoint.token, timeout=self.timeout
        )

    async def _open_session(self) -> None:
        self._endpoint = self._fixed or read_endpoint(self._data_dir)
        async with self._client() as client:
            session = await client.open_session(self.name, metadata=self.metadata, ttl_secs=self.ttl_secs)
            await session.client.aclose()
        self.session, self._token = session.info, session.token
        log.info("session %s opened on %s", session.id, self._endpoint.addr)

    async def _session_state(self) -> SessionInfo | None:
        """The session as the node sees it; ``None`` if it ended."""
        if self.session is None or self._token is None:
            return None
        try:
            async with self._client(self._token) as client:
                return await client.session(self.session.id)
        except (NotFound, Unauthorized):
            return None

    async def _connect(self) -> ClientConnection:
        assert self._endpoint is not None and self.session is not None and self._token is not None
        url = f"{self._endpoint.ws_url}/v1/sessions/{self.session.id}/runtime"
        try:
            return await connect(
                url,
                additional_headers={"Authorization": f"Bearer {self._token}"},
                user_agent_header="capmesh-python/0.1",
                proxy=None,
                compression=None,
                max_size=8 << 20,
                open_timeout=self.timeout,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=5,
            )
        except websockets.exceptions.InvalidStatus as e:
            response = e.response
            raise ApiError.from_response(
                response.status_code, bytes(response.body or b""), response.headers
            ) from e
        except (OSError, TimeoutError, websockets.exceptions.InvalidHandshake) as e:
            raise TransportError(f"cannot attach the runtime at {url}: {type(e).__name__}: {e}") from e

    async def _main(self) -> None:
        assert self._stopping is not None
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                if self.session is None:
                    await self._open_session()
                ws = await self._connect()
            except (Unauthorized, NotFound) as e:
                # The session ended, or the node restarted (new token): open another.
                log.info("session gone (%s); opening a new one", e.code)
                self.session = None
                if await self._pause(backoff):
                    return
                backoff = min(backoff * 2, 5.0)
                continue
            except (BadRequest, Denied):
                raise
            except (NotRunning, TransportError, ApiError, OSError) as e:
                log.info("node not reachable (%s); retrying in %.1f s", e, backoff)
                if backoff == 0.1:
                    self._say(f"waiting for the node: {e}")
                if not self._same_node():
                    self.session = None
                if await self._pause(backoff):
                    return
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            try:
                await self._attached(ws)
            except (websockets.exceptions.ConnectionClosed, TransportError, TimeoutError) as e:
                log.info("runtime socket lost: %s", e)
            finally:
                # When stopping, _shutdown ends the session first (the node then closes the
                # socket): no moment without a runtime while the session still serves.
                if not self._stopping.is_set():
                    self._ws = None
                    await ws.close()
                    self._drop_calls("Disconnected")
            if self._stopping.is_set():
                return
            if ws.close_code == 1000:
                try:
                    state = await self._session_state()
                except CapmeshError:
                    state = None
                if state is not None and state.runtime_attached:
                    raise RuntimeReplaced(
                        f"another runtime socket was attached to session {state.id}: it serves "
                        "the session's capabilities now"
                    )
                if state is None:
                    self.session = None
            log.info("runtime socket closed (%s %s); reconnecting", ws.close_code, ws.close_reason)

    def _say(self, text: str) -> None:
        if self._verbose:
            print(f"capmesh agent {self.name}: {text}", file=sys.stderr, flush=True)

    def _same_node(self) -> bool:
        """Whether the node's files still name the endpoint the session was opened on (a node
        that restarted has a new token, and maybe a new address: its sessions are gone)."""
        if self._fixed is not None:
            return True
        try:
            return read_endpoint(self._data_dir) == self._endpoint
        except CapmeshError:
            return False

    async def _pause(self, seconds: float) -> bool:
        """Waits ``seconds`` unless the agent is stopping; whether it is."""
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
            return True
        except TimeoutError:
            return False

    async def _attached(self, ws: ClientConnection) -> None:
        assert self._stopping is not None and self._control is not None
        welcome = json.loads(await asyncio.wait_for(ws.recv(), self.timeout))
        if welcome.get("type") != "welcome":
            raise CapmeshError(f"the node's first frame is not welcome: {welcome!r}")
        served = {c["capability"] for c in welcome.get("capabilities", [])}
        self._ws = ws
        while not self._control.empty():
            self._control.get_nowait()
        reader = asyncio.create_task(self._reader(ws))
        pinger = asyncio.create_task(self._pinger())
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            pending = [c for c in self.capabilities if c.id is None or c.id not in served]
            if pending:
                await self._announce(pending, reader)
            for cap in pending:
                log.info("serving %s as %s", cap.name, cap.id)
                self._say(f"serving {cap.name} as {cap.id}")
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(self.ids)
            await asyncio.wait({reader, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
        finally:
            for task in (pinger, stopping, reader):
                task.cancel()

    async def _announce(self, caps: list[Capability], reader: asyncio.Task[None]) -> None:
        assert self._control is not None
        attempts = 0
        while caps:
            await self._send({"type": "announce", "capabilities": [c.announcement() for c in caps]})
            answer = await self._control_frame(reader)
            served: list[dict[str, Any]] = []
            if answer.get("type") == "announced":
                served = answer.get("capabilities", [])
                for cap, s in zip(caps, served, strict=False):
                    cap.id, cap.advert_id = s["capability"], s["advert_id"]
                if len(served) >= len(caps):
                    return
                answer = await self._control_frame(reader)
            failed = caps[len(served)]
            code, message = answer.get("code", "BadContract"), answer.get("message", "")
            if code == "Unavailable" and attempts < 5:
                attempts += 1
                caps = caps[len(served) :]
                await asyncio.sleep(0.5 * attempts)
                continue
            raise AnnounceError(
                code,
                f"the node would not serve {failed.name}: {message}",
                served=[s["capability"] for s in served],
            )

    async def _control_frame(self, reader: asyncio.Task[None]) -> dict[str, Any]:
        """The next answer to an announcement (``announced`` or an ``error`` about one)."""
        assert self._control is not None
        get = asyncio.create_task(self._control.get())
        done, _ = await asyncio.wait(
            {get, reader}, timeout=self.timeout * 2, return_when=asyncio.FIRST_COMPLETED
        )
        if get in done:
            return get.result()
        get.cancel()
        if reader in done:
            raise TransportError("the runtime socket closed while announcing")
        raise TransportError("the node did not answer the announcement in time")

    async def _reader(self, ws: ClientConnection) -> None:
        assert self._control is not None
        try:
            async for message in ws:
                if not isinstance(message, str):
                    continue
                try:
                    frame = json.loads(message)
                except ValueError:
                    log.warning("a frame that is not JSON: %.200s", message)
                    continue
                kind = frame.get("type")
                if kind == "call":
                    self._on_call(frame)
                elif kind == "cancel":
                    self._on_cancel(frame)
                elif kind == "announced" or kind == "retired":
                    self._control.put_nowait(frame)
                elif kind == "error":
                    self._on_error(frame)
                elif kind in ("pong", "welcome"):
                    pass
                else:
                    log.debug("unknown frame %s", kind)
        except websockets.exceptions.ConnectionClosed:
            pass

    def _on_error(self, frame: dict[str, Any]) -> None:
        assert self._control is not None
        code, message, call_id = frame.get("code", ""), frame.get("message", ""), frame.get("call_id")
        if call_id is None and code in ("BadContract", "TooMany", "Unavailable", "NotServed"):
            self._control.put_nowait(frame)
            return
        err = FrameError(code, message, call_id)
        self.frame_errors.append(err)
        log.warning("the node refused a frame: %s", err)

    async def _pinger(self) -> None:
        # `ping` frames extend the session as heartbeats do; the WebSocket layer's own pings
        # notice a dead connection.
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                await self._send({"type": "ping"})
            except websockets.exceptions.ConnectionClosed:
                return

    async def _send(self, frame: dict[str, Any]) -> None:
        text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
        await self._send_text(text)

    async def _send_text(self, text: str) -> None:
        assert self._send_lock is not None
        ws = self._ws
        if ws is None:
            raise websockets.exceptions.ConnectionClosedError(None, None)
        async with self._send_lock:
            # A token bucket under the node's frame rate: a dropped frame is not resent.
            loop = asyncio.get_running_loop()
            now = loop.time()
            self._tokens = min(SEND_BURST, self._tokens + (now - self._tokens_at) * SEND_RATE)
            self._tokens_at = now
            if self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / SEND_RATE)
                self._tokens = 1
                self._tokens_at = loop.time()
            self._tokens -= 1
            await ws.send(text)

    # ---- calls ----------------------------------------------------------------------------------

    def _on_call(self, frame: dict[str, Any]) -> None:
        call_id = str(frame.get("call_id"))
        ctx = CallContext(
            call_id=call_id,
            capability=str(frame.get("capability")),
            deadline_ms=int(frame.get("deadline_ms") or 0),
            trace=frame.get("trace"),
        )
        task = asyncio.create_task(self._run_call(frame, ctx), name=f"capmesh-call-{call_id}")
        self._calls[call_id] = (task, ctx)

        def forget(_: asyncio.Task[None]) -> None:
            entry = self._calls.get(call_id)
            if entry is not None and entry[0] is task:
                del self._calls[call_id]

        task.add_done_callback(forget)

    def _on_cancel(self, frame: dict[str, Any]) -> None:
        entry = self._calls.pop(str(frame.get("call_id")), None)
        if entry is None:
            return
        task, ctx = entry
        ctx._cancel(str(frame.get("reason", "Cancelled")))
        task.cancel()

    def _drop_calls(self, reason: str) -> None:
        calls, self._calls = self._calls, {}
        for task, ctx in calls.values():
            ctx._cancel(reason)
            task.cancel()

    async def _run_call(self, frame: dict[str, Any], ctx: CallContext) -> None:
        call_id = ctx.call_id
        cap = next((c for c in self.capabilities if c.id == ctx.capability), None)
        try:
            if cap is None:
                await self._send_error(call_id, f"this agent does not serve {ctx.capability}")
                return
            try:
                args, kwargs = cap.bind(frame.get("args"), ctx)
            except (TypeError, ValueError, KeyError) as e:
                await self._send_error(call_id, f"bad arguments: {e}")
                return
            if cap.streaming:
                async for item in self._items(cap, args, kwargs, ctx):
                    for chunk in _chunks(item):
                        await self._send({"type": "chunk", "call_id": call_id, **chunk})
                await self._send({"type": "end", "call_id": call_id})
            else:
                output = await self._invoke(cap, args, kwargs)
                await self._send_result(call_id, output)
        except asyncio.CancelledError:
            raise
        except websockets.exceptions.ConnectionClosed:
            log.debug("call %s: the socket closed before its answer", call_id)
        except ToolError as e:
            await self._try_error(call_id, e.message)
        except Exception as e:
            log.exception("call %s of %s failed", call_id, cap.name if cap else ctx.capability)
            await self._try_error(call_id, f"{type(e).__name__}: {e}")

    async def _invoke(self, cap: Capability, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if cap.is_async:
            return await cap.fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(cap.fn, *args, **kwargs))

    async def _items(
        self, cap: Capability, args: tuple[Any, ...], kwargs: dict[str, Any], ctx: CallContext
    ) -> AsyncIterator[Any]:
        if cap.is_async:
            agen = cap.fn(*args, **kwargs)
            try:
                async for item in agen:
                    yield item
            finally:
                await agen.aclose()
            return
        loop = asyncio.get_running_loop()
        gen = cap.fn(*args, **kwargs)
        executor = self._executor
        assert executor is not None
        while True:
            step = loop.run_in_executor(executor, next, gen, _END)
            try:
                item = await asyncio.shield(step)
            except asyncio.CancelledError:
                # The generator runs in a thread: close it once its current step is done.
                step.add_done_callback(lambda _: executor.submit(gen.close))
                raise
            if item is _END:
                return
            if ctx.cancelled:
                await loop.run_in_executor(executor, gen.close)
                return
            yield item

    async def _send_result(self, call_id: str, output: Any) -> None:
        try:
            text = json.dumps(
                {"type": "result", "call_id": call_id, "output": to_json_value(output)},
                separators=(",", ":"),
                ensure_ascii=False,
                allow_nan=False,
            )
        except (TypeError, ValueError) as e:
            await self._send_error(call_id, f"the output is not JSON: {e}")
            return
        size = len(text.encode("utf-8"))
        if size > FRAME_MAX:
            await self._send_error(
                call_id, f"the output is {size} bytes as JSON; a runtime socket takes at most 1 MiB"
            )
            return
        await self._send_text(text)

    async def _send_error(self, call_id: str, message: str) -> None:
        await self._send({"type": "error", "call_id": call_id, "message": message[:4096]})

    async def _try_error(self, call_id: str, message: str) -> None:
        try:
            await self._send_error(call_id, message)
        except websockets.exceptions.ConnectionClosed:
            pass

    # ---- shutdown -------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        self._drop_calls("Shutdown")
        session, token = self.session, self._token
        if session is not None and token is not None and self._endpoint is not None:
            try:
                async with self._client(token) as client:
                    await asyncio.wait_for(client.end_session(session.id), self.timeout)
                log.info("session %s ended", session.id)
            except (CapmeshError, TimeoutError, OSError) as e:
                log.debug("ending session %s: %s", session.id, e)
        self.session = None
        self._token = None
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _chunks(item: Any) -> list[dict[str, str]]:
    """A generator's item as the fields of ``chunk`` frames (large ones split)."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
        return [
            {"data": b64url_encode(data[i : i + CHUNK_SPLIT])} for i in range(0, len(data), CHUNK_SPLIT)
        ] or [{"data": ""}]
    text = item if isinstance(item, str) else json.dumps(to_json_value(item), separators=(",", ":"))
    encoded = text.encode("utf-8")
    if len(encoded) <= CHUNK_SPLIT:
        return [{"text": text}]
    return [
        {"data": b64url_encode(encoded[i : i + CHUNK_SPLIT])} for i in range(0, len(encoded), CHUNK_SPLIT)
    ]
