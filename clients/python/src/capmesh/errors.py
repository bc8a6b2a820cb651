"""Exceptions. Every one the package raises is a :class:`CapmeshError`.

An error answer of the node (specs/api.md §5) is an :class:`ApiError`, of the subclass named by
its code (``capmesh.NotFound``, ``capmesh.CallFailed``, …): programs branch on the class or on
``code``; ``message`` is for people. A failed call's error also carries ``call``
(:class:`~capmesh.types.CallFailure`): the protocol's code and every attempt.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ._base import CapmeshError
from .types import CallFailure, DecodeError, ErrorInfo

__all__ = [
    "AnnounceError",
    "ApiError",
    "BadRequest",
    "CallFailed",
    "CapmeshError",
    "Cancelled",
    "Conflict",
    "DecodeError",
    "Denied",
    "FrameError",
    "IncompleteStream",
    "Internal",
    "NotFound",
    "NotRunning",
    "RateLimited",
    "RequestTimeout",
    "RuntimeReplaced",
    "ToolError",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "Timeout",
]


class NotRunning(CapmeshError):
    """No node runs for the data directory: it has no ``api.addr`` (specs/api.md §1)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        super().__init__(
            f"no capmesh node is running for {data_dir} (no api.addr); start one with "
            f"`capmesh --data-dir {data_dir} run`"
        )


class TransportError(CapmeshError):
    """The HTTP or WebSocket exchange with the node failed (not an answer of the node)."""


class Unreachable(TransportError):
    """Nothing answers at the node's address: the node stopped (or crashed, leaving
    ``api.addr`` behind)."""


class RequestTimeout(TransportError):
    """The client gave up waiting for the node's answer."""


class IncompleteStream(CapmeshError):
    """A find stream or a call's event stream ended without its last event: the node is
    stopping. ``last_id`` is the id of the last event received (``None`` if none), to resume
    from ``last_id + 1``."""

    def __init__(self, message: str, last_id: int | None = None) -> None:
        super().__init__(message)
        self.last_id = last_id


class ApiError(CapmeshError):
    """An error answer of the node: ``{"error": {"code", "message", "call"?}}``."""

    code: str
    message: str
    status: int
    call: CallFailure | None
    retry_after: float | None
    """Seconds to wait before retrying (``Retry-After``, or the call's ``retry_after_ms``)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        call: CallFailure | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status if status is not None else STATUS.get(code, 500)
        self.call = call
        if retry_after is None and call is not None and call.retry_after_ms is not None:
            retry_after = call.retry_after_ms / 1000
        self.retry_after = retry_after

    @staticmethod
    def of(info: ErrorInfo, *, status: int | None = None, retry_after: float | None = None) -> ApiError:
        """The exception of an error object (an error body's ``error``, a ``failed`` event's)."""
        cls = CODES.get(info.code, ApiError)
        return cls(info.code, info.message, status=status, call=info.call, retry_after=retry_after)

    @staticmethod
    def from_response(status: int, body: bytes, headers: Any = None) -> ApiError:
        """The exception of an HTTP error answer. A body that is not the API's error body (for
        example from something else listening on the port) is classified by its status."""
        retry_after: float | None = None
        if headers is not None:
            value = headers.get("retry-after")
            if value is not None:
                try:
                    retry_after = float(value)
                except ValueError:
                    retry_after = None
                if retry_after is not None and not math.isfinite(retry_after):
                    retry_after = None
        try:
            doc = json.loads(body)
            info = ErrorInfo.from_json(doc["error"])
        except (ValueError, KeyError, TypeError, DecodeError):
            code = code_of_status(status)
            text = body.decode("utf-8", "replace").strip()[:500]
            message = f"HTTP {status}" + (f": {text}" if text else "")
            return CODES[code](code, message, status=status, retry_after=retry_after)
        return ApiError.of(info, status=status, retry_after=retry_after)


class Unauthorized(ApiError):
    """401: no token, or not the node's current token nor a live session's (the node's token
    changes when it restarts; a session's dies with its session)."""


class BadRequest(ApiError):
    """400: a malformed request, or arguments the contract refuses (``call.code`` is
    ``InvalidArgs`` then)."""


class Denied(ApiError):
    """403: a policy refused the call, no price was acceptable, or a session's token was used
    outside its routes."""


class NotFound(ApiError):
    """404: no such endpoint or object (capability without providers, receipt, session, call)."""


class Conflict(ApiError):
    """409: the request contradicts the node's state (a call id in flight, publishing what
    nothing serves without ``announce_only``)."""


class RateLimited(ApiError):
    """429: too many calls or sessions; retry after :attr:`retry_after` when set."""


class Cancelled(ApiError):
    """499: the call was cancelled."""


class Internal(ApiError):
    """500: a failure inside the node; its log says more."""


class CallFailed(ApiError):
    """502: providers were asked, but none returned a usable result; ``call.attempts`` says
    why, provider by provider."""


class Unavailable(ApiError):
    """503: the node cannot do it now (starting, stopping, no peers); retry later."""


class Timeout(ApiError):
    """504: the node gave up waiting for the network, or the call's deadline passed."""


CODES: dict[str, type[ApiError]] = {
    "Unauthorized": Unauthorized,
    "BadRequest": BadRequest,
    "Denied": Denied,
    "NotFound": NotFound,
    "Conflict": Conflict,
    "RateLimited": RateLimited,
    "Cancelled": Cancelled,
    "Internal": Internal,
    "CallFailed": CallFailed,
    "Unavailable": Unavailable,
    "Timeout": Timeout,
}

STATUS: dict[str, int] = {
    "Unauthorized": 401,
    "BadRequest": 400,
    "Denied": 403,
    "NotFound": 404,
    "Conflict": 409,
    "RateLimited": 429,
    "Cancelled": 499,
    "Internal": 500,
    "CallFailed": 502,
    "Unavailable": 503,
    "Timeout": 504,
}


def code_of_status(status: int) -> str:
    """The code of an HTTP status, for error bodies that are not the API's (specs/api.md §5)."""
    for code, s in STATUS.items():
        if s == status:
            return code
    if status == 405:
        return "NotFound"
    if status == 408:
        return "Timeout"
    if 400 <= status < 500:
        return "BadRequest"
    return "Internal"


# ---- the runtime socket ------------------------------------------------------------------------


class FrameError(CapmeshError):
    """The node refused a frame of the agent's runtime socket (specs/api.md §4.3): ``code`` is
    ``BadFrame``, ``TooLarge``, ``RateLimited``, ``BadContract``, ``UnknownCall``, ``NotServed``,
    ``TooMany``, ``OutputInvalid``, ``WrongAnswer`` or ``Unavailable``."""

    def __init__(self, code: str, message: str, call_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.call_id = call_id


class AnnounceError(FrameError):
    """The node would not serve an announced capability (``BadContract``, ``TooMany``,
    ``Unavailable``). ``served`` lists the capability ids it did serve from the same
    announcement."""

    def __init__(
        self, code: str, message: str, call_id: str | None = None, served: list[str] | None = None
    ) -> None:
        super().__init__(code, message, call_id)
        self.served = served or []


class RuntimeReplaced(CapmeshError):
    """Another runtime socket was attached to the agent's session and replaced this one."""


class ToolError(Exception):
    """Raise it from a served function to fail the call with exactly this message (the caller
    sees an attempt with code ``Failed`` and ``the capability failed: <message>``). Any other
    exception fails the call too, with ``<ExceptionType>: <message>``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
