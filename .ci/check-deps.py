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
    # Only the net crate owns a swarm; it moves bytes and knows no records, replica or API.
    "capmesh-net": {"capmesh", "capmesh-wire", "capmesh-store", "capmesh-mesh", "capmesh-api", "sled"},
    # The registry protocol talks to libp2p only through capmesh-net, to sled only through the store.
    "capmesh-mesh": {"capmesh", "capmesh-api", "libp2p", "sled", "axum"},
    # The API knows neither the network nor the replica: the node implements its Backend.
    "capmesh-api": {"capmesh", "capmesh-net", "capmesh-mesh", "capmesh-store", "libp2p", "sled"},
    # Runtimes run a capability; they know neither the network nor the replica nor the market.
    "capmesh-exec": {"capmesh", "capmesh-net", "capmesh-mesh", "capmesh-store", "capmesh-market", "libp2p", "sled"},
    # Policy is pure rules over peers, claims and prices: no I/O beyond reading its own file.
    "capmesh-policy": {"capmesh", "capmesh-net", "capmesh-mesh", "capmesh-store", "capmesh-market", "capmesh-exec", "libp2p", "sled"},
    # Calls talk to the network through the mesh, to sled through the store, own no swarm.
    "capmesh-market": {"capmesh", "capmesh-api", "capmesh-net", "libp2p", "sled", "axum"},
    # Agents (sessions, attached runtimes, calls through the API) work through the market and
    # the API's types; they own no swarm and touch no replica.
    "capmesh-agents": {"capmesh", "capmesh-net", "capmesh-store", "libp2p", "sled", "axum"},
    # The MCP bridge reaches the node through the API client and the market, never the swarm or sled.
    "capmesh-mcp": {"capmesh", "capmesh-net", "capmesh-store", "libp2p", "sled"},
    # Testnets drive nodes as processes and through their API only; the in-process simulator
    # (testnet/src/sim: the net crate's Kademlia on libp2p's memory transport) and the run's
    # baseline (two bare capmesh-net services) need the net crate, nothing of the registry,
    # replica or market.
    "capmesh-testnet": {"capmesh", "capmesh-mesh", "capmesh-store", "capmesh-market", "sled"},
    # Fuzz target bodies: the parsers and checkers a peer or a client reaches, never the node,
    # the replica or a swarm of their own (libp2p comes only with capmesh-net's codec).
    "capmesh-fuzzing": {"capmesh", "capmesh-store", "capmesh-mesh", "capmesh-market", "capmesh-agents", "libp2p", "sled"},
    # Plans are pure: their format, parsing and checking; the node resolves and runs them.
    "capmesh-plan": {"capmesh", "capmesh-net", "capmesh-mesh", "capmesh-store", "capmesh-market", "capmesh-agents", "capmesh-api", "libp2p", "sled", "tokio"},
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
