"""Fixtures: a mesh of two real nodes (A serves, B calls), agents stopped at teardown."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import capmesh
from harness import BIN, Node, connected


def pytest_configure(config: pytest.Config) -> None:
    if not BIN.is_file():
        raise pytest.UsageError(
            f"no capmesh binary at {BIN}: build it with `cargo build -p capmesh`, or set CAPMESH_BIN"
        )


@dataclass
class Mesh:
    a: Node
    """The provider's node: agents attach here."""
    b: Node
    """The caller's node, bootstrapped to A."""


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("mesh")
    a = Node(root / "a", "a")
    b = Node(root / "b", "b")
    try:
        a.start()
        b.start("--bootstrap", a.p2p_addr())
        connected(a, b)
        yield Mesh(a, b)
    finally:
        for node in (b, a):
            try:
                node.stop()
            finally:
                node.kill()


@pytest.fixture
def fresh_nodes(tmp_path: Path) -> Iterator[Callable[[str], Node]]:
    """Nodes of the test's own (for tests that stop or restart them); all killed at teardown."""
    made: list[Node] = []

    def make(name: str) -> Node:
        node = Node(tmp_path / name, name)
        made.append(node)
        return node

    yield make
    for node in made:
        try:
            node.stop()
        finally:
            node.kill()


_names = itertools.count()


@pytest.fixture
def uniq() -> Callable[[str], str]:
    """A capability name no other test uses (a node serves a contract once)."""
    n = next(_names)
    return lambda base: f"{base}.t{n}"


@pytest.fixture
def agents() -> Iterator[list[capmesh.Agent]]:
    """Agents a test makes; each is stopped at teardown."""
    made: list[capmesh.Agent] = []
    yield made
    for agent in made:
        agent.stop()
