"""Pieces that need no node: schemas from type hints, the data directory, error bodies, SSE."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired, TypedDict

import pytest

import capmesh
from capmesh import _protocol as p
from capmesh.agent import Capability
from capmesh.schema import from_json_value, schema_of, to_json_value


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(TypedDict):
    x: float
    y: float
    label: NotRequired[str]


@dataclass
class Box:
    """An axis-aligned box."""

    corner: Point
    size: list[float]
    color: Color = Color.RED
    tags: dict[str, int] = field(default_factory=dict)


@dataclass
class Tree:
    children: list[Tree]


def test_schemas_of_type_hints() -> None:
    assert schema_of(int) == {"type": "integer"}
    assert schema_of(float) == {"type": "number"}
    assert schema_of(str) == {"type": "string"}
    assert schema_of(bool) == {"type": "boolean"}
    assert schema_of(list[int]) == {"type": "array", "items": {"type": "integer"}}
    assert schema_of(dict[str, bool]) == {"type": "object", "additionalProperties": {"type": "boolean"}}
    assert schema_of(dict) == {"type": "object"}
    assert schema_of(str | None) == {"type": ["string", "null"]}
    assert schema_of(Literal["a", "b"]) == {"enum": ["a", "b"]}
    assert schema_of(tuple[int, str]) == {
        "type": "array",
        "prefixItems": [{"type": "integer"}, {"type": "string"}],
        "items": False,
        "minItems": 2,
        "maxItems": 2,
    }
    assert schema_of(Annotated[int, {"minimum": 1}, "how many"]) == {
        "type": "integer",
        "minimum": 1,
        "description": "how many",
    }
    assert schema_of(Point) == {
        "type": "object",
        "properties": {"x": {"type": "number"}, "y": {"type": "number"}, "label": {"type": "string"}},
        "required": ["x", "y"],
        "additionalProperties": False,
    }
    box = schema_of(Box)
    assert isinstance(box, dict)
    assert box["required"] == ["corner", "size"]
    assert box["properties"]["color"] == {"type": "string", "enum": ["red", "blue"], "default": "red"}
    assert box["properties"]["corner"] == schema_of(Point)
    assert box["additionalProperties"] is False
    assert box["description"] == "An axis-aligned box."
    with pytest.raises(TypeError, match="bytes"):
        schema_of(bytes)
    with pytest.raises(TypeError, match="refers to itself"):
        schema_of(Tree)


def test_a_function_s_contract_comes_from_its_signature_and_docstring() -> None:
    def measure(box: Box, scale: float = 1.0, *, unit: Literal["cm", "in"] = "cm") -> dict[str, float]:
        """Measures a box."""
        return {}

    cap = Capability(measure, tags=["geometry"], read_only=True)
    c = cap.contract
    assert c["name"] == "measure" and c["description"] == "Measures a box." and c["tags"] == ["geometry"]
    assert c["input"]["required"] == ["box"]
    assert c["input"]["properties"]["scale"] == {"type": "number", "default": 1.0}
    assert c["input"]["properties"]["unit"] == {"enum": ["cm", "in"], "default": "cm"}
    assert c["input"]["additionalProperties"] is False
    assert c["output"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert (c["read_only"], c["idempotent"], c["streaming"]) == (True, False, False)

    # The arguments' JSON becomes the parameters' types.
    ctx = capmesh.CallContext(call_id="c1", capability="b", deadline_ms=0, trace=None)
    _, kwargs = cap.bind(
        {"box": {"corner": {"x": 1, "y": 2}, "size": [1, 2], "color": "blue"}, "scale": 2}, ctx
    )
    assert kwargs["box"] == Box(corner={"x": 1.0, "y": 2.0}, size=[1.0, 2.0], color=Color.BLUE)
    assert isinstance(kwargs["scale"], float)

    def stream(n: int, ctx: capmesh.CallContext) -> Any:
        yield "x"

    s = Capability(stream, name="my.stream")
    assert s.streaming and s.contract["streaming"] and "ctx" not in s.contract["input"]["properties"]
    with pytest.raises(ValueError, match="capability name"):
        Capability(measure, name="Measure")

    def positional(x: int, /) -> int:
        return x

    with pytest.raises(TypeError, match="by name"):
        Capability(positional)


def test_outputs_become_json() -> None:
    assert to_json_value(Box(corner={"x": 1, "y": 2}, size=[3.0])) == {
        "corner": {"x": 1, "y": 2},
        "size": [3.0],
        "color": "red",
        "tags": {},
    }
    assert to_json_value((1, Color.BLUE)) == [1, "blue"]
    assert from_json_value(tuple[int, Color], [1, "blue"]) == (1, Color.BLUE)
    assert from_json_value(Box | None, None) is None


def test_the_data_directory_is_found_as_the_cli_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAPMESH_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert capmesh.resolve_data_dir() == tmp_path / "home" / ".local" / "share" / "capmesh"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert capmesh.resolve_data_dir() == tmp_path / "home" / ".local" / "share" / "capmesh"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert capmesh.resolve_data_dir() == tmp_path / "xdg" / "capmesh"
    monkeypatch.setenv("CAPMESH_DATA_DIR", str(tmp_path / "env"))
    assert capmesh.resolve_data_dir() == tmp_path / "env"
    assert capmesh.resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.setenv("CAPMESH_DATA_DIR", "")
    with pytest.raises(capmesh.CapmeshError, match="empty"):
        capmesh.resolve_data_dir()

    # No api.addr: no node runs there.
    with pytest.raises(capmesh.NotRunning) as e:
        capmesh.Client(tmp_path / "empty")
    assert "capmesh --data-dir" in str(e.value) and e.value.data_dir == tmp_path / "empty"


def test_error_bodies_become_typed_exceptions() -> None:
    failure = {
        "call_id": "AQEBAQEBAQEBAQEBAQEBAQ",
        "code": "Exhausted",
        "attempts": [
            {"provider": "12D3KooWK99V", "code": "RateLimited", "message": "10 a minute", "stage": "task"}
            | {"retry_after_ms": 2500}
        ],
        "retry_after_ms": 2500,
    }
    body = json.dumps({"error": {"code": "RateLimited", "message": "slow down", "call": failure}}).encode()
    e = capmesh.ApiError.from_response(429, body, {"retry-after": "3"})
    assert isinstance(e, capmesh.RateLimited)
    assert (e.code, e.message, e.status, e.retry_after) == ("RateLimited", "slow down", 429, 3.0)
    assert e.call is not None and e.call.code == "Exhausted" and e.call.attempts[0].retry_after_ms == 2500
    # Something else on the port: classified by its status (specs/api.md §5).
    for status, cls in [
        (404, capmesh.NotFound),
        (418, capmesh.BadRequest),
        (502, capmesh.CallFailed),
        (500, capmesh.Internal),
    ]:
        other = capmesh.ApiError.from_response(status, b"<html>nope</html>")
        assert type(other) is cls and other.status == status, (status, other)
    # A code this client does not know yet is still an ApiError.
    later = capmesh.ApiError.from_response(400, b'{"error": {"code": "Newfangled", "message": "m"}}')
    assert type(later) is capmesh.ApiError and later.code == "Newfangled"


def test_sse_messages_are_parsed_as_the_html_standard_says() -> None:
    r = p.EventReader()
    lines = [
        ": keep-alive",
        "",
        "id: 0",
        "event: providers",
        'data: {"event":"providers","providers":["12D3KooWA"]}',
        "",
        "id: 1",
        "event: progress",
        'data: {"event":"progress","seq":0,"data":"aGk"}\r',
        "\r",
        "id: 2",
        "event: cancelled",
        'data: {"event":"cancelled",',
        'data: "trace":"4bf92f3577b34da6a3ce929d0e0e4736"}',
        "",
    ]
    events = [e for e in (r.line(x) for x in lines) if e is not None]
    assert [(e.id, e.event) for e in events] == [(0, "providers"), (1, "progress"), (2, "cancelled")]
    assert events[0].providers == ["12D3KooWA"] and events[1].data == b"hi" and events[2].is_final
    r.finish()
    cut = p.EventReader()
    for x in lines[:6]:
        cut.line(x)
    with pytest.raises(capmesh.IncompleteStream) as e:
        cut.finish()
    assert e.value.last_id == 0


def test_traceparents_and_ids() -> None:
    tp = p.traceparent("4bf92f3577b34da6a3ce929d0e0e4736")
    version, trace, parent, flags = tp.split("-")
    assert (version, trace, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert len(parent) == 16 and parent != "0" * 16
    with pytest.raises(ValueError):
        p.traceparent("4BF92F3577B34DA6A3CE929D0E0E4736")
    assert len(capmesh.new_call_id()) == 22 and len(capmesh.new_trace_id()) == 32
