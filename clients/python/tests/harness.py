"""Real ``capmesh run`` processes for the tests: temporary data directories, loopback, port 0.

The binary is ``$CAPMESH_BIN``, else ``target/debug/capmesh`` of the repository. Every wait is
for a condition, bounded by :data:`T` (a guard against hangs, never a measurement).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import capmesh

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("CAPMESH_BIN") or REPO / "target" / "debug" / "capmesh")

T = 60.0
"""Bound on anything awaited in a test."""

R = TypeVar("R")


def wait_for(what: str, check: Callable[[], R | None], timeout: float = T, every: float = 0.05) -> R:
    """Polls ``check`` until it returns something other than ``None`` / ``False``; fails with
    what it saw last after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
        except AssertionError as e:
            value, last = None, e
        if value is not None and value is not False:
            return value
        if value is not None:
            last = value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")
        time.sleep(every)


class Node:
    """One ``capmesh run`` process on its own data directory."""

    def __init__(self, data_dir: Path, name: str) -> None:
        self.data_dir = data_dir
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{name}.log"
        data_dir.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("CAPMESH_DATA_DIR", "RUST_LOG")}
        env["RUST_LOG"] = "info"
        return env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``capmesh --data-dir DIR args…`` to its end."""
        run = subprocess.run(
            [str(BIN), "--data-dir", str(self.data_dir), *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=T,
        )
        if check and run.returncode != 0:
            raise AssertionError(f"capmesh {' '.join(args)} failed ({run.returncode}): {run.stderr}")
        return run

    def start(self, *extra: str) -> Node:
        """Starts the node and waits until its API answers (``api.addr`` written and
        ``/v1/status`` answered)."""
        assert self.proc is None, "already running"
        addr = self.data_dir / "api.addr"
        if addr.exists():
            addr.unlink()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                str(BIN),
                "--data-dir",
                str(self.data_dir),
                "run",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--announce-listen-addrs",
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=self.env(),
            start_new_session=True,
        )
        log.close()

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited ({self.proc.returncode}):\n{self.log()}")
            if not addr.exists():
                return False
            try:
                with self.client() as c:
                    c.status()
                return True
            except (capmesh.Unreachable, capmesh.NotRunning):
                return False

        wait_for(f"node {self.name}'s API", up)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def client(self) -> capmesh.Client:
        return capmesh.Client(self.data_dir)

    def aclient(self) -> capmesh.AsyncClient:
        return capmesh.AsyncClient(self.data_dir)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> capmesh.Status:
        with self.client() as c:
            return c.status()

    @property
    def peer_id(self) -> str:
        return self.status().peer_id

    def p2p_addr(self) -> str:
        s = self.status()
        return f"{s.listen_addrs[0]}/p2p/{s.peer_id}"

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (a clean stop: sessions end, adverts are retired), then SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self._kill(proc)

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            self._kill(proc)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> int | None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return proc.wait(T)


def connected(a: Node, b: Node) -> None:
    """Waits until ``a`` and ``b`` each have the other as a connected peer."""
    pa, pb = a.peer_id, b.peer_id

    def both() -> bool:
        with a.client() as ca, b.client() as cb:
            return any(p.peer_id == pb and p.connected for p in ca.peers()) and any(
                p.peer_id == pa and p.connected for p in cb.peers()
            )

    wait_for(f"{a.name} and {b.name} connected", both)


def sees(node: Node, capability: str, provider: str | None = None, n: int = 1) -> None:
    """Waits until ``node``'s replica holds ``n`` live adverts of ``capability`` (of
    ``provider``, if given): gossip reached it."""

    def count() -> bool:
        with node.client() as c:
            hits = c.query(capability=capability).hits
        have = [h.provider for h in hits if provider is None or h.provider == provider]
        assert len(have) == n, f"providers {have}"
        return True

    wait_for(f"{n} advert(s) of {capability} on {node.name}", count)
