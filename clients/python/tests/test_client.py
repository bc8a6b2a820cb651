"""The client against real nodes: finding the node, status, sessions, publishing and finding,
attestations, receipts exported and verified."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

import capmesh
from conftest import Mesh
from harness import BIN, sees, wait_for


def test_the_client_finds_the_node_from_its_data_directory(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer_id = mesh.a.cli("id").stdout.strip()
    with capmesh.Client(mesh.a.data_dir) as a:
        status = a.status()
        assert status.peer_id == peer_id and status.connected_peers >= 1
        assert status.listen_addrs and status.uptime_ms > 0
        addr = a.addr
        assert addr == (mesh.a.data_dir / "api.addr").read_text().strip()
    monkeypatch.setenv("CAPMESH_DATA_DIR", str(mesh.b.data_dir))
    with capmesh.Client() as b:
        peers = {p.peer_id: p for p in b.peers()}
        assert peers[peer_id].connected and peers[peer_id].connection == "direct"
    token = (mesh.a.data_dir / "api.token").read_text().strip()
    with capmesh.Client(addr=addr, token=token) as direct:
        assert direct.status().peer_id == peer_id
    with capmesh.Client(addr=addr, token="0" * 64) as wrong, pytest.raises(capmesh.Unauthorized) as e:
        wrong.status()
    assert e.value.status == 401 and "api.token" in e.value.message


def test_a_node_that_is_gone_is_unreachable(tmp_path: Path) -> None:
    # api.addr left behind by a crash: nothing listens there any more.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "api.token").write_text("ab" * 32 + "\n")
    (tmp_path / "api.addr").write_text(f"127.0.0.1:{port}\n")
    with capmesh.Client(tmp_path) as c, pytest.raises(capmesh.Unreachable) as e:
        c.status()
    assert str(tmp_path) in str(e.value)


def test_sessions_open_heartbeat_list_and_end(mesh: Mesh) -> None:
    with mesh.a.client() as a:
        session = a.open_session("planner", metadata={"model": "m1", "owner": "alice"}, ttl_secs=30)
        assert (session.info.name, session.info.ttl_secs) == ("planner", 30)
        assert session.info.metadata == {"model": "m1", "owner": "alice"}
        assert len(session.token) == 64 and not session.info.runtime_attached
        assert session.id in [s.id for s in a.sessions()]
        before = session.info.expires_ms

        def extended() -> capmesh.SessionInfo | None:
            info = session.heartbeat()
            return info if info.expires_ms > before else None

        after = wait_for("a heartbeat that extends", extended)
        assert a.session(session.id).expires_ms == after.expires_ms
        # The session's token: its own routes only.
        assert session.client.status().peer_id == a.status().peer_id
        with pytest.raises(capmesh.Denied) as denied:
            session.client.peers()
        assert denied.value.status == 403
        with pytest.raises(capmesh.Denied):
            session.client.sessions()
        ended = session.end()
        assert ended is not None and ended.id == session.id
        assert session.id not in [s.id for s in a.sessions()]
        with pytest.raises(capmesh.NotFound):
            a.session(session.id)
        assert session.end() is None  # already ended
        with capmesh.Client(addr=a.addr, token=session.token) as dead, pytest.raises(capmesh.Unauthorized):
            dead.status()
        # Out of bounds: a typed error, nothing opened.
        with pytest.raises(capmesh.BadRequest):
            a.open_session("x", ttl_secs=1)
        # keep_alive and the context manager.
        with a.open_session("beating", ttl_secs=5) as beating:
            beating.keep_alive(interval=1)
            first = beating.info.expires_ms
            wait_for("heartbeats from the thread", lambda: a.session(beating.id).expires_ms > first)
        assert beating.id not in [s.id for s in a.sessions()]


def test_publish_find_query_and_retire(mesh: Mesh, uniq: Callable[[str], str], tmp_path: Path) -> None:
    contract_file = tmp_path / "contract.json"
    contract_file.write_text(mesh.a.cli("cap", "new", uniq("listed")).stdout)
    contract = json.loads(contract_file.read_text())
    with mesh.a.client() as a, mesh.b.client() as b:
        # Nothing on A serves it: refused unless announced only.
        with pytest.raises(capmesh.Conflict) as e:
            a.publish(contract)
        assert "announce_only" in e.value.message
        published = a.publish(contract, price=(3, "credit"), announce_only=True)
        cap = published.capability
        assert cap == mesh.a.cli("cap", "id", str(contract_file)).stdout.strip()
        sees(mesh.b, cap, mesh.a.peer_id)
        page = b.query(name_prefix=uniq("listed"))
        (hit,) = page.hits
        assert (hit.capability, hit.provider, hit.price.amount, hit.price.unit) == (
            cap,
            mesh.a.peer_id,
            3,
            "credit",
        )
        assert b.query(name_prefix=uniq("listed"), max_price=(2, "credit")).hits == []
        found = b.find(cap, timeout_ms=5000)
        assert mesh.a.peer_id in [h.provider for h in found.hits] and found.done.error is None
        assert found.done.hits == len(found.hits)
        items = list(b.find_iter(cap, limit=1))
        assert isinstance(items[0], capmesh.FindHit) and isinstance(items[-1], capmesh.FindDone)
        info = b.contract(cap)
        assert info.contract == contract and info.capability == cap
        retired = a.retire(cap)
        assert retired.capability == cap and retired.seq > published.seq
        sees(mesh.b, cap, n=0)
        with pytest.raises(capmesh.NotFound):
            a.retire(cap)


def test_attestations_sign_and_filter_providers(mesh: Mesh, uniq: Callable[[str], str]) -> None:
    contract = json.loads(mesh.a.cli("cap", "new", uniq("vouched")).stdout)
    with mesh.a.client() as a, mesh.b.client() as b:
        cap = a.publish(contract, announce_only=True).capability
        sees(mesh.b, cap, mesh.a.peer_id)
        issuer = b.status().peer_id
        assert b.query(capability=cap, claim="org:test/vetted", issuer=issuer).hits == []
        attested = b.attest(mesh.a.peer_id, "org:test/vetted")
        payload = attested.attestation["payload"]
        assert payload["issuer"] == issuer and payload["subject"] == {"peer": mesh.a.peer_id}
        assert payload["claim"] == "org:test/vetted" and attested.id.startswith("b")
        hits = b.query(capability=cap, claim="org:test/vetted", issuer=issuer).hits
        assert [h.provider for h in hits] == [mesh.a.peer_id]
        listed = b.attestations(subject=mesh.a.peer_id, claim="org:test/vetted", issuer=issuer)
        assert [x.id for x in listed] == [attested.id]
        assert b.attestations(issuer=mesh.a.peer_id) == []
        with pytest.raises(capmesh.BadRequest):
            b.attestations(subject="not a peer")
        with pytest.raises(capmesh.BadRequest):
            b.attest("not a peer", "member")
        with pytest.raises(capmesh.BadRequest):
            b.attest(mesh.a.peer_id, "Not A Claim")
        a.retire(cap)


def test_receipts_are_listed_exported_and_verified(
    mesh: Mesh, agents: list[capmesh.Agent], uniq: Callable[[str], str], tmp_path: Path
) -> None:
    agent = capmesh.Agent("ledger", mesh.a.data_dir)

    @agent.capability(name=uniq("inc"))
    def inc(n: int) -> int:
        return n + 1

    agents.append(agent)
    cap = agent.start()[uniq("inc")]
    sees(mesh.b, cap, mesh.a.peer_id)
    with mesh.b.client() as b:
        receipt_ids = [b.call(cap, {"n": n}).receipt_id for n in range(3)]
        entries = list(b.iter_receipts(page_size=2))
        assert [e.seq for e in entries] == list(range(len(entries)))
        mine = [e for e in entries if e.id in receipt_ids]
        assert len(mine) == 3 and all(e.kind == "Receipt" for e in mine)
        page = b.receipts(from_seq=0, limit=1)
        assert len(page.entries) == 1 and page.next == 1 and page.len >= len(entries)
        one = b.receipt(receipt_ids[0])
        assert one.countersignature is not None and one.countersignature.kind == "Countersignature"

        export = tmp_path / "ledger.ndjson"
        assert b.export_receipts(export) == len(entries)
        verdict = b.verify_receipts(export, capmesh_bin=BIN)
        assert verdict.ok, verdict.message
        assert verdict.entries == len(entries) and verdict.receipts is not None and verdict.receipts >= 3
        assert verdict.head == entries[-1].hash
        assert b.verify_receipts(capmesh_bin=BIN).ok

        # A tampered export: the chain breaks at the changed entry.
        lines = export.read_text().splitlines()
        doc = json.loads(lines[1])
        doc["hash"] = json.loads(lines[0])["hash"]
        lines[1] = json.dumps(doc)
        bad = tmp_path / "tampered.ndjson"
        bad.write_text("\n".join(lines) + "\n")
        broken = b.verify_receipts(bad, capmesh_bin=BIN)
        assert not broken.ok and "1" in broken.message, broken.message
        with pytest.raises(capmesh.CapmeshError):
            b.verify_receipts(tmp_path / "missing.ndjson", capmesh_bin=BIN)
