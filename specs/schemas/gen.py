#!/usr/bin/env python3
"""Generates the JSON Schemas (2020-12) of capmesh's wire objects and their example instances.

    python3 specs/schemas/gen.py            # (re)write specs/schemas/**.json and specs/examples/**.json
    python3 specs/schemas/gen.py --check    # exit 1 if a generated file is missing or differs
    python3 specs/schemas/gen.py --verify   # also validate the schemas against the 2020-12
                                            # meta-schema and every example against its schema
                                            # (needs the `jsonschema` package)

Every schema is built from the single table `DEFS` below, so a shared part (a CID, a Price, a signed
record) has one definition. Each written file is self-contained: what it uses is copied into its own
`$defs`, and no `$ref` leaves the document. The schemas describe the JSON projection of
protocol.md §4.6 (byte strings as unpadded base64url, CIDs as CIDv1 base32 lower-case text, PeerIds
as base58btc text) and add nothing to protocol.md: every pattern, bound and rule here is stated
there. Rules JSON Schema cannot express (a hash, a signature, a byte length of text, two fields
being equal) are at most in the descriptions.

The body schemas in kinds/ are protocol constants: an envelope names the CID of its body's schema
(protocol.md §3.2, §13), so any change to those files, descriptions included, changes the wire.

Examples (specs/examples/, same relative paths) have the shape
`{"valid": [instance, ...], "invalid": [{"why": ..., "instance": ...}, ...]}`. Each invalid instance
is a valid one with exactly one change, the one its `why` names. Keys, PeerIds and CIDs are
well-formed (PeerIds of real ed25519 keys, derived below from fixed seeds). Signatures are not
actual signatures and most CIDs are not the ids of actual content: these are shape examples, and
the vectors in specs/vectors/ are the cryptographic ones. The exceptions are what the body rules of
protocol.md §8.8 tie to content, so that valid examples obey them: the capability ids of the two
example contracts (an AdvertiseCapability's advert names its contract) and the chain of a chunk 0.
Only the standard library is needed to generate (BLAKE3 and canonical CBOR are written out below).
"""

import base64
import copy
import hashlib
import json
import os
import struct as binary
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMAS = HERE
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")
DIALECT = "https://json-schema.org/draft/2020-12/schema"

U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1

# ---------------------------------------------------------------------------------------------
# Encodings, with the exact text patterns of protocol.md §3, §4.6 and the patterns it states.
# ---------------------------------------------------------------------------------------------

B64 = "[A-Za-z0-9_-]"
# data_encoding checks trailing bits, so the last character of unpadded base64url carries zero
# padding bits: 2 padding bits (after 2 bytes) or 4 (after 1 byte).
B64_LAST_2 = "[AEIMQUYcgkosw048]"
B64_LAST_4 = "[AQgw]"


def b64_fixed_pattern(n):
    """Pattern of exactly `n` bytes as unpadded base64url."""
    full, rest = divmod(n, 3)
    if rest == 0:
        return f"^{B64}{{{4 * full}}}$"
    if rest == 1:
        return f"^{B64}{{{4 * full + 1}}}{B64_LAST_4}$"
    return f"^{B64}{{{4 * full + 2}}}{B64_LAST_2}$"


B64_ANY_PATTERN = f"^(?:{B64}{{4}})*(?:{B64}{B64_LAST_4}|{B64}{{2}}{B64_LAST_2})?$"

# CIDv1 text: 'b' + base32 lower (no padding) of 0x01, codec (0x71 dag-cbor -> "afy", 0x55 raw ->
# "afk"), 0x1e 0x20 (BLAKE3-256, 32 bytes) and the digest: 58 characters whose last one carries
# 2 zero padding bits.
CID_PATTERN = "^baf[yk]r4i[a-z2-7]{51}[aeimquy4]$"
# base58btc of 0x00 0x24 0x08 0x01 0x12 0x20 + 32-byte ed25519 key: always 52 characters.
PEER_ID_PATTERN = "^12D3KooW[1-9A-HJ-NP-Za-km-z]{44}$"
# Semantic Versioning 2.0.0 (the regex suggested on semver.org, with [0-9] for \d).
SEMVER_PATTERN = (
    "^(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)"
    "(?:-(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
    "(?:\\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*)?"
    "(?:\\+[0-9a-zA-Z-]+(?:\\.[0-9a-zA-Z-]+)*)?$"
)
NAME_PATTERN = "^[a-z][a-z0-9_.-]{0,63}$"
TAG_PATTERN = "^[a-z0-9][a-z0-9_.:-]{0,63}$"
CLAIM_PATTERN = "^[a-z0-9][a-z0-9_.:/-]{0,127}$"
MAX_TAGS = 32
# A SyncRange bound: empty, or 36 bytes (a binary record id: 48 characters, no padding bits).
SYNC_BOUND_PATTERN = f"^(?:{B64}{{48}})?$"

# ---------------------------------------------------------------------------------------------
# The table of definitions.
# ---------------------------------------------------------------------------------------------


def ref(name, description=None):
    out = {"$ref": f"#/$defs/{name}"}
    if description:
        out["description"] = description
    return out


def array(items, description=None, **extra):
    out = {"type": "array", "items": items, **extra}
    if description:
        out["description"] = description
    return out


def string(description=None, **extra):
    out = {"type": "string", **extra}
    if description:
        out["description"] = description
    return out


def boolean(description):
    return {"type": "boolean", "description": description}


def struct(description, fields, optional=(), rules=()):
    """An object with unknown fields refused: `fields` in wire order; `optional` names the fields
    that may be absent (absent, never null); `rules` are schemas of protocol.md §8.8 rules across
    fields that JSON Schema can express, all of which must hold."""
    names = [name for name, _ in fields]
    assert set(optional) <= set(names), optional
    out = {
        "type": "object",
        "description": description,
        "properties": dict(fields),
        "required": [name for name in names if name not in optional],
        "additionalProperties": False,
    }
    if rules:
        out["allOf"] = list(rules)
    return out


def when(condition, then):
    """A rule: if the object matches `condition`, it must match `then`."""
    return {"if": condition, "then": then}


def tagged(description, variants):
    """An externally tagged serde enum: an object with exactly one property, the variant's name."""
    return {
        "type": "object",
        "description": description,
        "oneOf": [
            {
                "properties": {name: schema},
                "required": [name],
                "additionalProperties": False,
            }
            for name, schema in variants
        ],
    }


def unit_enum(description, names):
    return {"type": "string", "description": description, "enum": list(names)}


def signed(record):
    return {
        "type": "object",
        "description": (
            f"A signed {record}: the {record}'s JSON projection and the ed25519 signature over "
            f"the domain tag `pervasive.link/v1/{DOMAINS[record]}` followed by the canonical "
            "CBOR of the payload."
        ),
        "properties": {"payload": ref(record), "sig": ref("Signature")},
        "required": ["payload", "sig"],
        "additionalProperties": False,
    }


DOMAINS = {
    "Advert": "advert",
    "Retirement": "retirement",
    "Attestation": "attestation",
    "Receipt": "receipt",
    "Countersignature": "countersign",
    "LedgerHead": "ledger-head",
}

KINDS = [
    # (kind, body type, carrier)
    ("AdvertiseCapability", "AdvertiseCapability", "gossip"),
    ("Retire", "Retire", "gossip"),
    ("Attest", "Attest", "gossip"),
    ("Discover", "Discover", "rpc"),
    ("DiscoverResult", "DiscoverResult", "rpc"),
    ("Sync", "Sync", "rpc"),
    ("SyncResult", "SyncResult", "rpc"),
    ("Intent", "Intent", "rpc"),
    ("Offer", "Offer", "rpc"),
    ("Negotiate", "Negotiate", "rpc"),
    ("TaskStart", "TaskStart", "rpc"),
    ("TaskAccepted", "TaskAccepted", "rpc"),
    ("TaskProgress", "TaskProgress", "rpc"),
    ("TaskDone", "TaskDone", "rpc"),
    ("TaskCancel", "TaskCancel", "rpc"),
    ("Receipt", "ReceiptCountersign", "rpc"),
    ("Error", "ErrorBody", "rpc"),
]

def RECEIPT_STATUS(ok):
    """A signed receipt whose status is `Ok` (`ok`) or any other."""
    status = {"const": "Ok"} if ok else {"not": {"const": "Ok"}}
    return {"properties": {"payload": {"properties": {"status": status}}}}


CARRIERS = {
    "gossip": "gossip on `capmesh/registry/1`, or rpc",
    "rpc": "request-response `/capmesh/rpc/1.0.0` only",
}

DEFS = {
    # --- scalars --------------------------------------------------------------------------
    "U64": {
        "type": "integer",
        "minimum": 0,
        "maximum": U64_MAX,
        "description": "An unsigned 64-bit integer.",
    },
    "U32": {
        "type": "integer",
        "minimum": 0,
        "maximum": U32_MAX,
        "description": "An unsigned 32-bit integer.",
    },
    "UnixMs": {
        "type": "integer",
        "minimum": 0,
        "maximum": U64_MAX,
        "description": "A time in unix milliseconds (unsigned 64-bit).",
    },
    "PeerId": string(
        "A libp2p PeerId of an ed25519 key, base58btc text (`12D3KooW…`, 52 characters).",
        pattern=PEER_ID_PATTERN,
    ),
    "Cid": string(
        "A CIDv1 (dag-cbor or raw codec, BLAKE3-256 multihash) as base32 lower-case multibase "
        "text (`bafyr4i…` or `bafkr4i…`, 59 characters).",
        pattern=CID_PATTERN,
    ),
    "PublicKey": string(
        "A 32-byte ed25519 public key, unpadded base64url (43 characters).",
        pattern=b64_fixed_pattern(32),
    ),
    "Digest": string(
        "A 32-byte BLAKE3-256 digest, unpadded base64url (43 characters).",
        pattern=b64_fixed_pattern(32),
    ),
    "Signature": string(
        "A 64-byte ed25519 signature, unpadded base64url (86 characters).",
        pattern=b64_fixed_pattern(64),
    ),
    "CallId": string(
        "A 16-byte call id chosen by the caller, unpadded base64url (22 characters).",
        pattern=b64_fixed_pattern(16),
    ),
    "Nonce": string(
        "8 random bytes, unpadded base64url (11 characters).",
        pattern=b64_fixed_pattern(8),
    ),
    "TraceId": string(
        "A 16-byte trace id, unpadded base64url (22 characters).",
        pattern=b64_fixed_pattern(16),
    ),
    "Bytes": string(
        "A byte string of any length, unpadded base64url.",
        pattern=B64_ANY_PATTERN,
    ),
    "Tag": string("A tag of a contract.", pattern=TAG_PATTERN),
    "Tags": array(
        ref("Tag"),
        f"At most {MAX_TAGS} tags, each at most once.",
        uniqueItems=True,
        maxItems=MAX_TAGS,
    ),
    "Claim": string(
        "An attestation claim (e.g. `audited`, `org:acme/member`).",
        pattern=CLAIM_PATTERN,
    ),
    "Multiaddr": string(
        "A multiaddr in its text form (`/ip4/…/tcp/…/p2p/…`); text that is none is not refused, "
        "only useless to dial."
    ),
    "SyncBound": string(
        "A range bound: empty, or 36 bytes (a binary record id, compared bytewise), unpadded "
        "base64url (0 or 48 characters). Any other length is refused.",
        pattern=SYNC_BOUND_PATTERN,
    ),
    "JsonSchema": {
        "type": ["object", "boolean"],
        "description": "A self-contained JSON Schema (2020-12): no `$ref` outside the document.",
    },
    # --- contracts and records ------------------------------------------------------------
    "Contract": struct(
        "What a capability is: its JSON Schema contract. The CID of its canonical CBOR is the "
        "capability id; a changed contract is a new capability. At most 32 KiB.",
        [
            ("name", string("Lower-case tool name.", pattern=NAME_PATTERN)),
            (
                "version",
                string("Semantic version (2.0.0, semver.org) of the contract.", pattern=SEMVER_PATTERN),
            ),
            ("description", string("What the capability does; at most 4096 bytes of UTF-8.")),
            ("input", ref("JsonSchema", "JSON Schema 2020-12 of the arguments.")),
            ("output", ref("JsonSchema", "JSON Schema 2020-12 of the output.")),
            ("tags", ref("Tags", "Tags for discovery.")),
            ("read_only", boolean("Calling it changes nothing.")),
            (
                "idempotent",
                boolean("Running it twice with the same arguments has the effect of running it once."),
            ),
            ("streaming", boolean("The output arrives as `TaskProgress` chunks.")),
        ],
    ),
    "Price": struct(
        "A price: an unsigned amount in a unit the caller may or may not accept.",
        [
            ("amount", ref("U64")),
            ("unit", string("The unit of `amount`, any text; a caller skips units it does not accept.")),
        ],
    ),
    "Limits": struct(
        "What a provider promises to bear per call.",
        [
            ("timeout_ms", ref("U64", "Longest a call may run, in milliseconds.")),
            ("max_input_bytes", ref("U64", "Largest accepted canonical CBOR size of the arguments.")),
            ("concurrency", ref("U32", "Calls run at once for all callers.")),
        ],
    ),
    "Advert": struct(
        "A provider's signed offer to serve a capability on these terms (signed by `provider`, "
        "domain `pervasive.link/v1/advert`). Its id is the CID of its payload.",
        [
            ("capability", ref("Cid", "The capability id (CID of the contract).")),
            ("provider", ref("PeerId", "The provider, who signs the advert.")),
            ("addrs", array(ref("Multiaddr"), "Multiaddrs where the provider listens.")),
            ("price", ref("Price", "Price of one call.")),
            ("limits", ref("Limits")),
            (
                "attestations",
                array(ref("Cid"), "Ids of attestations about the provider or the capability."),
            ),
            ("seq", ref("U64", "For each (provider, capability) the highest `seq` wins.")),
            ("issued", ref("UnixMs")),
            ("expires", ref("UnixMs")),
        ],
    ),
    "Retirement": struct(
        "A provider withdraws a capability (signed by `provider`, domain "
        "`pervasive.link/v1/retirement`); an advert with a higher `seq` brings it back.",
        [
            ("provider", ref("PeerId")),
            ("capability", ref("Cid")),
            ("seq", ref("U64", "For each (provider, capability) the highest `seq` wins.")),
            ("issued", ref("UnixMs")),
        ],
    ),
    "Subject": tagged(
        "What an attestation speaks about: a peer or a content id.",
        [("peer", ref("PeerId")), ("cid", ref("Cid"))],
    ),
    "Attestation": struct(
        "An issuer's signed claim about a peer or a content id (signed by `issuer`, domain "
        "`pervasive.link/v1/attestation`).",
        [
            ("issuer", ref("PeerId")),
            ("subject", ref("Subject")),
            ("claim", ref("Claim")),
            ("issued", ref("UnixMs")),
            ("expires", ref("UnixMs")),
        ],
    ),
    "CallStatus": unit_enum("How a call ended.", ["Ok", "Failed", "Cancelled", "TimedOut"]),
    "Validation": unit_enum(
        "Whether the provider's output matched the contract's output schema (`Skipped`: no "
        "output to check).",
        ["Passed", "Failed", "Skipped"],
    ),
    "Receipt": struct(
        "The provider's signed account of one call (signed by `provider`, domain "
        "`pervasive.link/v1/receipt`).",
        [
            ("call", ref("CallId")),
            ("capability", ref("Cid")),
            ("caller", ref("PeerId")),
            ("provider", ref("PeerId")),
            ("offer", ref("Cid", "Id of the `Offer` envelope the call was made under.")),
            ("input", ref("Digest", "BLAKE3 of the canonical CBOR of the arguments.")),
            (
                "output",
                ref(
                    "Digest",
                    "BLAKE3 of the canonical CBOR of the output, or the last link of the "
                    "`TaskProgress` chain for a streaming capability; absent when there is no "
                    "output.",
                ),
            ),
            ("price", ref("Price")),
            ("started", ref("UnixMs")),
            ("ended", ref("UnixMs")),
            ("status", ref("CallStatus")),
            ("validation", ref("Validation")),
        ],
        optional=["output"],
    ),
    "Countersignature": struct(
        "The caller's signature over a receipt id: the second party of a two-party receipt "
        "(signed by `caller`, domain `pervasive.link/v1/countersign`).",
        [
            ("receipt", ref("Cid", "Id of the receipt (CID of its payload).")),
            ("caller", ref("PeerId")),
            ("signed", ref("UnixMs")),
        ],
    ),
    "LedgerHead": struct(
        "A node's signed statement of its receipt ledger: the number of entries and the chain "
        "hash of the last, so that a truncated or extended export is refused; the last line of "
        "a ledger export (signed by `node`, domain `pervasive.link/v1/ledger-head`).",
        [
            ("node", ref("PeerId", "The node whose ledger this is; the signer.")),
            ("len", ref("U64", "Number of entries (the next sequence number).")),
            (
                "hash",
                ref(
                    "Digest",
                    "Chain hash of the last entry (sequence `len` - 1); 32 zero bytes when "
                    "`len` is 0.",
                ),
            ),
            ("issued", ref("UnixMs", "When the head was signed.")),
        ],
    ),
    **{f"Signed{record}": signed(record) for record in DOMAINS},
    # --- kind bodies ----------------------------------------------------------------------
    "AdvertiseCapability": struct(
        "A signed Advert with the contract it names, so every replica can index tags and text. "
        "The CID of the contract's canonical CBOR must be the advert's `capability` (else "
        "`CidMismatch`).",
        [("advert", ref("SignedAdvert")), ("contract", ref("Contract"))],
    ),
    "Retire": struct("A signed Retirement.", [("retirement", ref("SignedRetirement"))]),
    "Attest": struct("A signed Attestation.", [("attestation", ref("SignedAttestation"))]),
    "Filter": struct(
        "Filters of a replica query; all present filters must hold.",
        [
            ("tags", array(string(), "Every tag must be on the contract.")),
            ("name_prefix", string("The contract's name starts with this.")),
            ("text", string("Words searched in name, description and tags.")),
            ("provider", ref("PeerId")),
            ("max_price", ref("Price", "Only adverts in this unit at or below this amount.")),
            (
                "claim",
                string("The provider holds an unexpired attestation with this claim (if given) …"),
            ),
            ("issuer", ref("PeerId", "… issued by this peer (if given).")),
            ("issued_after", ref("UnixMs", "Only adverts issued at or after this time.")),
        ],
        optional=["name_prefix", "text", "provider", "max_price", "claim", "issuer", "issued_after"],
    ),
    "Discover": struct(
        "Ask a peer's replica by ids (contracts, adverts, attestations) or by filter.",
        [
            ("ids", array(ref("Cid"), "Capability ids or record ids to fetch.")),
            ("filter", ref("Filter")),
            ("limit", ref("U32", "Most adverts to return.")),
            ("cursor", ref("Bytes", "Opaque position from a previous `DiscoverResult`.")),
        ],
        optional=["filter", "cursor"],
    ),
    "DiscoverResult": struct(
        "The answer to `Discover`.",
        [
            ("contracts", array(ref("Contract"))),
            ("adverts", array(ref("SignedAdvert"))),
            ("attestations", array(ref("SignedAttestation"))),
            ("retirements", array(ref("SignedRetirement"))),
            ("cursor", ref("Bytes", "Present when more results follow.")),
        ],
        optional=["cursor"],
    ),
    "SyncRange": struct(
        "A range of record ids for set reconciliation: ids in `[lower, upper)` (binary CIDs; an "
        "empty `lower` means from the lowest, an empty `upper` no bound), how many the sender "
        "holds, and the XOR of their BLAKE3 digests.",
        [
            ("lower", ref("SyncBound", "Inclusive lower bound, or empty for the lowest.")),
            ("upper", ref("SyncBound", "Exclusive upper bound, or empty for no bound.")),
            ("count", ref("U64")),
            ("fingerprint", ref("Digest")),
        ],
    ),
    "Sync": tagged(
        "Catch-up: a range of the peer's change log, or reconciliation over record ids.",
        [
            (
                "log",
                struct(
                    "A range of the change log.",
                    [
                        ("from", ref("U64", "First change-log sequence number wanted.")),
                        ("limit", ref("U32", "Most records to return.")),
                    ],
                ),
            ),
            (
                "reconcile",
                struct(
                    "Set reconciliation over record ids.",
                    [("ranges", array(ref("SyncRange")))],
                ),
            ),
        ],
    ),
    "AnyRecord": tagged(
        "Any record a replica replicates.",
        [
            ("advert", ref("SignedAdvert")),
            ("retirement", ref("SignedRetirement")),
            ("attestation", ref("SignedAttestation")),
        ],
    ),
    "SyncResult": struct(
        "The answer to `Sync`. Log mode has no ranges, reconcile mode `next` 0: ranges with a "
        "non-zero `next` fit neither.",
        [
            ("records", array(ref("AnyRecord"))),
            ("contracts", array(ref("Contract"), "Contracts named by the adverts in `records`.")),
            ("next", ref("U64", "Log mode: the sequence number to ask from next.")),
            ("head", ref("U64", "The sender's latest change-log sequence number.")),
            (
                "ranges",
                array(ref("SyncRange"), "Reconcile mode: sub-ranges whose fingerprints still differ."),
            ),
        ],
        rules=[
            when(
                {"properties": {"ranges": {"minItems": 1}}, "required": ["ranges"]},
                {"properties": {"next": {"const": 0}}},
            )
        ],
    ),
    "Intent": struct(
        "Ask a provider for terms.",
        [
            ("capability", ref("Cid")),
            ("max_price", ref("Price")),
            ("calls", ref("U32", "How many calls the caller expects to make under one offer.")),
            ("deadline", ref("UnixMs", "When the caller gives up.")),
        ],
        optional=["max_price"],
    ),
    "Offer": struct(
        "A provider's terms. The id of the envelope carrying it is the offer id.",
        [
            ("capability", ref("Cid")),
            ("price", ref("Price")),
            ("latency_ms", ref("U64", "Expected latency of one call, in milliseconds.")),
            ("calls", ref("U32", "How many calls the offer covers.")),
            ("expires", ref("UnixMs")),
        ],
    ),
    "NegotiateAction": unit_enum("What `Negotiate` does.", ["Accept", "Counter", "Decline"]),
    "Negotiate": struct(
        "Accept, counter or decline an offer (or decline an intent, with no offer).",
        [
            ("action", ref("NegotiateAction")),
            ("offer", ref("Cid", "Id of the offer envelope; required for `Accept` and `Counter`.")),
            ("price", ref("Price", "The counter price; required for `Counter`.")),
            ("reason", string()),
        ],
        optional=["offer", "price", "reason"],
        rules=[
            when(
                {"properties": {"action": {"enum": ["Accept", "Counter"]}}, "required": ["action"]},
                {"required": ["offer"]},
            ),
            when(
                {"properties": {"action": {"const": "Counter"}}, "required": ["action"]},
                {"required": ["price"]},
            ),
        ],
    ),
    "TaskStart": struct(
        "The call.",
        [
            ("call", ref("CallId")),
            ("capability", ref("Cid")),
            ("offer", ref("Cid", "Id of the `Offer` envelope the call is made under.")),
            (
                "args",
                {
                    "description": "The arguments: any JSON value (checked against the "
                    "contract's input schema)."
                },
            ),
            ("deadline", ref("UnixMs")),
        ],
    ),
    "TaskAccepted": struct(
        "The call runs longer than the inline window; `TaskProgress` and `TaskDone` follow.",
        [("call", ref("CallId"))],
    ),
    "TaskProgress": struct(
        "A chunk of a streaming output. `chain` = BLAKE3(previous chain || data), starting from "
        "32 zero bytes (so chunk 0's `chain` must be BLAKE3(32 zero bytes || data)); the last "
        "chain value is the receipt's `output`.",
        [
            ("call", ref("CallId")),
            ("seq", ref("U64")),
            ("data", ref("Bytes")),
            ("chain", ref("Digest")),
        ],
    ),
    "ErrorBody": struct(
        "A refusal or failure (kind `Error`, and `TaskDone.error`).",
        [
            (
                "code",
                string(
                    "Machine code (`Expired`, `PolicyDenied`, …): any text; the codes of "
                    "protocol.md §11 are PascalCase."
                ),
            ),
            ("message", string("For humans.")),
            ("retryable", boolean("Trying again later may succeed.")),
            ("retry_after_ms", ref("U64", "How long to wait before trying again, in milliseconds.")),
        ],
        optional=["retry_after_ms"],
    ),
    "TaskDone": struct(
        "The outcome, with the provider's signed receipt for this call (its `call` is this "
        "`call`). At most one of `output` and `error` (neither: a successful streaming call); the "
        "receipt's status is `Ok` exactly when there is no `error`.",
        [
            ("call", ref("CallId")),
            (
                "output",
                {
                    "description": "Present when the call succeeded (not for a streamed "
                    "output): any JSON value (checked against the contract's output schema)."
                },
            ),
            ("error", ref("ErrorBody")),
            ("receipt", ref("SignedReceipt")),
        ],
        optional=["output", "error"],
        rules=[
            {"not": {"required": ["output", "error"]}},
            {
                "if": {"required": ["error"]},
                "then": {"properties": {"receipt": RECEIPT_STATUS(False)}},
                "else": {"properties": {"receipt": RECEIPT_STATUS(True)}},
            },
        ],
    ),
    "TaskCancel": struct(
        "The caller cancels a call.",
        [("call", ref("CallId")), ("reason", string())],
        optional=["reason"],
    ),
    "ReceiptCountersign": struct(
        "The caller's countersignature of a receipt (kind `Receipt`).",
        [("countersignature", ref("SignedCountersignature"))],
    ),
    # --- envelopes ------------------------------------------------------------------------
    "Kind": unit_enum("An envelope's kind, by its PascalCase name.", [k for k, _, _ in KINDS]),
    "EnvelopePayload": struct(
        "The content of an envelope. Its id is the CID of its canonical CBOR; the envelope is "
        "signed by `from` under the domain tag `pervasive.link/v1/envelope`.",
        [
            (
                "v",
                ref(
                    "U64",
                    "Protocol version, 1. Another value is not a shape error: a receiver refuses "
                    "it with `UnsupportedVersion` once the rest of the payload decoded.",
                ),
            ),
            ("kind", ref("Kind")),
            ("from", ref("PublicKey", "The sender's public key.")),
            ("to", ref("PeerId", "The recipient, for direct messages (absent for gossip).")),
            ("ts", ref("UnixMs", "Creation time.")),
            ("exp", ref("UnixMs", "Expiry.")),
            ("nonce", ref("Nonce", "(`from`, `nonce`) is unique within the validity window.")),
            ("trace", ref("TraceId", "Threads every message of one call or workflow.")),
            ("re", ref("Cid", "Id of the envelope this one answers (absent on a first message).")),
            (
                "schema",
                ref(
                    "Cid",
                    "CID of the canonical CBOR of the JSON Schema of `body` for this kind, as "
                    "shipped in specs/schemas/kinds/.",
                ),
            ),
            ("body", {"type": "object", "description": "The kind's body (specs/schemas/kinds/<kind>.json)."}),
        ],
        optional=["to", "re"],
    ),
    "Envelope": struct(
        "A signed envelope: its payload and the ed25519 signature by `payload.from` over the "
        "domain tag `pervasive.link/v1/envelope` followed by the canonical CBOR of the payload.",
        [("payload", ref("EnvelopePayload")), ("sig", ref("Signature"))],
    ),
    "Signed": struct(
        "The JSON projection of any signed record: the record's JSON object (whose canonical "
        "CBOR is the signed payload) and the ed25519 signature over the record type's domain tag "
        "followed by that payload. records/<Type>.json describes each payload.",
        [
            (
                "payload",
                {
                    "type": "object",
                    "description": "The record (Advert, Retirement, Attestation, Receipt, "
                    "Countersignature or LedgerHead).",
                },
            ),
            ("sig", ref("Signature")),
        ],
    ),
}


def collect(node, found):
    """Adds to `found` every definition `node` reaches through `$ref`."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                name = value.removeprefix("#/$defs/")
                if name not in found:
                    found[name] = DEFS[name]
                    collect(DEFS[name], found)
            else:
                collect(value, found)
    elif isinstance(node, list):
        for item in node:
            collect(item, found)


def document(root, title, prefix=""):
    body = copy.deepcopy(DEFS[root])
    assert body.get("type") == "object", root
    found = {}
    collect(body, found)
    doc = {"$schema": DIALECT, "title": title, **body}
    doc["description"] = prefix + body["description"]
    if found:
        doc["$defs"] = copy.deepcopy(found)
    return doc


# ---------------------------------------------------------------------------------------------
# Plans (specs/plans.md): not a wire object but a document agents write, in JSON or YAML. Its
# examples are hand-written files in examples/plans/ with the violations each must produce in
# examples/plans/expected.json (checked by crates/plan), not generated here.
# ---------------------------------------------------------------------------------------------

PLAN_NAME_PATTERN = "^[A-Za-z][A-Za-z0-9_-]{0,63}$"
# A JSON Pointer (RFC 6901): "" or "/"-separated tokens, "~" only as "~0" or "~1".
POINTER_PATTERN = "^(/([^~/]|~[01])*)*$"
# A reference: a JSON Pointer into {"inputs": …, "steps": …, "item": …, "index": …, "acc": …}.
SOURCE_PATTERN = (
    "^(/(inputs|steps)/[A-Za-z][A-Za-z0-9_-]{0,63}|/item|/acc)(/([^~/]|~[01])*)*$|^/index$"
)
CAPABILITY_PATTERN = "^bafyr4i[a-z2-7]{51}[aeimquy4]$"
PLAN_MAX = {
    "steps": 256, "inputs": 64, "bindings": 64, "join": 64, "require": 16, "issuers": 16,
    "parallel": 64, "deadline_ms": 86_400_000, "goal": 4096, "text": 256, "unit": 64, "tags": 32,
}


def plan_schema():
    m = PLAN_MAX

    def obj(description, properties, required=(), **extra):
        out = {"type": "object", "description": description, "properties": properties}
        if required:
            out["required"] = list(required)
        out["additionalProperties"] = False
        out.update(extra)
        return out

    def weight(name):
        return {"required": [name], "properties": {name: {"exclusiveMinimum": 0}}}

    source = ref("Source")
    step_common = {
        "call": ref("Target"),
        "args": {"description": "Literal arguments (any JSON value); `{}` when absent."},
        "bind": ref("Bind"),
        "select": ref("Select"),
    }
    defs = {
        "Name": string(f"An input or step name.", pattern=PLAN_NAME_PATTERN),
        "Source": string(
            "A reference: a JSON Pointer (RFC 6901) into the document {inputs, steps, item, "
            "index, acc}: `/inputs/<name>…`, `/steps/<name>…` (that step's output), `/item…` "
            "(map, reduce), `/index` (map), `/acc…` (reduce).",
            pattern=SOURCE_PATTERN,
        ),
        "Input": {
            "description": "An input: its value, or the CID of its value with an optional schema.",
            "oneOf": [
                obj("The value itself.", {"value": {"description": "Any JSON value."}}, ["value"]),
                obj(
                    "The value whose canonical CBOR has this CID, fetched when the plan runs.",
                    {
                        "cid": string("CIDv1 text (dag-cbor or raw).", pattern=CID_PATTERN),
                        "schema": {
                            "type": ["object", "boolean"],
                            "description": "A JSON Schema (2020-12) of the value, for checking.",
                        },
                    },
                    ["cid"],
                ),
            ],
        },
        "Weights": obj(
            "Offer ranking weights (a weight not given is 0; at least one above 0).",
            {
                name: {"type": "number", "minimum": 0}
                for name in ["price", "latency", "reputation"]
            },
            anyOf=[weight(n) for n in ["price", "latency", "reputation"]],
        ),
        "Select": obj("How offers are chosen.", {"optimize": ref("Weights")}, ["optimize"]),
        "Query": obj(
            "A query the mesh resolves to a capability id before the plan runs.",
            {
                "tags": array(
                    string(pattern=TAG_PATTERN),
                    "Every tag must be on the contract.",
                    minItems=1,
                    maxItems=m["tags"],
                    uniqueItems=True,
                ),
                "name": string("The contract's exact name.", pattern=NAME_PATTERN),
                "text": string(
                    "Words searched in names, descriptions and tags.",
                    minLength=1,
                    maxLength=m["text"],
                ),
            },
            minProperties=1,
        ),
        "Target": {
            "description": "A capability id, or a query.",
            "oneOf": [
                string("A capability id (dag-cbor CID).", pattern=CAPABILITY_PATTERN),
                ref("Query"),
            ],
        },
        "Bind": {
            "type": "object",
            "description": "Arguments filled from references: target JSON Pointer into the "
            "arguments (`\"\"`: the whole arguments) → reference.",
            "maxProperties": m["bindings"],
            "propertyNames": {"pattern": POINTER_PATTERN},
            "additionalProperties": source,
        },
        "Step": {
            "description": "A step: exactly one of call, map, reduce, join.",
            "oneOf": [
                obj("One call.", dict(step_common), ["call"]),
                obj(
                    "The call once per item of a list.",
                    {"map": source, **step_common},
                    ["map", "call"],
                ),
                obj(
                    "A fold of a list through the call.",
                    {"reduce": source, "init": {"description": "The first accumulator."}, **step_common},
                    ["reduce", "call"],
                ),
                obj(
                    "Values gathered into one object or list, no call.",
                    {
                        "join": {
                            "oneOf": [
                                {
                                    "type": "object",
                                    "minProperties": 1,
                                    "maxProperties": m["join"],
                                    "additionalProperties": source,
                                },
                                array(source, minItems=1, maxItems=m["join"]),
                            ]
                        }
                    },
                    ["join"],
                ),
            ],
        },
    }
    body = obj(
        "A plan (specs/plans.md): a goal, inputs, constraints, policy, selection weights and "
        "named steps wired by references. References, cycles, bounds on literal lists and the "
        "wiring against contracts are checked beyond this schema (specs/plans.md §5).",
        {
            "v": {"const": 1, "description": "The format version: 1."},
            "goal": string("What the plan is for, in words.", minLength=1, maxLength=m["goal"]),
            "inputs": {
                "type": "object",
                "description": "Named inputs.",
                "maxProperties": m["inputs"],
                "propertyNames": ref("Name"),
                "additionalProperties": ref("Input"),
            },
            "constraints": obj(
                "Bounds on the whole run.",
                {
                    "deadline_ms": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": m["deadline_ms"],
                        "description": "The run ends within this many ms of its start.",
                    },
                    "max_price": obj(
                        "The calls' prices add up to at most this, in this unit.",
                        {
                            "amount": {"type": "integer", "minimum": 0, "maximum": U64_MAX},
                            "unit": string(minLength=1, maxLength=m["unit"]),
                        },
                        ["amount", "unit"],
                    ),
                    "max_parallel": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": m["parallel"],
                        "description": "Most calls in flight at once.",
                    },
                },
            ),
            "policy": obj(
                "What providers must hold.",
                {
                    "require": array(
                        obj(
                            "An attestation of `claim` by one of `issuers`.",
                            {
                                "claim": string(pattern=CLAIM_PATTERN),
                                "issuers": array(
                                    string(pattern=PEER_ID_PATTERN),
                                    minItems=1,
                                    maxItems=m["issuers"],
                                ),
                            },
                            ["claim", "issuers"],
                        ),
                        maxItems=m["require"],
                    )
                },
            ),
            "select": ref("Select"),
            "plan": {
                "type": "object",
                "description": "The steps, by name.",
                "minProperties": 1,
                "maxProperties": m["steps"],
                "propertyNames": ref("Name"),
                "additionalProperties": ref("Step"),
            },
            "output": ref("Source", "The plan's result (default: the steps nothing uses)."),
        },
        ["goal", "plan"],
    )
    return {"$schema": DIALECT, "title": "Plan", **body, "$defs": defs}


PLAN_SCHEMA_CODES = {"Missing", "Unknown", "WrongType", "BadValue", "BadPointer", "StepKind", "TooMany"}


def verify_plans(validator):
    """Plan examples: valid files pass; an invalid one fails exactly when one of its expected
    violations is of a kind the schema expresses (YAML files only with PyYAML)."""
    base = os.path.join(EXAMPLES, "plans")
    with open(os.path.join(base, "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)["examples"]
    failures = 0
    for rel, entry in sorted(expected.items()):
        path = os.path.join(base, rel)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            if rel.endswith(".json"):
                instance = json.loads(text)
            else:
                import yaml

                instance = yaml.safe_load(text)
        except ImportError:
            continue
        except Exception:
            continue  # not JSON / YAML at all: nothing for a schema to say
        must_fail = any(v["code"] in PLAN_SCHEMA_CODES for v in entry["violations"])
        if validator.is_valid(instance) == must_fail:
            failures += 1
            print(f"plans/{rel}: the schema and expected.json disagree")
    return failures


def schemas():
    """Relative path -> schema document."""
    out = {}
    for record in ["Contract", *DOMAINS]:
        out[f"records/{record}.json"] = document(record, record)
    out["records/Signed.json"] = document("Signed", "Signed")
    for kind, body, carrier in KINDS:
        prefix = f"Body of an envelope of kind `{kind}` ({CARRIERS[carrier]}). "
        out[f"kinds/{kind}.json"] = document(body, body, prefix)
    out["EnvelopePayload.json"] = document("EnvelopePayload", "EnvelopePayload")
    out["Envelope.json"] = document("Envelope", "Envelope")
    out["plan/Plan.json"] = plan_schema()
    return out


# ---------------------------------------------------------------------------------------------
# Example values: ed25519 keys from fixed seeds (RFC 8032, pure Python), PeerIds, CIDs.
# ---------------------------------------------------------------------------------------------

_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _recover_x(y, sign):
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P)
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if x & 1 != sign:
        x = _P - x
    return x


def _add(a, b):
    aa = (a[1] - a[0]) * (b[1] - b[0]) % _P
    bb = (a[1] + a[0]) * (b[1] + b[0]) % _P
    cc = 2 * a[3] * b[3] * _D % _P
    dd = 2 * a[2] * b[2] % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


_GY = 4 * pow(5, _P - 2, _P) % _P
_GX = _recover_x(_GY, 0)
_G = (_GX, _GY, 1, _GX * _GY % _P)


def ed25519_public_key(seed):
    h = hashlib.sha512(seed).digest()
    scalar = int.from_bytes(h[:32], "little")
    scalar &= (1 << 254) - 8
    scalar |= 1 << 254
    q, point = (0, 1, 1, 0), _G
    while scalar:
        if scalar & 1:
            q = _add(q, point)
        point = _add(point, point)
        scalar >>= 1
    zinv = pow(q[2], _P - 2, _P)
    x, y = q[0] * zinv % _P, q[1] * zinv % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58(data):
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def peer_id(public_key):
    return base58(bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20]) + public_key)


def b64(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def fake_bytes(label, n):
    """`n` deterministic bytes named by `label`."""
    out, i = b"", 0
    while len(out) < n:
        out += hashlib.sha256(f"{label}#{i}".encode()).digest()
        i += 1
    return out[:n]


def cid_text(binary_cid):
    return "b" + base64.b32encode(binary_cid).decode().rstrip("=").lower()


def cid(label, codec=0x71, hash_code=0x1E):
    """A well-formed CID whose digest stands in for the BLAKE3 of the object named `label`."""
    return cid_text(bytes([0x01, codec, hash_code, 0x20]) + fake_bytes(label, 32))


# BLAKE3 (its specification's reference algorithm, unkeyed, 32-byte output), for the few example
# values the body rules tie to content.
_B3_IV = [
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
]
_B3_PERMUTATION = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8]
_B3_CHUNK_START, _B3_CHUNK_END, _B3_PARENT, _B3_ROOT = 1, 2, 4, 8
_M32 = 0xFFFFFFFF


def _b3_g(v, a, b, c, d, x, y):
    def rotr(n, r):
        return (n >> r | n << (32 - r)) & _M32

    v[a] = (v[a] + v[b] + x) & _M32
    v[d] = rotr(v[d] ^ v[a], 16)
    v[c] = (v[c] + v[d]) & _M32
    v[b] = rotr(v[b] ^ v[c], 12)
    v[a] = (v[a] + v[b] + y) & _M32
    v[d] = rotr(v[d] ^ v[a], 8)
    v[c] = (v[c] + v[d]) & _M32
    v[b] = rotr(v[b] ^ v[c], 7)


def _b3_compress(cv, block, counter, flags):
    """The first 8 words of the compression output: the next chaining value."""
    m = list(binary.unpack("<16I", block.ljust(64, b"\0")))
    v = list(cv) + _B3_IV[:4] + [counter & _M32, counter >> 32, len(block), flags]
    for round_ in range(7):
        for i, (a, b, c, d) in enumerate(
            [(0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
             (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14)]
        ):
            _b3_g(v, a, b, c, d, m[2 * i], m[2 * i + 1])
        if round_ < 6:
            m = [m[i] for i in _B3_PERMUTATION]
    return [v[i] ^ v[i + 8] for i in range(8)]


def _b3_chunk(chunk, counter, root):
    blocks = [chunk[i : i + 64] for i in range(0, len(chunk), 64)] or [b""]
    cv = _B3_IV
    for i, block in enumerate(blocks):
        flags = _B3_CHUNK_START if i == 0 else 0
        if i == len(blocks) - 1:
            flags |= _B3_CHUNK_END | (_B3_ROOT if root else 0)
        cv = _b3_compress(cv, block, counter, flags)
    return cv


def _b3_tree(cvs, root):
    """Parent nodes over chunk chaining values: the left subtree holds the largest power of two
    of chunks that leaves at least one for the right."""
    if len(cvs) == 1:
        return cvs[0]
    split = 1
    while split * 2 < len(cvs):
        split *= 2
    block = binary.pack("<16I", *_b3_tree(cvs[:split], False), *_b3_tree(cvs[split:], False))
    return _b3_compress(_B3_IV, block, 0, _B3_PARENT | (_B3_ROOT if root else 0))


def blake3(data):
    chunks = [data[i : i + 1024] for i in range(0, len(data), 1024)] or [b""]
    if len(chunks) == 1:
        cv = _b3_chunk(chunks[0], 0, True)
    else:
        cv = _b3_tree([_b3_chunk(c, i, False) for i, c in enumerate(chunks)], True)
    return binary.pack("<8I", *cv)


def _cbor_head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError(f"{n} does not fit a CBOR head")


def canonical_cbor(value):
    """Canonical CBOR of a JSON value (protocol.md §4.1, §4.5); the examples need no floats."""
    if value is None:
        return b"\xf6"
    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return _cbor_head(0, value) if value >= 0 else _cbor_head(1, -1 - value)
    if isinstance(value, str):
        text = value.encode()
        return _cbor_head(3, len(text)) + text
    if isinstance(value, list):
        return _cbor_head(4, len(value)) + b"".join(canonical_cbor(v) for v in value)
    if isinstance(value, dict):
        keys = sorted((k.encode(), k) for k in value)
        keys.sort(key=lambda k: len(k[0]))
        return _cbor_head(5, len(keys)) + b"".join(
            _cbor_head(3, len(raw)) + raw + canonical_cbor(value[k]) for raw, k in keys
        )
    raise TypeError(f"no canonical CBOR here for {value!r}")


def json_cid(value):
    """The dag-cbor CID of a JSON value: a contract's capability id (protocol.md §6.1)."""
    return cid_text(bytes([0x01, 0x71, 0x1E, 0x20]) + blake3(canonical_cbor(value)))


class Party:
    def __init__(self, seed_byte):
        self.public_key = ed25519_public_key(bytes([seed_byte]) * 32)
        self.peer = peer_id(self.public_key)
        self.key = b64(self.public_key)


ALICE = Party(1)  # a caller
BOB = Party(2)  # a provider
CAROL = Party(3)  # an attestation issuer

NOW = 1760000000000
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR


def sig(label):
    return b64(fake_bytes(f"sig:{label}", 64))


def signed_example(payload, label):
    return {"payload": copy.deepcopy(payload), "sig": sig(label)}


OFFER_ID = cid("envelope:offer")
ATTESTATION_ID = cid("attestation:audited")
CALL = b64(fake_bytes("call:1", 16))

CONTRACT = {
    "name": "echo",
    "version": "1.2.0",
    "description": "Returns its input text unchanged.",
    "input": {
        "$schema": DIALECT,
        "type": "object",
        "properties": {"text": {"type": "string", "maxLength": 4096}},
        "required": ["text"],
        "additionalProperties": False,
    },
    "output": {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
        "additionalProperties": False,
    },
    "tags": ["builtin", "text", "test:echo"],
    "read_only": True,
    "idempotent": True,
    "streaming": False,
}
CONTRACT_MINIMAL = {
    "name": "blake3",
    "version": "0.1.0-alpha.1+build.5",
    "description": "",
    "input": True,
    "output": {},
    "tags": [],
    "read_only": False,
    "idempotent": False,
    "streaming": True,
}
# Real capability ids: an AdvertiseCapability's advert must name its contract (§8.2).
CAP_ECHO = json_cid(CONTRACT)
CAP_BLAKE3 = json_cid(CONTRACT_MINIMAL)
PRICE = {"amount": 5, "unit": "credit"}
LIMITS = {"timeout_ms": 30_000, "max_input_bytes": 1_048_576, "concurrency": 8}
ADVERT = {
    "capability": CAP_ECHO,
    "provider": BOB.peer,
    "addrs": [f"/ip4/127.0.0.1/tcp/4001/p2p/{BOB.peer}", "/ip4/127.0.0.1/udp/4001/quic-v1"],
    "price": PRICE,
    "limits": LIMITS,
    "attestations": [ATTESTATION_ID],
    "seq": 3,
    "issued": NOW,
    "expires": NOW + DAY,
}
ADVERT_MINIMAL = {
    **ADVERT,
    "capability": CAP_BLAKE3,
    "addrs": [],
    "price": {"amount": 0, "unit": "free"},
    "limits": {"timeout_ms": U64_MAX, "max_input_bytes": 0, "concurrency": U32_MAX},
    "attestations": [],
    "seq": 0,
    "issued": 0,
    "expires": U64_MAX,
}
RETIREMENT = {"provider": BOB.peer, "capability": CAP_ECHO, "seq": 4, "issued": NOW + HOUR}
ATTESTATION = {
    "issuer": CAROL.peer,
    "subject": {"peer": BOB.peer},
    "claim": "audited",
    "issued": NOW - DAY,
    "expires": NOW + 30 * DAY,
}
ATTESTATION_CID = {
    **ATTESTATION,
    "subject": {"cid": CAP_ECHO},
    "claim": "org:acme/reviewed-v1.2",
}
RECEIPT = {
    "call": CALL,
    "capability": CAP_ECHO,
    "caller": ALICE.peer,
    "provider": BOB.peer,
    "offer": OFFER_ID,
    "input": b64(fake_bytes("input", 32)),
    "output": b64(fake_bytes("output", 32)),
    "price": PRICE,
    "started": NOW + 1_000,
    "ended": NOW + 1_042,
    "status": "Ok",
    "validation": "Passed",
}
RECEIPT_FAILED = {k: v for k, v in RECEIPT.items() if k != "output"}
RECEIPT_FAILED.update(status="TimedOut", validation="Skipped", ended=NOW + 31_000)
RECEIPT_ID = cid("receipt:1")
COUNTERSIGNATURE = {"receipt": RECEIPT_ID, "caller": ALICE.peer, "signed": NOW + 1_100}

SIGNED_ADVERT = signed_example(ADVERT, "advert")
SIGNED_RETIREMENT = signed_example(RETIREMENT, "retirement")
SIGNED_ATTESTATION = signed_example(ATTESTATION, "attestation")
SIGNED_RECEIPT = signed_example(RECEIPT, "receipt")
SIGNED_RECEIPT_FAILED = signed_example(RECEIPT_FAILED, "receipt-failed")
SIGNED_COUNTERSIGNATURE = signed_example(COUNTERSIGNATURE, "countersignature")
LEDGER_HEAD = {"node": BOB.peer, "len": 5, "hash": b64(fake_bytes("chain:4", 32)), "issued": NOW}
LEDGER_HEAD_EMPTY = {"node": BOB.peer, "len": 0, "hash": b64(bytes(32)), "issued": NOW}
SIGNED_LEDGER_HEAD = signed_example(LEDGER_HEAD, "ledger-head")

FILTER = {
    "tags": ["builtin", "text"],
    "name_prefix": "ec",
    "text": "echo text",
    "provider": BOB.peer,
    "max_price": {"amount": 10, "unit": "credit"},
    "claim": "audited",
    "issuer": CAROL.peer,
    "issued_after": NOW - DAY,
}
SYNC_RANGE = {
    "lower": b64(bytes([0x01, 0x71, 0x1E, 0x20]) + bytes(32)),
    "upper": "",
    "count": 120,
    "fingerprint": b64(fake_bytes("fingerprint", 32)),
}
ERROR = {
    "code": "PolicyDenied",
    "message": "caller lacks the attestation `org:acme/member`",
    "retryable": True,
    "retry_after_ms": 5_000,
}

# ---------------------------------------------------------------------------------------------
# Examples: valid instances, and invalid ones made from a valid one by one change.
# ---------------------------------------------------------------------------------------------

_DELETE = object()


def change(instance, path, value=_DELETE):
    """A copy of `instance` with the value at `path` (keys and indices) replaced, added or
    (by default) removed."""
    out = copy.deepcopy(instance)
    *parents, last = path
    node = out
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return out


def bad(why, instance, path, value=_DELETE):
    return {"why": why, "instance": change(instance, path, value)}


def missing(instance, field, where=()):
    return bad(f"missing required field `{field}`", instance, (*where, field))


def extra(instance, field="extra", value=1, where=()):
    return bad(f"unknown field `{field}`", instance, (*where, field), value)


LEGACY_PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"  # RSA-era sha256 PeerId
CID_V0 = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
UPPER_CID = "B" + CAP_ECHO[1:].upper()
# A dag-cbor CIDv1 with a SHA2-256 multihash (0x12), as IPFS makes them: not capmesh's profile.
SHA256_CID = cid("sha256", hash_code=0x12)


def examples():
    """Relative path -> {"valid": [...], "invalid": [...]}."""
    ex = {}

    ex["records/Contract.json"] = {
        "valid": [CONTRACT, CONTRACT_MINIMAL],
        "invalid": [
            missing(CONTRACT, "streaming"),
            extra(CONTRACT, "author", "bob"),
            bad("`name` is not lower-case", CONTRACT, ("name",), "Echo"),
            bad("`version` is not semver (missing patch)", CONTRACT, ("version",), "1.2"),
            bad("`version` has a leading zero", CONTRACT, ("version",), "01.2.0"),
            bad("`tags` repeats a tag", CONTRACT, ("tags",), ["text", "text"]),
            bad(
                f"`tags` has more than {MAX_TAGS} tags",
                CONTRACT,
                ("tags",),
                [f"t{i}" for i in range(MAX_TAGS + 1)],
            ),
            bad("a tag has an upper-case letter", CONTRACT, ("tags", 0), "Builtin"),
            bad("`input` is not a JSON Schema (a string)", CONTRACT, ("input",), "object"),
            bad("`read_only` is a string, not a boolean", CONTRACT, ("read_only",), "true"),
        ],
    }
    ex["records/Advert.json"] = {
        "valid": [ADVERT, ADVERT_MINIMAL],
        "invalid": [
            missing(ADVERT, "limits"),
            extra(ADVERT, "contract", CONTRACT),
            bad("`provider` is an RSA-era PeerId, not ed25519", ADVERT, ("provider",), LEGACY_PEER),
            bad("`capability` is a CIDv0", ADVERT, ("capability",), CID_V0),
            bad("`capability` is upper-case base32", ADVERT, ("capability",), UPPER_CID),
            bad("an address is a number", ADVERT, ("addrs", 0), 4001),
            bad("`price.amount` is negative", ADVERT, ("price", "amount"), -1),
            bad("`price.unit` is missing", ADVERT, ("price", "unit")),
            bad("`limits.concurrency` exceeds u32", ADVERT, ("limits", "concurrency"), U32_MAX + 1),
            bad("`limits` has an unknown field", ADVERT, ("limits", "burst"), 2),
            bad("`seq` is a string", ADVERT, ("seq",), "3"),
            bad("`expires` exceeds u64", ADVERT, ("expires",), U64_MAX + 1),
        ],
    }
    ex["records/Retirement.json"] = {
        "valid": [RETIREMENT],
        "invalid": [
            missing(RETIREMENT, "seq"),
            extra(RETIREMENT, "expires", NOW),
            bad("`capability` uses a SHA-256 multihash", RETIREMENT, ("capability",), SHA256_CID),
            bad("`provider` is null", RETIREMENT, ("provider",), None),
        ],
    }
    ex["records/Attestation.json"] = {
        "valid": [ATTESTATION, ATTESTATION_CID],
        "invalid": [
            missing(ATTESTATION, "issuer"),
            extra(ATTESTATION, "signature", sig("x")),
            bad(
                "`subject` names two variants",
                ATTESTATION,
                ("subject",),
                {"peer": BOB.peer, "cid": CAP_ECHO},
            ),
            bad("`subject` has an unknown variant", ATTESTATION, ("subject",), {"key": BOB.key}),
            bad("`subject.peer` holds a CID", ATTESTATION, ("subject",), {"peer": CAP_ECHO}),
            bad("`claim` is upper-case", ATTESTATION, ("claim",), "Audited"),
            bad("`claim` starts with a separator", ATTESTATION, ("claim",), "/audited"),
        ],
    }
    ex["records/Receipt.json"] = {
        "valid": [RECEIPT, RECEIPT_FAILED],
        "invalid": [
            missing(RECEIPT, "validation"),
            extra(RECEIPT, "id", RECEIPT_ID),
            bad("`output` is null instead of absent", RECEIPT, ("output",), None),
            bad("`status` is not PascalCase", RECEIPT, ("status",), "ok"),
            bad("`validation` is not a known value", RECEIPT, ("validation",), "Unknown"),
            bad("`call` is 32 bytes, not 16", RECEIPT, ("call",), b64(fake_bytes("call", 32))),
            bad("`input` is padded base64", RECEIPT, ("input",), RECEIPT["input"] + "="),
            bad(
                "`input` is standard base64, not base64url",
                RECEIPT,
                ("input",),
                "+/" + RECEIPT["input"][2:],
            ),
            bad("`input` is hex", RECEIPT, ("input",), fake_bytes("input", 32).hex()),
        ],
    }
    ex["records/Countersignature.json"] = {
        "valid": [COUNTERSIGNATURE],
        "invalid": [
            missing(COUNTERSIGNATURE, "signed"),
            extra(COUNTERSIGNATURE, "provider", BOB.peer),
            bad("`receipt` is a PeerId", COUNTERSIGNATURE, ("receipt",), BOB.peer),
            bad("`caller` is a public key, not a PeerId", COUNTERSIGNATURE, ("caller",), ALICE.key),
        ],
    }
    ex["records/LedgerHead.json"] = {
        "valid": [LEDGER_HEAD, LEDGER_HEAD_EMPTY],
        "invalid": [
            missing(LEDGER_HEAD, "len"),
            extra(LEDGER_HEAD, "first", 0),
            bad("`len` is negative", LEDGER_HEAD, ("len",), -1),
            bad("`hash` is 31 bytes", LEDGER_HEAD, ("hash",), b64(fake_bytes("chain:4", 31))),
            bad("`node` is a public key, not a PeerId", LEDGER_HEAD, ("node",), BOB.key),
        ],
    }
    ex["records/Signed.json"] = {
        "valid": [SIGNED_ADVERT, SIGNED_RECEIPT, SIGNED_COUNTERSIGNATURE, SIGNED_LEDGER_HEAD],
        "invalid": [
            missing(SIGNED_ADVERT, "sig"),
            extra(SIGNED_ADVERT, "id", cid("advert")),
            bad(
                "`payload` is base64 CBOR bytes, not the record's JSON",
                SIGNED_ADVERT,
                ("payload",),
                b64(b"\xa1\x61a\x01"),
            ),
            bad("`sig` is 63 bytes", SIGNED_ADVERT, ("sig",), b64(fake_bytes("short", 63))),
            bad(
                "`sig` has non-zero trailing bits",
                SIGNED_ADVERT,
                ("sig",),
                SIGNED_ADVERT["sig"][:-1] + "B",
            ),
        ],
    }

    # Kind bodies.
    advertise = {"advert": SIGNED_ADVERT, "contract": CONTRACT}
    ex["kinds/AdvertiseCapability.json"] = {
        "valid": [advertise, {"advert": signed_example(ADVERT_MINIMAL, "a2"), "contract": CONTRACT_MINIMAL}],
        "invalid": [
            missing(advertise, "contract"),
            extra(advertise, "capability", CAP_ECHO),
            bad("`advert.payload` misses `seq`", advertise, ("advert", "payload", "seq")),
            bad("`contract.name` has a space", advertise, ("contract", "name"), "echo tool"),
            bad("`advert` is a bare Advert, not signed", advertise, ("advert",), ADVERT),
        ],
    }
    retire = {"retirement": SIGNED_RETIREMENT}
    ex["kinds/Retire.json"] = {
        "valid": [retire],
        "invalid": [
            missing(retire, "retirement"),
            extra(retire, "advert", SIGNED_ADVERT),
            bad(
                "`retirement.payload` has an unknown field",
                retire,
                ("retirement", "payload", "expires"),
                NOW,
            ),
        ],
    }
    attest = {"attestation": SIGNED_ATTESTATION}
    ex["kinds/Attest.json"] = {
        "valid": [attest, {"attestation": signed_example(ATTESTATION_CID, "a3")}],
        "invalid": [
            missing(attest, "attestation"),
            extra(attest, "subject", {"peer": BOB.peer}),
            bad("`attestation.sig` is missing", attest, ("attestation", "sig")),
        ],
    }
    discover = {"ids": [CAP_ECHO, ATTESTATION_ID], "filter": FILTER, "limit": 50, "cursor": b64(b"page-2")}
    discover_min = {"ids": [], "limit": 0}
    ex["kinds/Discover.json"] = {
        "valid": [discover, discover_min, {"ids": [], "filter": {"tags": []}, "limit": 20}],
        "invalid": [
            missing(discover, "limit"),
            extra(discover, "offset", 10),
            bad("`filter` misses `tags`", discover, ("filter", "tags")),
            bad("`filter.tags` holds a number", discover, ("filter", "tags", 0), 7),
            bad("`filter.claim` is a list", discover, ("filter", "claim"), ["audited"]),
            bad("`filter.name_prefix` is null", discover, ("filter", "name_prefix"), None),
            bad("`cursor` is not base64url", discover, ("cursor",), "page 2"),
            bad("`limit` exceeds u32", discover, ("limit",), U32_MAX + 1),
            bad("`ids` holds a PeerId", discover, ("ids", 0), BOB.peer),
        ],
    }
    discover_result = {
        "contracts": [CONTRACT],
        "adverts": [SIGNED_ADVERT],
        "attestations": [SIGNED_ATTESTATION],
        "retirements": [SIGNED_RETIREMENT],
        "cursor": b64(b"page-3"),
    }
    discover_result_min = {"contracts": [], "adverts": [], "attestations": [], "retirements": []}
    ex["kinds/DiscoverResult.json"] = {
        "valid": [discover_result, discover_result_min],
        "invalid": [
            missing(discover_result, "retirements"),
            extra(discover_result, "more", True),
            bad("an advert is a Retirement", discover_result, ("adverts", 0), SIGNED_RETIREMENT),
            bad("`cursor` is null", discover_result, ("cursor",), None),
        ],
    }
    sync_log = {"log": {"from": 0, "limit": 100}}
    sync_reconcile = {"reconcile": {"ranges": [SYNC_RANGE]}}
    ex["kinds/Sync.json"] = {
        "valid": [sync_log, sync_reconcile, {"reconcile": {"ranges": []}}],
        "invalid": [
            bad("`log` misses `limit`", sync_log, ("log", "limit")),
            extra(sync_log, "reconcile", {"ranges": []}),
            bad("`log` has an unknown field", sync_log, ("log", "to"), 10),
            {"why": "unknown variant `range`", "instance": {"range": {"from": 0, "limit": 100}}},
            bad("a range misses `fingerprint`", sync_reconcile, ("reconcile", "ranges", 0, "fingerprint")),
            bad(
                "a range's `lower` is CID text, not base64url bytes",
                sync_reconcile,
                ("reconcile", "ranges", 0, "lower"),
                CAP_ECHO,
            ),
            bad(
                "a range's `lower` is 35 bytes, neither empty nor a binary record id",
                sync_reconcile,
                ("reconcile", "ranges", 0, "lower"),
                b64(bytes([0x01, 0x71, 0x1E, 0x20]) + bytes(31)),
            ),
        ],
    }
    sync_result = {
        "records": [
            {"advert": SIGNED_ADVERT},
            {"retirement": SIGNED_RETIREMENT},
            {"attestation": SIGNED_ATTESTATION},
        ],
        "contracts": [CONTRACT],
        "next": 43,
        "head": 57,
        "ranges": [],
    }
    ex["kinds/SyncResult.json"] = {
        "valid": [
            sync_result,
            {"records": [], "contracts": [], "next": 0, "head": 0, "ranges": [SYNC_RANGE]},
        ],
        "invalid": [
            missing(sync_result, "head"),
            extra(sync_result, "done", True),
            bad("a record is not tagged by its type", sync_result, ("records", 0), SIGNED_ADVERT),
            bad("a record's tag is not lower-case", sync_result, ("records", 0), {"Advert": SIGNED_ADVERT}),
            bad(
                "a record tagged `advert` holds a Retirement",
                sync_result,
                ("records", 0),
                {"advert": SIGNED_RETIREMENT},
            ),
            bad(
                "`ranges` (reconcile mode) with a non-zero `next`",
                sync_result,
                ("ranges",),
                [SYNC_RANGE],
            ),
        ],
    }
    intent = {
        "capability": CAP_ECHO,
        "max_price": {"amount": 10, "unit": "credit"},
        "calls": 1,
        "deadline": NOW + MINUTE,
    }
    intent_min = {"capability": CAP_ECHO, "calls": 100, "deadline": NOW + MINUTE}
    ex["kinds/Intent.json"] = {
        "valid": [intent, intent_min],
        "invalid": [
            missing(intent, "deadline"),
            extra(intent, "args", {"text": "hi"}),
            bad("`max_price` misses `unit`", intent, ("max_price", "unit")),
            bad("`max_price` is null", intent, ("max_price",), None),
            bad("`calls` is negative", intent, ("calls",), -1),
        ],
    }
    offer = {"capability": CAP_ECHO, "price": PRICE, "latency_ms": 40, "calls": 100, "expires": NOW + HOUR}
    ex["kinds/Offer.json"] = {
        "valid": [offer],
        "invalid": [
            missing(offer, "price"),
            extra(offer, "provider", BOB.peer),
            bad("`price.unit` is a number", offer, ("price", "unit"), 5),
            bad("`latency_ms` is a string", offer, ("latency_ms",), "40ms"),
        ],
    }
    negotiate = {
        "action": "Counter",
        "offer": OFFER_ID,
        "price": {"amount": 4, "unit": "credit"},
        "reason": "price above my budget",
    }
    ex["kinds/Negotiate.json"] = {
        "valid": [negotiate, {"action": "Decline"}, {"action": "Accept", "offer": OFFER_ID}],
        "invalid": [
            missing(negotiate, "action"),
            extra(negotiate, "calls", 2),
            bad("`action` is lower-case", negotiate, ("action",), "counter"),
            bad("`reason` is null", negotiate, ("reason",), None),
            bad("`Counter` without `price`", negotiate, ("price",)),
            bad("`Counter` without `offer`", negotiate, ("offer",)),
            {"why": "`Accept` without `offer`", "instance": {"action": "Accept"}},
        ],
    }
    task_start = {
        "call": CALL,
        "capability": CAP_ECHO,
        "offer": OFFER_ID,
        "args": {"text": "hello"},
        "deadline": NOW + 30_000,
    }
    ex["kinds/TaskStart.json"] = {
        "valid": [task_start, {**task_start, "args": ["any", 1, None, True]}],
        "invalid": [
            missing(task_start, "args"),
            extra(task_start, "price", PRICE),
            bad("`call` is 8 bytes, not 16", task_start, ("call",), b64(fake_bytes("call", 8))),
            bad("`offer` is a PeerId", task_start, ("offer",), BOB.peer),
        ],
    }
    accepted = {"call": CALL}
    ex["kinds/TaskAccepted.json"] = {
        "valid": [accepted],
        "invalid": [
            missing(accepted, "call"),
            extra(accepted, "eta_ms", 1000),
            bad("`call` is hex", accepted, ("call",), fake_bytes("call:1", 16).hex()),
        ],
    }
    first_chunk = b"first chunk of the output"
    progress = {
        "call": CALL,
        "seq": 0,
        "data": b64(first_chunk),
        "chain": b64(blake3(bytes(32) + first_chunk)),
    }
    ex["kinds/TaskProgress.json"] = {
        "valid": [progress, {**progress, "seq": 7, "data": ""}],
        "invalid": [
            missing(progress, "chain"),
            extra(progress, "last", True),
            bad("`data` is plain text, not base64url", progress, ("data",), "first chunk"),
            bad("`chain` is 31 bytes", progress, ("chain",), b64(fake_bytes("chain", 31))),
        ],
    }
    done_ok = {"call": CALL, "output": {"text": "hello"}, "receipt": SIGNED_RECEIPT}
    done_error = {
        "call": CALL,
        "error": {"code": "Timeout", "message": "the capability ran past 30000 ms", "retryable": True},
        "receipt": SIGNED_RECEIPT_FAILED,
    }
    done_streamed = {"call": CALL, "receipt": SIGNED_RECEIPT}
    ex["kinds/TaskDone.json"] = {
        "valid": [done_ok, done_error, done_streamed, {**done_ok, "output": None}],
        "invalid": [
            missing(done_ok, "receipt"),
            extra(done_ok, "status", "Ok"),
            bad("`error.code` is a number", done_error, ("error", "code"), 408),
            bad("`error` is null", done_error, ("error",), None),
            bad("both `output` and `error`", done_ok, ("error",), done_error["error"]),
            bad("`error` with a receipt of status `Ok`", done_error, ("receipt",), SIGNED_RECEIPT),
            bad(
                "no `error` with a receipt of status `TimedOut`",
                done_ok,
                ("receipt",),
                SIGNED_RECEIPT_FAILED,
            ),
            bad("`receipt.payload.status` is unknown", done_ok, ("receipt", "payload", "status"), "Done"),
            bad("`receipt` is the countersignature", done_ok, ("receipt",), SIGNED_COUNTERSIGNATURE),
        ],
    }
    cancel = {"call": CALL, "reason": "the agent gave up"}
    ex["kinds/TaskCancel.json"] = {
        "valid": [cancel, {"call": CALL}],
        "invalid": [
            missing(cancel, "call"),
            extra(cancel, "force", True),
            bad("`reason` is a number", cancel, ("reason",), 1),
        ],
    }
    countersign = {"countersignature": SIGNED_COUNTERSIGNATURE}
    ex["kinds/Receipt.json"] = {
        "valid": [countersign],
        "invalid": [
            missing(countersign, "countersignature"),
            extra(countersign, "receipt", SIGNED_RECEIPT),
            bad(
                "`countersignature.payload` misses `receipt`",
                countersign,
                ("countersignature", "payload", "receipt"),
            ),
        ],
    }
    ex["kinds/Error.json"] = {
        "valid": [ERROR, {"code": "Expired", "message": "", "retryable": False}],
        "invalid": [
            missing(ERROR, "retryable"),
            extra(ERROR, "details", {}),
            bad("`code` is a number", ERROR, ("code",), 403),
            bad("`retry_after_ms` is negative", ERROR, ("retry_after_ms",), -5),
        ],
    }

    # Envelopes.
    payload = {
        "v": 1,
        "kind": "Offer",
        "from": BOB.key,
        "to": ALICE.peer,
        "ts": NOW,
        "exp": NOW + MINUTE,
        "nonce": b64(fake_bytes("nonce", 8)),
        "trace": b64(fake_bytes("trace", 16)),
        "re": cid("envelope:intent"),
        "schema": cid("schema:Offer"),
        "body": offer,
    }
    payload_gossip = {
        "v": 1,
        "kind": "AdvertiseCapability",
        "from": BOB.key,
        "ts": NOW,
        "exp": NOW + 5 * MINUTE,
        "nonce": b64(fake_bytes("nonce:2", 8)),
        "trace": b64(fake_bytes("trace:2", 16)),
        "schema": cid("schema:AdvertiseCapability"),
        "body": advertise,
    }
    ex["EnvelopePayload.json"] = {
        "valid": [payload, payload_gossip],
        "invalid": [
            missing(payload, "schema"),
            extra(payload, "id", cid("envelope")),
            bad("`v` is a string", payload, ("v",), "1"),
            bad("`v` is negative", payload, ("v",), -1),
            bad("`kind` is a reserved name, not a v1 kind", payload, ("kind",), "PolicyUpdate"),
            bad("`from` is a PeerId, not a public key", payload, ("from",), BOB.peer),
            bad("`nonce` is 16 bytes, not 8", payload, ("nonce",), b64(fake_bytes("nonce", 16))),
            bad("`trace` is 8 bytes, not 16", payload, ("trace",), b64(fake_bytes("trace", 8))),
            bad("`to` is null", payload, ("to",), None),
            bad("`re` is not a CID", payload, ("re",), "intent-1"),
            bad("`body` is an array", payload, ("body",), [offer]),
            bad("`ts` is a date string", payload, ("ts",), "2025-10-09T08:53:20Z"),
        ],
    }
    envelope = {"payload": payload, "sig": sig("envelope")}
    ex["Envelope.json"] = {
        "valid": [envelope, {"payload": payload_gossip, "sig": sig("envelope:2")}],
        "invalid": [
            missing(envelope, "payload"),
            extra(envelope, "id", cid("envelope")),
            bad("`payload` is base64 CBOR bytes, not JSON", envelope, ("payload",), b64(b"\xa0")),
            bad("`sig` is 32 bytes", envelope, ("sig",), b64(fake_bytes("sig", 32))),
            bad("`payload.kind` is unknown", envelope, ("payload", "kind"), "Ping"),
        ],
    }
    return ex


# ---------------------------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------------------------


def render(value):
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def outputs():
    files = {}
    for rel, doc in schemas().items():
        files[os.path.join(SCHEMAS, rel)] = render(doc)
    for rel, doc in examples().items():
        files[os.path.join(EXAMPLES, rel)] = render(doc)
    return files


def verify():
    """Checks every schema against the 2020-12 meta-schema, and every example against its
    schema: valid ones must pass, invalid ones must fail."""
    from jsonschema import Draft202012Validator

    failures = 0
    docs = schemas()
    exs = examples()
    assert set(docs) - {"plan/Plan.json"} == set(exs), set(docs) ^ set(exs)
    for rel, doc in sorted(docs.items()):
        Draft202012Validator.check_schema(doc)
        validator = Draft202012Validator(doc)
        if rel == "plan/Plan.json":
            failures += verify_plans(validator)
            continue
        for i, instance in enumerate(exs[rel]["valid"]):
            errors = list(validator.iter_errors(instance))
            for e in errors:
                failures += 1
                print(f"{rel}: valid[{i}] fails: {e.message} at {list(e.absolute_path)}")
        for i, case in enumerate(exs[rel]["invalid"]):
            if validator.is_valid(case["instance"]):
                failures += 1
                print(f"{rel}: invalid[{i}] ({case['why']}) passes")
        n_valid, n_invalid = len(exs[rel]["valid"]), len(exs[rel]["invalid"])
        if n_valid < 1 or n_invalid < 2:
            failures += 1
            print(f"{rel}: too few examples ({n_valid} valid, {n_invalid} invalid)")
    print(f"verified {len(docs)} schemas: {'ok' if not failures else f'{failures} failures'}")
    return failures == 0


def main(argv):
    check = "--check" in argv
    files = outputs()
    stale = []
    for path, text in sorted(files.items()):
        try:
            with open(path, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current == text:
            continue
        stale.append(path)
        if not check:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    unknown = []
    for root in (SCHEMAS, EXAMPLES):
        for folder, _, names in os.walk(root):
            if folder.startswith(os.path.join(EXAMPLES, "plans")):
                continue  # hand-written plan examples (see verify_plans)
            for name in names:
                path = os.path.join(folder, name)
                if name.endswith(".json") and path not in files:
                    unknown.append(path)
    for path in unknown:
        print(f"not generated by gen.py: {os.path.relpath(path)}")
    if check:
        for path in stale:
            print(f"out of date: {os.path.relpath(path)}")
    else:
        print(f"wrote {len(stale)} of {len(files)} files")
    ok = not (check and stale)
    if "--verify" in argv:
        ok = verify() and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
