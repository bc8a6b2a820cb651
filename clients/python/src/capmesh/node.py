"""Where the node is: its data directory, and the ``api.addr`` / ``api.token`` files in it.

The data directory is chosen as the ``capmesh`` command line chooses it: an explicit path, else
the environment variable ``CAPMESH_DATA_DIR``, else the platform's data directory joined with
``capmesh`` (on Linux ``$XDG_DATA_HOME/capmesh`` if that is an absolute path, else
``~/.local/share/capmesh``; on macOS ``~/Library/Application Support/capmesh``; on Windows
``%APPDATA%\\capmesh``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ._base import CapmeshError
from .errors import NotRunning

__all__ = ["ADDR_FILE", "TOKEN_FILE", "Endpoint", "default_data_dir", "resolve_data_dir", "read_endpoint"]

ADDR_FILE = "api.addr"
TOKEN_FILE = "api.token"
ENV = "CAPMESH_DATA_DIR"


def default_data_dir() -> Path:
    """The platform's default data directory of a node (as the node computes it)."""
    if sys.platform == "win32":
        appdata = os.environ.get("APPDATA")
        if not appdata:
            raise CapmeshError("no platform data directory; pass a data directory or set CAPMESH_DATA_DIR")
        return Path(appdata) / "capmesh"
    home = os.environ.get("HOME") or str(Path.home())
    if sys.platform == "darwin":
        return Path(home) / "Library" / "Application Support" / "capmesh"
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "capmesh"
    return Path(home) / ".local" / "share" / "capmesh"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``data_dir`` if given, else ``$CAPMESH_DATA_DIR``, else :func:`default_data_dir`.

    A ``CAPMESH_DATA_DIR`` that is set but empty is an error, as it is for the command line."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(ENV)
    if env is not None:
        if env == "":
            raise CapmeshError(f"{ENV} is set but empty: give it a directory, or unset it")
        return Path(env)
    return default_data_dir()


@dataclass(frozen=True)
class Endpoint:
    """A node's API: ``addr`` (``IP:PORT``), its bearer ``token``, and the data directory they
    were read from."""

    addr: str
    token: str
    data_dir: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.addr}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.addr}"


def read_endpoint(data_dir: str | os.PathLike[str] | None = None) -> Endpoint:
    """Reads ``api.addr`` and ``api.token`` of the node running for the data directory.

    :class:`NotRunning` when there is no ``api.addr``. (Whether the node still runs shows at the
    first request: :class:`~capmesh.Unreachable`.) The node writes ``api.token`` before
    ``api.addr``, so when the address is there the token is complete."""
    root = resolve_data_dir(data_dir)
    try:
        addr = (root / ADDR_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise NotRunning(root) from None
    except OSError as e:
        raise CapmeshError(f"cannot read {root / ADDR_FILE}: {e}") from e
    if not addr or ":" not in addr:
        raise CapmeshError(f"{root / ADDR_FILE} holds {addr!r}, not IP:PORT; remove it and restart the node")
    try:
        token = (root / TOKEN_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        # Removed between the two reads: the node is stopping.
        raise NotRunning(root) from None
    except OSError as e:
        raise CapmeshError(f"cannot read {root / TOKEN_FILE}: {e}") from e
    return Endpoint(addr=addr, token=token, data_dir=root)
