"""JSON Schemas (2020-12) from Python type hints, and the conversions both ways.

Supported: ``int``, ``float``, ``str``, ``bool``, ``None``, ``Any``; ``list[X]``, ``set[X]``,
``tuple[X, ...]`` and ``tuple[X, Y]``; ``dict[str, X]``; ``X | None`` and other unions;
``Literal[...]``; ``Enum`` subclasses; ``TypedDict`` and dataclass classes (objects whose
properties are their fields, no others allowed); pydantic models (their own schema); and
``Annotated[X, {...}]`` (the dict is merged into X's schema) or ``Annotated[X, "text"]`` (a
description). Anything else is a :class:`TypeError` naming the type: give the schema yourself.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union, get_args, get_origin

__all__ = ["schema_of", "from_json_value", "to_json_value", "JsonSchema"]

JsonSchema = dict[str, Any] | bool

_WRAPPERS: tuple[Any, ...] = tuple(
    w for w in (typing.Required, typing.NotRequired, getattr(typing, "ReadOnly", None)) if w is not None
)

_SIMPLE: dict[Any, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    type(None): "null",
}


def _strip(tp: Any) -> tuple[Any, list[Any]]:
    """The type without ``Annotated`` / ``Required`` / ``NotRequired``, and the annotations."""
    extras: list[Any] = []
    while True:
        origin = get_origin(tp)
        if origin is typing.Annotated:
            base, *meta = get_args(tp)
            extras.extend(meta)
            tp = base
        elif origin is not None and origin in _WRAPPERS:
            tp = get_args(tp)[0]
        else:
            return tp, extras


def _marked_required(hint: Any, default: bool) -> bool:
    """Whether a TypedDict key is required: ``Required[...]`` / ``NotRequired[...]`` say so
    (read from the hint itself, which also works under ``from __future__ import annotations``),
    else the class's ``__required_keys__``."""
    while True:
        origin = get_origin(hint)
        if origin is typing.NotRequired:
            return False
        if origin is typing.Required:
            return True
        if origin is typing.Annotated or (origin is not None and origin in _WRAPPERS):
            hint = get_args(hint)[0]
            continue
        return default


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and typing.is_typeddict(tp)


def _is_pydantic(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "model_json_schema") and hasattr(tp, "model_validate")


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj, include_extras=True)
    except NameError as e:
        name = getattr(obj, "__qualname__", repr(obj))
        raise TypeError(
            f"cannot resolve the type hints of {name} ({e}): define the types it names at module level"
        ) from None


def schema_of(tp: Any) -> JsonSchema:
    """The JSON Schema of values of the Python type ``tp``."""
    return _schema(tp, ())


def _schema(tp: Any, seen: tuple[Any, ...]) -> JsonSchema:
    tp, extras = _strip(tp)
    schema = _base_schema(tp, seen)
    for meta in extras:
        if isinstance(meta, Mapping):
            if not isinstance(schema, dict):
                schema = {}
            schema = {**schema, **meta}
        elif isinstance(meta, str):
            if not isinstance(schema, dict):
                schema = {}
            schema = {**schema, "description": meta}
    return schema


def _base_schema(tp: Any, seen: tuple[Any, ...]) -> JsonSchema:
    if tp is Any or tp is object or tp is inspect.Parameter.empty:
        return {}
    if tp is None or tp is type(None):
        return {"type": "null"}
    if tp in _SIMPLE:
        return {"type": _SIMPLE[tp]}
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Union or origin is types.UnionType:
        members = [_schema(a, seen) for a in args]
        simple = [
            m for m in members if isinstance(m, dict) and set(m) == {"type"} and isinstance(m["type"], str)
        ]
        if len(simple) == len(members):
            return {"type": [m["type"] for m in simple if isinstance(m, dict)]}
        return {"anyOf": members}
    if origin is typing.Literal:
        values = [v.value if isinstance(v, enum.Enum) else v for v in args]
        return {"const": values[0]} if len(values) == 1 else {"enum": values}
    if origin in (list, Sequence, Iterable) or tp in (list, Sequence):
        return {"type": "array", "items": _schema(args[0], seen)} if args else {"type": "array"}
    if origin in (set, frozenset) or tp in (set, frozenset):
        out: dict[str, Any] = {"type": "array", "uniqueItems": True}
        if args:
            out["items"] = _schema(args[0], seen)
        return out
    if origin is tuple or tp is tuple:
        if not args:
            return {"type": "array"}
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _schema(args[0], seen)}
        return {
            "type": "array",
            "prefixItems": [_schema(a, seen) for a in args],
            "items": False,
            "minItems": len(args),
            "maxItems": len(args),
        }
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if args:
            if _strip(args[0])[0] is not str:
                raise TypeError(f"{tp}: JSON object keys are strings; use dict[str, ...]")
            return {"type": "object", "additionalProperties": _schema(args[1], seen)}
        return {"type": "object"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = [m.value for m in tp]
        out = {"enum": values}
        kinds = {_SIMPLE.get(type(v)) for v in values}
        if len(kinds) == 1 and None not in kinds:
            out = {"type": kinds.pop(), "enum": values}
        return out
    if tp in seen:
        raise TypeError(f"{tp.__name__} refers to itself: give the schema yourself (input=/output=)")
    if _is_pydantic(tp):
        schema = tp.model_json_schema()
        return dict(schema) if isinstance(schema, Mapping) else {}
    if _is_typeddict(tp):
        hints = _hints(tp)
        keys = getattr(tp, "__required_keys__", set(hints))
        required = [k for k, v in hints.items() if _marked_required(v, k in keys)]
        props = {k: _schema(v, (*seen, tp)) for k, v in hints.items()}
        return _object(props, required, tp.__doc__)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = _hints(tp)
        props = {}
        required = []
        for f in dataclasses.fields(tp):
            if not f.init:
                continue
            prop = _schema(hints[f.name], (*seen, tp))
            if isinstance(prop, dict):
                extra = f.metadata.get("schema")
                if isinstance(extra, Mapping):
                    prop = {**prop, **extra}
                desc = f.metadata.get("description")
                if isinstance(desc, str):
                    prop = {**prop, "description": desc}
                if f.default is not dataclasses.MISSING:
                    default = _json_default(f.default)
                    if default is not _NO_DEFAULT:
                        prop = {**prop, "default": default}
            props[f.name] = prop
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
        doc = tp.__doc__ if tp.__doc__ and not tp.__doc__.startswith(f"{tp.__name__}(") else None
        return _object(props, required, doc)
    if tp is bytes or tp is bytearray:
        raise TypeError("bytes are not JSON: take or return str (or stream bytes from a generator)")
    raise TypeError(f"no JSON Schema for the type {tp!r}: give the schema yourself (input=/output=)")


def _object(props: dict[str, Any], required: list[str], doc: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    out["additionalProperties"] = False
    if doc:
        out["description"] = inspect.cleandoc(doc)
    return out


_NO_DEFAULT: Any = object()


def _json_default(value: Any) -> Any:
    try:
        converted = to_json_value(value)
        json.dumps(converted)
        return converted
    except (TypeError, ValueError):
        return _NO_DEFAULT


# ---- values ----------------------------------------------------------------------------------


def to_json_value(value: Any) -> Any:
    """A Python value as JSON data: dataclasses and pydantic models as objects, enums as their
    values, tuples and sets as arrays."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, enum.Enum):
        return to_json_value(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump") and not isinstance(value, type):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json_value(v) for v in value]
    raise TypeError(f"{type(value).__name__} is not JSON data")


def from_json_value(tp: Any, value: Any) -> Any:
    """JSON data (already checked against ``schema_of(tp)``) as a value of ``tp``: objects of
    dataclass types become instances, enums members, arrays tuples or sets where asked."""
    tp, _ = _strip(tp)
    if tp is Any or tp is inspect.Parameter.empty or value is None:
        return value
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Union or origin is types.UnionType:
        for member in args:
            if member is type(None):
                continue
            try:
                converted = from_json_value(member, value)
            except (TypeError, ValueError, KeyError):
                continue
            if _fits(member, converted):
                return converted
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin in (list, Sequence, Iterable) and args and isinstance(value, list):
        return [from_json_value(args[0], v) for v in value]
    if origin in (set, frozenset) and isinstance(value, list):
        items = [from_json_value(args[0], v) for v in value] if args else value
        return origin(items)
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_json_value(args[0], v) for v in value)
        return tuple(from_json_value(a, v) for a, v in zip(args, value, strict=False))
    if origin in (dict, Mapping) and len(args) == 2 and isinstance(value, dict):
        return {k: from_json_value(args[1], v) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if _is_pydantic(tp):
        return tp.model_validate(value)
    if _is_typeddict(tp) and isinstance(value, dict):
        hints = _hints(tp)
        return {k: from_json_value(hints[k], v) if k in hints else v for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise TypeError(f"{tp.__name__} is built from an object")
        hints = _hints(tp)
        kwargs = {
            f.name: from_json_value(hints[f.name], value[f.name])
            for f in dataclasses.fields(tp)
            if f.init and f.name in value
        }
        return tp(**kwargs)
    return value


def _fits(tp: Any, value: Any) -> bool:
    tp, _ = _strip(tp)
    base = get_origin(tp) or tp
    if base is typing.Literal:
        return value in get_args(tp)
    if isinstance(base, type):
        if base is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if base is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if _is_typeddict(base):
            return isinstance(value, dict)
        try:
            return isinstance(value, base)
        except TypeError:
            return True
    return True


# ---- functions -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Signature:
    """What :func:`function_schemas` learnt of a function."""

    input: JsonSchema
    output: JsonSchema
    params: dict[str, Any]
    """Parameter name → type hint, for the arguments' conversion."""
    context_param: str | None
    """The parameter that receives the call's context, if any."""
    var_keyword: bool
    streaming: bool


def function_schemas(fn: Callable[..., Any], context_type: type) -> Signature:
    """The input schema of ``fn``'s parameters (an object, one property each; those without a
    default are required) and the output schema of its return annotation."""
    sig = inspect.signature(fn)
    hints = _hints(fn)
    streaming = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
    props: dict[str, Any] = {}
    required: list[str] = []
    params: dict[str, Any] = {}
    context_param = None
    var_keyword = False
    for name, param in sig.parameters.items():
        hint = hints.get(name, inspect.Parameter.empty)
        if _strip(hint)[0] is context_type:
            context_param = name
            continue
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
            continue
        if param.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL):
            raise TypeError(
                f"{fn.__qualname__}: the parameter {name!r} cannot be given by name; arguments "
                "arrive as a JSON object, one keyword argument per property"
            )
        try:
            prop = _schema(hint, ())
        except TypeError as e:
            raise TypeError(f"{fn.__qualname__}, parameter {name!r}: {e}") from None
        if param.default is inspect.Parameter.empty:
            required.append(name)
        elif isinstance(prop, dict):
            default = _json_default(param.default)
            if default is not _NO_DEFAULT:
                prop = {**prop, "default": default}
        props[name] = prop
        params[name] = hint
    input_schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        input_schema["required"] = required
    input_schema["additionalProperties"] = bool(var_keyword)
    ret = hints.get("return", inspect.Parameter.empty)
    try:
        output = _stream_item_schema(ret) if streaming else _schema(ret, ())
    except TypeError as e:
        raise TypeError(f"{fn.__qualname__}, return value: {e}") from None
    return Signature(input_schema, output, params, context_param, var_keyword, streaming)


def _stream_item_schema(ret: Any) -> JsonSchema:
    """A streaming function's output schema: its chunks' (``Iterator[str]`` → a string).
    Chunks are not checked against it; it tells callers what to expect."""
    ret, _ = _strip(ret)
    args = get_args(ret)
    item = _strip(args[0])[0] if args else Any
    if item is str:
        return {"type": "string"}
    return {}
