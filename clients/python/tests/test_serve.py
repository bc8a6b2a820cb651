"""Python functions served on the mesh by an Agent on node A, called from node B."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TypedDict

import pytest

import capmesh
from conftest import Mesh
from harness import Node, T, connected, sees, wait_for

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def serve(mesh_a: Node, agents: list[capmesh.Agent], agent: capmesh.Agent, *seen_by: Node) -> dict[str, str]:
    """Starts ``agent`` and waits until every node of ``seen_by`` has its adverts."""
    agents.append(agent)
    ids = agent.start()
    provider = mesh_a.peer_id
    for node in seen_by:
        for cap in ids.values():
            sees(node, cap, provider)
    return ids


def test_a_decorated_function_is_served_across_the_mesh_with_receipts_naming_session_and_trace(
    mesh: Mesh, agents: list[capmesh.Agent], uniq: Callable[[str], str]
) -> None:
    agent = capmesh.Agent("shouter", mesh.a.data_dir)

    @agent.capability(name=uniq("shout"), tags=["text"], read_only=True, idempotent=True)
    def shout(text: str, times: int = 1) -> str:
        """Upper-cases text."""
        return text.upper() * times

    ids = serve(mesh.a, agents, agent, mesh.b)
    cap = agent.id_of(shout)
    assert list(ids.values()) == [cap]

    with capmesh.Client(mesh.b.data_dir, trace=TRACE) as b:
        done = b.call(cap, {"text": "hi", "times": 2})
        assert done.output == "HIHI"
        assert done.provider == mesh.a.peer_id
        assert done.trace == TRACE
        # The contract B fetched by id is the one derived from the signature and docstring.
        info = b.contract(cap)
        assert info.contract["description"] == "Upper-cases text."
        assert info.contract["input"] == {
            "type": "object",
            "properties": {"text": {"type": "string"}, "times": {"type": "integer", "default": 1}},
            "required": ["text"],
            "additionalProperties": False,
        }
        assert info.contract["output"] == {"type": "string"}
        made = b.receipt(done.receipt_id)
        assert made.receipt.note is not None and made.receipt.note.trace == TRACE
        assert made.countersignature is not None
        assert (
            made.receipt.record is not None and made.receipt.record["payload"]["provider"] == mesh.a.peer_id
        )

    with mesh.a.client() as a:
        served = a.receipt(done.receipt_id).receipt.note
        assert served is not None
        assert (served.trace, served.session_name) == (TRACE, "shouter")
        assert agent.session is not None and served.session_id == agent.session.id
        (session,) = [s for s in a.sessions() if s.id == agent.session.id]
        assert session.runtime_attached and session.calls_served == 1
        assert [c.capability for c in session.capabilities] == [cap]
        assert cap in a.status().published

    # Stopping the agent ends its session: the advert is retired on B too.
    agent.stop()
    sees(mesh.b, cap, n=0)
    with mesh.b.client() as b, pytest.raises(capmesh.ApiError) as e:
        b.call(cap, {"text": "x"})
    assert isinstance(e.value, (capmesh.NotFound, capmesh.CallFailed)), e.value


class Point(TypedDict):
    x: float
    y: float


@dataclass
class Segment:
    start: Point
    end: Point
    label: str = ""


@dataclass
class Measured:
    length: float
    label: str


def test_arguments_arrive_as_the_annotated_types_and_explicit_schemas_are_used_as_given(
    mesh: Mesh, agents: list[capmesh.Agent], uniq: Callable[[str], str]
) -> None:
    agent = capmesh.Agent("geometry", mesh.a.data_dir)
    seen: list[object] = []

    @agent.capability(name=uniq("length"))
    def length(segment: Segment, scale: float = 1.0) -> Measured:
        seen.append(segment)
        dx = segment.end["x"] - segment.start["x"]
        dy = segment.end["y"] - segment.start["y"]
        return Measured(length=scale * (dx * dx + dy * dy) ** 0.5, label=segment.label)

    @agent.capability(
        name=uniq("total"),
        input={"type": "array", "items": {"type": "integer"}},
        output={"type": "object", "properties": {"sum": {"type": "integer"}}, "required": ["sum"]},
    )
    def total(numbers: list[int]) -> dict[str, int]:
        return {"sum": sum(numbers)}

    serve(mesh.a, agents, agent, mesh.b)
    with mesh.b.client() as b:
        args = {"segment": {"start": {"x": 0, "y": 0}, "end": {"x": 3, "y": 4}, "label": "d"}, "scale": 2}
        assert b.call(agent.id_of(length), args).output == {"length": 10.0, "label": "d"}
        assert seen == [Segment(start={"x": 0, "y": 0}, end={"x": 3, "y": 4}, label="d")]
        assert b.call(agent.id_of(total), [1, 2, 3]).output == {"sum": 6}

        # Arguments the derived schema refuses never leave B.
        with pytest.raises(capmesh.BadRequest) as e:
            b.call(agent.id_of(length), {"segment": {"start": {"x": 0}}, "extra": 1})
        assert e.value.call is not None and e.value.call.code == "InvalidArgs"
        assert e.value.call.attempts == [] and "extra" in e.value.message
    assert len(seen) == 1


def test_a_call_started_in_the_background_is_followed_through_its_events(
    mesh: Mesh, agents: list[capmesh.Agent], uniq: Callable[[str], str]
) -> None:
    agent = capmesh.Agent("echo", mesh.a.data_dir)

    @agent.capability(name=uniq("echo"))
    def echo(value: dict[str, int]) -> dict[str, int]:
        return value

    cap = serve(mesh.a, agents, agent, mesh.b)[uniq("echo")]
    call_id = capmesh.new_call_id()
    with mesh.b.client() as b:
        accepted = b.start_call(cap, {"value": {"n": 7}}, call_id=call_id, trace=TRACE, deadline_ms=20_000)
        assert (accepted.call_id, accepted.trace, accepted.state) == (call_id, TRACE, "finding")
        events = list(b.call_events(call_id))
        assert [e.id for e in events] == list(range(len(events)))
        names = [e.event for e in events]
        assert names[-1] == "done" and names.count("done") == 1, names
        assert "chosen" in names, names
        if "providers" in names:  # a cold call asks for offers first; a warm one does not
            assert names[0] == "providers" and mesh.a.peer_id in events[0].providers
            assert any(e.event == "offer" and e.provider == mesh.a.peer_id for e in events)
        done = events[-1]
        assert done.result is not None and done.result.output == {"n": 7}
        assert done.trace == TRACE and done.receipt_id == done.result.receipt_id

        status = b.call_status(call_id)
        assert status.state == "done" and status.is_final and status.events == len(events)
        assert status.result is not None and status.result.receipt_id == done.receipt_id
        assert status.provider == mesh.a.peer_id and status.session is None
        # Following again from an event id, or after one (as an SSE client reconnects).
        tail = list(b.call_events(call_id, start=len(events) - 2))
        assert [e.id for e in tail] == [len(events) - 2, len(events) - 1]
        after = list(b.call_events(call_id, last_event_id=len(events) - 2))
        assert [e.event for e in after] == ["done"]
        assert b.wait_call(call_id).output == {"n": 7}

        # The same call made with a session's token is the session's.
        with b.open_session("caller", metadata={"model": "test"}) as session:
            result = session.client.call(cap, {"value": {"n": 1}})
            assert session.refresh().calls_made == 1
            assert session.client.call_status(result.call_id).session == session.id
            note = b.receipt(result.receipt_id).receipt.note
            assert note is not None and (note.session_id, note.session_name) == (session.id, "caller")
            # Another token's calls are not the session's to see.
            with pytest.raises(capmesh.NotFound):
                session.client.call_status(call_id)


def test_generators_stream_chunks_that_arrive_before_the_end(
    mesh: Mesh, agents: list[capmesh.Agent], uniq: Callable[[str], str]
) -> None:
    agent = capmesh.Agent("streamer", mesh.a.data_dir)
    go_on = threading.Event()

    @agent.capability(name=uniq("words"))
    def words(text: str) -> Iterator[str]:
        first, *rest = text.split()
        yield first
        assert go_on.wait(T), "the test never let the stream go on"
        for w in rest:
            yield " " + w

    @agent.capability(name=uniq("blobs"))
    async def blobs(n: int) -> AsyncIterator[bytes]:
        for i in range(n):
            await asyncio.sleep(0)
            yield bytes([i]) * 3

    ids = serve(mesh.a, agents, agent, mesh.b)
    with mesh.b.client() as b:
        accepted = b.start_call(ids[uniq("words")], {"text": "one two three"})
        events = b.call_events(accepted.call_id)
        first = next(e for e in events if e.event == "progress")
        # The first chunk is here while the generator still holds the rest.
        assert (first.seq, first.data) == (0, b"one")
        assert b.call_status(accepted.call_id).state == "running"
        go_on.set()
        rest = list(events)
        chunks = [e.data for e in rest if e.event == "progress"]
        assert chunks == [b" two", b" three"]
        assert rest[-1].event == "done" and rest[-1].result is not None
        result = rest[-1].result
        assert result.output is None and result.chunks == 3
        assert result.stream_text == "one two three" and result.stream_root is not None

        # An async generator of bytes, through a blocking call.
        done = b.call(ids[uniq("blobs")], {"n": 4})
        assert done.chunk_bytes == [b"\x00" * 3, b"\x01" * 3, b"\x02" * 3, b"\x03" * 3]


def test_a_cancel_reaches_the_function_and_ends_the_call(
    mesh: Mesh, agents: list[capmesh.Agent], uniq: Callable[[str], str]
) -> None:
    agent = capmesh.Agent("patient", mesh.a.data_dir)
    started = threading.Event()
    reasons: list[str | None] = []
    async_cancelled = threading.Event()

    @agent.capability(name=uniq("wait"))
    def wait(ctx: capmesh.CallContext, seconds: float) -> str:
        started.set()
        if ctx.wait_cancelled(seconds):
            reasons.append(ctx.cancel_reason)
            return "cancelled"
        return "waited"

    @agent.capability(name=uniq("await"))
    async def await_(seconds: float) -> str:
        started.set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            async_cancelled.set()
            raise
        return "waited"

    ids = serve(mesh.a, agents, agent, mesh.b)
    with mesh.b.client() as b:
        accepted = b.start_call(ids[uniq("wait")], {"seconds": T})
        assert started.wait(T)
        assert b.cancel(accepted.call_id) is True
        events = list(b.call_events(accepted.call_id))
        assert events[-1].event == "cancelled"
        status = b.call_status(accepted.call_id)
        assert status.state == "cancelled" and status.error is not None and status.error.code == "Cancelled"
        wait_for("the function told of the cancel", lambda: reasons == ["Cancelled"])
        with pytest.raises(capmesh.Cancelled):
            b.wait_call(accepted.call_id)

        # A blocking call cancelled from another thread raises Cancelled; a coroutine function is
        # cancelled where it awaits.
        started.clear()
        call_id = capmesh.new_call_id()

        def cancel_when_started() -> None:
            assert started.wait(T)
            with mesh.b.client() as other:
                other.cancel(call_id)

        canceller = threading.Thread(target=cancel_when_started)
        canceller.start()
        with pytest.raises(capmesh.Cancelled) as e:
            b.call(ids[uniq("await")], {"seconds": T}, call_id=call_id)
        canceller.join()
        assert e.value.status == 499 and e.value.call is not None and e.value.call.call_id == call_id
        assert async_cancelled.wait(T)
        # Nothing in flight by that id any more.
        with pytest.raises(capmesh.NotFound):
            b.cancel(call_id)


def test_failures_reach_the_caller_as_typed_errors(
    mesh: Mesh, agents: list[capmesh.Agent], uniq: Callable[[str], str]
) -> None:
    agent = capmesh.Agent("failing", mesh.a.data_dir)

    @agent.capability(name=uniq("refuse"))
    def refuse(text: str) -> str:
        raise capmesh.ToolError(f"I do not read {text}")

    @agent.capability(name=uniq("crash"))
    def crash(n: int) -> int:
        return 1 // n

    @agent.capability(name=uniq("liar"))
    def liar(n: int) -> int:
        return "not a number"  # type: ignore[return-value]

    @agent.capability(name=uniq("halfway"))
    def halfway() -> Iterator[str]:
        yield "part"
        raise RuntimeError("lost the rest")

    ids = serve(mesh.a, agents, agent, mesh.b)
    with mesh.b.client() as b:
        with pytest.raises(capmesh.CallFailed) as e:
            b.call(ids[uniq("refuse")], {"text": "Klingon"})
        assert e.value.status == 502 and e.value.call is not None and e.value.call.code == "Failed"
        (attempt,) = e.value.call.attempts
        assert attempt.provider == mesh.a.peer_id and attempt.stage == "task"
        assert attempt.message == "the capability failed: I do not read Klingon"

        with pytest.raises(capmesh.CallFailed) as e:
            b.call(ids[uniq("crash")], {"n": 0})
        assert e.value.call is not None
        assert "ZeroDivisionError: integer division or modulo by zero" in e.value.call.attempts[0].message

        with pytest.raises(capmesh.CallFailed) as e:
            b.call(ids[uniq("liar")], {"n": 1})
        assert e.value.call is not None and [t.code for t in e.value.call.attempts] == ["OutputInvalid"]
        assert any(f.code == "OutputInvalid" for f in agent.frame_errors)

        accepted = b.start_call(ids[uniq("halfway")], {})
        events = list(b.call_events(accepted.call_id))
        assert events[-1].event == "failed" and events[-1].error is not None
        assert events[-1].error.code == "CallFailed"
        with pytest.raises(capmesh.CallFailed) as e:
            b.wait_call(accepted.call_id)
        assert e.value.call is not None and "RuntimeError: lost the rest" in e.value.call.attempts[0].message

        unknown = "bafyr4ibdcxqli3tajsgompbmr7zwi47typslauiul22tr42bxbvzuqwcla"
        with pytest.raises(capmesh.NotFound) as nf:
            b.call(unknown, {})
        assert nf.value.call is not None and nf.value.call.code == "NotFound"
        with pytest.raises(capmesh.BadRequest):
            b.call("not-a-cid", {})

    # A second agent may not take a served capability over.
    rival = capmesh.Agent("rival", mesh.a.data_dir)
    rival.capability(name=uniq("refuse"))(refuse)
    with pytest.raises(capmesh.AnnounceError) as refused:
        rival.start()
    assert refused.value.code == "BadContract" and "already served" in refused.value.message


def test_an_asyncio_agent_and_client(mesh: Mesh, uniq: Callable[[str], str]) -> None:
    agent = capmesh.Agent("async-agent", mesh.a.data_dir)

    @agent.capability(name=uniq("add"))
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    @agent.capability(name=uniq("count"))
    async def count(n: int) -> AsyncIterator[str]:
        for i in range(n):
            yield str(i)

    async def main() -> None:
        async with agent, capmesh.AsyncClient(mesh.b.data_dir) as b:
            for cap in agent.ids.values():
                await asyncio.to_thread(sees, mesh.b, cap, mesh.a.peer_id)
            assert (await b.call(agent.id_of(add), {"a": 2, "b": 3})).output == 5
            accepted = await b.start_call(agent.id_of(count), {"n": 3})
            chunks = [e.data async for e in b.call_events(accepted.call_id) if e.event == "progress"]
            assert chunks == [b"0", b"1", b"2"]
            assert (await b.wait_call(accepted.call_id)).stream_text == "012"
            found = await b.find(agent.id_of(add), timeout_ms=5000)
            assert mesh.a.peer_id in [h.provider for h in found.hits]
            async with await b.open_session("async-caller", ttl_secs=30) as session:
                assert (await session.client.call(agent.id_of(add), {"a": 1, "b": 1})).output == 2
        assert agent.session is None

    asyncio.run(main())


def test_pings_keep_the_agent_s_session_alive_past_its_lifetime(
    mesh: Mesh, agents: list[capmesh.Agent], uniq: Callable[[str], str]
) -> None:
    agent = capmesh.Agent("short-lived", mesh.a.data_dir, ttl_secs=5)

    @agent.capability(name=uniq("still"))
    def still() -> str:
        return "here"

    ids = serve(mesh.a, agents, agent, mesh.b)
    assert agent.session is not None
    first = agent.session
    # Wait on the clock (not for an event): past twice the session's lifetime.
    wait_for(
        "the lifetime and more", lambda: time.time() * 1000 > first.created_ms + 8000, timeout=30, every=0.5
    )
    with mesh.a.client() as a:
        now = a.session(first.id)
        assert now.expires_ms > first.expires_ms and now.runtime_attached
    with mesh.b.client() as b:
        assert b.call(ids[uniq("still")], {}).output == "here"


def test_a_dropped_socket_reconnects_to_the_same_session_within_the_grace_period(
    mesh: Mesh, agents: list[capmesh.Agent], uniq: Callable[[str], str]
) -> None:
    agent = capmesh.Agent("flaky", mesh.a.data_dir)

    @agent.capability(name=uniq("ok"))
    def ok() -> str:
        return "ok"

    ids = serve(mesh.a, agents, agent, mesh.b)
    assert agent.session is not None and agent._thread_loop is not None
    session, old = agent.session.id, agent._ws
    assert old is not None
    with mesh.a.client() as a:
        advert = a.session(session).capabilities[0].advert_id
    # Cut the connection under the agent, as a network fault would.
    agent._thread_loop.call_soon_threadsafe(old.transport.abort)
    wait_for("a new socket", lambda: agent._ws is not None and agent._ws is not old)
    with mesh.a.client() as a:

        def reattached() -> capmesh.SessionInfo | None:
            info = a.session(session)
            return info if info.runtime_attached else None

        info = wait_for("the runtime attached again", reattached)
        # The same session still serves the same advert: nothing was announced again.
        assert [c.advert_id for c in info.capabilities] == [advert]
    with mesh.b.client() as b:
        assert b.call(ids[uniq("ok")], {}).output == "ok"


def test_the_agent_serves_again_after_its_node_restarts(
    fresh_nodes: Callable[[str], Node], agents: list[capmesh.Agent], uniq: Callable[[str], str]
) -> None:
    a, b = fresh_nodes("a"), fresh_nodes("b")
    a.start()
    b.start("--bootstrap", a.p2p_addr())
    connected(a, b)
    agent = capmesh.Agent("survivor", a.data_dir)
    calls = []

    @agent.capability(name=uniq("hello"))
    def hello(name: str) -> str:
        calls.append(name)
        return f"hello {name}"

    cap = serve(a, agents, agent, b)[uniq("hello")]
    assert agent.session is not None
    before = agent.session.id
    with b.client() as cb:
        assert cb.call(cap, {"name": "one"}).output == "hello one"

    # A clean stop ends every session; the agent waits for the node, then opens a new session
    # (reading api.addr and api.token again) and announces again.
    assert a.stop() == 0
    a.start("--bootstrap", b.p2p_addr())
    with a.client() as ca:
        session = wait_for(
            "a new session serving the capability",
            lambda: next((s for s in ca.sessions() if s.name == "survivor" and s.capabilities), None),
        )
        assert session.id != before and [c.capability for c in session.capabilities] == [cap]
        assert cap in ca.status().published
    connected(a, b)
    with b.client() as cb:
        result = wait_for("a call served again", lambda: _try_call(cb, cap, {"name": "two"}))
        assert result.output == "hello two" and result.provider == a.peer_id
    assert calls[0] == "one" and calls[-1] == "two"


def _try_call(client: capmesh.Client, cap: str, args: object) -> capmesh.CallResult | None:
    try:
        return client.call(cap, args, deadline_ms=10_000)
    except (capmesh.NotFound, capmesh.CallFailed, capmesh.Timeout):
        return None
