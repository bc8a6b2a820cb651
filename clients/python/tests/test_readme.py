"""The README's examples, run as an agent developer would paste them: the serving script in one
process on node A's data directory, the caller in another on node B's."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from harness import Node, T, connected, sees, wait_for

README = Path(__file__).resolve().parents[1] / "README.md"


def block(tag: str) -> str:
    """The python block after ``<!-- tested: TAG -->``."""
    m = re.search(rf"<!-- tested: {tag} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert m, f"no tested {tag} block in the README"
    return m.group(1)


def env_for(node: Node) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CAPMESH_DATA_DIR"}
    env["CAPMESH_DATA_DIR"] = str(node.data_dir)
    return env


def test_the_readme_examples_serve_and_call_across_two_nodes(fresh_nodes: Callable[[str], Node]) -> None:
    a, b = fresh_nodes("a"), fresh_nodes("b")
    a.start()
    b.start("--bootstrap", a.p2p_addr())
    connected(a, b)
    server = subprocess.Popen(
        [sys.executable, "-c", block("serve")],
        env=env_for(a),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert server.stderr is not None
        for line in server.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:

        def announced() -> str | None:
            assert server.poll() is None, "".join(lines)
            found = [m.group(1) for m in map(re.compile(r"serving shout as (\S+)").search, lines) if m]
            return found[0] if found else None

        cap = wait_for("the agent's capability id on stderr", announced)
        sees(b, cap, a.peer_id)
        caller = subprocess.run(
            [sys.executable, "-c", block("call")], env=env_for(b), capture_output=True, text=True, timeout=T
        )
        assert caller.returncode == 0, caller.stderr
        output, _, provider, _, receipt = caller.stdout.split()
        assert (output, provider) == ("HELLOHELLO", a.peer_id) and receipt.startswith("bafyr4i")

        # ctrl-c: the session ends, the advert is retired on every replica.
        server.send_signal(signal.SIGINT)
        assert server.wait(T) == 0, "".join(lines)
        with a.client() as ca:
            assert ca.sessions() == []
        sees(b, cap, n=0)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(T)
        reader.join(T)
