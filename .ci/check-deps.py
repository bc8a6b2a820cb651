#!/usr/bin/env python3
"""Checks the invariants of ARCHITECTURE.md's code map with `cargo metadata`: which crate may
depend on what. Exit 1 with the offending edges."""
import json, subprocess, sys

# crate -> dependencies it must never have (directly).
FORBIDDEN = {
    "capmesh-types": {"capmesh-wire", "capmesh", "ciborium", "serde", "tokio", "libp2p", "sled"},
    "capmesh-wire": {"capmesh", "tokio", "libp2p", "sled"},
    "capmesh-contract": {"capmesh", "capmesh-store", "tokio", "libp2p", "sled"},
    "capmesh-store": {"capmesh", "libp2p"},
}

meta = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked"]))
bad = []
for pkg in meta["packages"]:
    forbidden = FORBIDDEN.get(pkg["name"], set())
    for dep in pkg["dependencies"]:
        if dep["kind"] is None and dep["name"] in forbidden:
            bad.append(f'{pkg["name"]} -> {dep["name"]}')
if bad:
    print("forbidden dependencies (see ARCHITECTURE.md):\n  " + "\n  ".join(bad))
    sys.exit(1)
print("ok:", ", ".join(sorted(FORBIDDEN)))
