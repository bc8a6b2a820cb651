"""capmesh: the Python client of a capmesh node's local API.

- :class:`Client` / :class:`AsyncClient`: status, find, calls (blocking, asynchronous, their
  events), receipts, attestations, sessions. ``Client()`` finds the node from its data
  directory (``api.addr``, ``api.token``).
- :class:`Agent`: serves decorated Python functions as mesh capabilities through a session's
  runtime socket.
- Errors: every one is a :class:`CapmeshError`; the node's error answers are :class:`ApiError`
  subclasses named by their code (:class:`NotFound`, :class:`CallFailed`, …).

The API is specified in specs/api.md of the capmesh repository.
"""

from ._base import CapmeshError
from ._protocol import new_call_id, new_trace_id
from .agent import Agent, CallContext, Capability
from .aio import AsyncClient, AsyncSession
from .client import Client, Session
from .errors import (
    AnnounceError,
    ApiError,
    BadRequest,
    CallFailed,
    Cancelled,
    Conflict,
    Denied,
    FrameError,
    IncompleteStream,
    Internal,
    NotFound,
    NotRunning,
    RateLimited,
    RequestTimeout,
    RuntimeReplaced,
    Timeout,
    ToolError,
    TransportError,
    Unauthorized,
    Unavailable,
    Unreachable,
)
from .node import Endpoint, default_data_dir, read_endpoint, resolve_data_dir
from .schema import schema_of
from .types import (
    Attempt,
    Attested,
    Blocked,
    CallAccepted,
    CallEvent,
    CallFailure,
    CallResult,
    CallStatus,
    ContractInfo,
    DecodeError,
    ErrorInfo,
    FindDone,
    FindHit,
    FindResult,
    LedgerEntry,
    LedgerNote,
    LedgerPage,
    LedgerVerification,
    Limits,
    PeerInfo,
    Price,
    Published,
    QueryHit,
    QueryPage,
    ReceiptEntries,
    Retired,
    ServedCapability,
    SessionInfo,
    Status,
)

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AnnounceError",
    "ApiError",
    "AsyncClient",
    "AsyncSession",
    "Attempt",
    "Attested",
    "BadRequest",
    "Blocked",
    "CallAccepted",
    "CallContext",
    "CallEvent",
    "CallFailed",
    "CallFailure",
    "CallResult",
    "CallStatus",
    "Cancelled",
    "Capability",
    "CapmeshError",
    "Client",
    "Conflict",
    "ContractInfo",
    "DecodeError",
    "Denied",
    "Endpoint",
    "ErrorInfo",
    "FindDone",
    "FindHit",
    "FindResult",
    "FrameError",
    "IncompleteStream",
    "Internal",
    "LedgerEntry",
    "LedgerNote",
    "LedgerPage",
    "LedgerVerification",
    "Limits",
    "NotFound",
    "NotRunning",
    "PeerInfo",
    "Price",
    "Published",
    "QueryHit",
    "QueryPage",
    "RateLimited",
    "ReceiptEntries",
    "RequestTimeout",
    "Retired",
    "RuntimeReplaced",
    "ServedCapability",
    "Session",
    "SessionInfo",
    "Status",
    "Timeout",
    "ToolError",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "default_data_dir",
    "new_call_id",
    "new_trace_id",
    "read_endpoint",
    "resolve_data_dir",
    "schema_of",
]
