//! The OpenAPI 3.1 document of the API, served at `GET /v1/openapi.json` (without a token: it
//! is the public contract, the same for every node of a version, and tells nothing about the
//! node) and checked in as `specs/openapi.json`.
//!
//! The document is generated from the code, not written beside it:
//!
//! - the bodies, query strings, events and frames are the `JsonSchema` derives of the types
//!   (schemars; JSON Schema 2020-12, the dialect of OpenAPI 3.1). Answers are described as
//!   serde serializes them (every field present unless skipped), requests as serde
//!   deserializes them (optional fields optional, unknown fields refused). Doc comments are the
//!   descriptions;
//! - the wire objects the API embeds (ids, prices, limits, filters, contracts, signed records)
//!   are not derived here: their schemas are those of `specs/schemas/`, compiled in, so the two
//!   cannot drift. Each field of such a type names its schema with `#[schemars(with = …)]` and
//!   one of the marker types below;
//! - the operations are [`operations`]: a row per route, with its errors; which token each may
//!   use comes from the server's own route lists (`SESSION_ROUTES`, `PUBLIC_ROUTES`).
//!
//! Tests check the rows against the router's routes, the served document against
//! `specs/openapi.json`, and that the schemas taken from `specs/schemas/` agree with each other.
//! `CAPMESH_BLESS=1 cargo test -p capmesh-api --test it openapi` rewrites the checked-in file.

use std::{borrow::Cow, collections::BTreeSet, sync::LazyLock};

use axum::http::Method;
use schemars::{
    JsonSchema, Schema, SchemaGenerator,
    generate::{Contract as SerdeContract, SchemaSettings},
    json_schema,
};
use serde_json::{Map, Value, json};

use crate::{
    MAX_BODY_BYTES,
    agents::{
        AgentFrame, CallAccepted, CallEvent, CallStatus, NodeFrame, SESSION_METADATA_MAX,
        SESSION_NAME_MAX, SESSION_TTL_DEFAULT_SECS, SESSION_TTL_MAX_SECS, SESSION_TTL_MIN_SECS,
        SessionCreated, SessionId, SessionInfo, SessionList, SessionRequest,
    },
    error::{ErrorBody, ErrorCode},
    server::{EventsParams, FindParams, PUBLIC_ROUTES, SESSION_ROUTES, SSE_KEEPALIVE},
    types::{
        ATTESTATIONS_DEFAULT, ATTESTATIONS_MAX, AttestRequest, AttestationList,
        AttestationsRequest, Attested, BlockRequest, Blocked, CallRequest, CallResult, Cancelled,
        ContractInfo, LEDGER_PAGE_DEFAULT, LEDGER_PAGE_MAX, LedgerHeadLine, LedgerPage,
        LedgerRequest, MAX_STREAM_BYTES, PeerInfo, PublishRequest, Published, QueryPage,
        QueryRequest, ReceiptEntries, Retired, Status,
    },
};

/// The document.
pub fn document() -> &'static Value {
    &DOCUMENT.0
}

/// The document as `specs/openapi.json` holds it and `GET /v1/openapi.json` serves it: keys
/// sorted (the top level in reading order), two-space indents, a final newline.
pub fn json() -> &'static str {
    &DOCUMENT.1
}

static DOCUMENT: LazyLock<(Value, String)> = LazyLock::new(|| {
    let (doc, _problems) = build();
    let text = render(&doc);
    (doc, text)
});

/// Where `$ref`s point.
const COMPONENTS: &str = "#/components/schemas/";

// ---------------------------------------------------------------------------------------------
// The wire schemas, from specs/schemas/.
// ---------------------------------------------------------------------------------------------

macro_rules! spec_files {
    ($($path:literal),* $(,)?) => {
        /// The schema files of `specs/schemas/` the API's bodies embed, compiled in.
        const SPEC_FILES: &[(&str, &str)] = &[$(
            ($path, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../specs/schemas/", $path))),
        )*];
    };
}

spec_files!(
    "records/Advert.json",
    "records/Attestation.json",
    "records/Contract.json",
    "records/Countersignature.json",
    "records/Receipt.json",
    "records/Signed.json",
    "kinds/Discover.json",
);

/// Definitions of `specs/schemas/` whose names the API's own types take: the receipt's
/// `CallStatus` (`Ok`, `Failed`, …) is not the API's `CallStatus` (an asynchronous call).
const RENAMED: &[(&str, &str)] = &[("CallStatus", "ReceiptStatus")];

/// The signed records the API serves, as `Signed<…>` of specs/schemas/records/Signed.json.
const SIGNED: &[&str] = &["Receipt", "Countersignature", "Attestation"];

/// Every definition of [`SPEC_FILES`] (their `$defs` and the files' own schemas, by title), its
/// `$ref`s pointing into the document's components, with `Signed<T>` for each of [`SIGNED`]
/// (as `SignedT`); and what did not fit (a name defined twice differently).
static WIRE: LazyLock<(Map<String, Value>, Vec<String>)> = LazyLock::new(wire_schemas);

fn wire_schemas() -> (Map<String, Value>, Vec<String>) {
    let mut out = Map::new();
    let mut problems = Vec::new();
    for (path, text) in SPEC_FILES {
        let mut file: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("specs/schemas/{path} is not JSON: {e}"));
                continue;
            }
        };
        point_refs_at_components(&mut file);
        let Some(file) = file.as_object_mut() else { continue };
        let defs = file.remove("$defs").and_then(|d| d.as_object().cloned()).unwrap_or_default();
        file.remove("$schema");
        let title = file.get("title").and_then(Value::as_str).unwrap_or(path).to_owned();
        let top = Value::Object(file.clone());
        for (name, schema) in defs.into_iter().chain([(title, top)]) {
            merge(&mut out, renamed(&name).to_owned(), schema, &mut problems, path);
        }
    }
    for record in SIGNED {
        let Some(mut signed) = out.get("Signed").cloned() else { break };
        signed["title"] = json!(format!("Signed {record}"));
        signed["description"] = json!(format!(
            "A signed {record}: its JSON projection `{{\"payload\": {record}, \"sig\": …}}` \
             (specs/schemas/records/Signed.json over {record}.json)."
        ));
        signed["properties"]["payload"] = json!({ "$ref": format!("{COMPONENTS}{record}") });
        out.insert(format!("Signed{record}"), signed);
    }
    (out, problems)
}

fn renamed(name: &str) -> &str {
    RENAMED.iter().find(|(from, _)| *from == name).map_or(name, |(_, to)| to)
}

/// Rewrites the `#/$defs/X` references of a file of specs/schemas/ to the components.
fn point_refs_at_components(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        if let Some(name) = r.strip_prefix("#/$defs/") {
                            *r = format!("{COMPONENTS}{}", renamed(name));
                        }
                    }
                    (_, v) => point_refs_at_components(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(point_refs_at_components),
        _ => {}
    }
}

/// Adds a definition, noting a name already defined differently.
fn merge(
    into: &mut Map<String, Value>,
    name: String,
    schema: Value,
    problems: &mut Vec<String>,
    from: &str,
) {
    match into.get(&name) {
        Some(old) if *old != schema => {
            problems.push(format!("schema {name} of {from} differs from the one already defined"))
        }
        Some(_) => {}
        None => {
            into.insert(name, schema);
        }
    }
}

/// The schema named `name` in specs/schemas/ (`true`, anything, if there is none: a test
/// checks that every marker has one).
fn wire_schema(name: &str) -> Schema {
    WIRE.0.get(name).cloned().and_then(|v| Schema::try_from(v).ok()).unwrap_or_default()
}

macro_rules! wire_types {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            #[derive(Debug)]
            pub(crate) struct $name;

            impl JsonSchema for $name {
                fn schema_name() -> Cow<'static, str> {
                    stringify!($name).into()
                }

                fn json_schema(_: &mut SchemaGenerator) -> Schema {
                    wire_schema(stringify!($name))
                }
            }
        )*

        #[cfg(test)]
        const WIRE_TYPES: &[&str] = &[$(stringify!($name)),*];
    };
}

wire_types!(
    /// `capmesh_types::Cid` as text.
    Cid,
    /// `capmesh_types::PeerId` as text.
    PeerId,
    /// `capmesh_types::Digest`, unpadded base64url.
    Digest,
    /// `capmesh_wire::CallId`, unpadded base64url.
    CallId,
    /// `capmesh_wire::repr::Bytes`, unpadded base64url.
    Bytes,
    /// A multiaddr's text.
    Multiaddr,
    /// `capmesh_wire::Price`.
    Price,
    /// `capmesh_wire::CallLimits`.
    Limits,
    /// `capmesh_wire::Filter`.
    Filter,
    /// An attestation's claim.
    Claim,
    /// A contract's JSON projection.
    Contract,
    /// `Signed<Receipt>`'s JSON projection.
    SignedReceipt,
    /// `Signed<Countersignature>`'s JSON projection.
    SignedCountersignature,
    /// `Signed<Attestation>`'s JSON projection.
    SignedAttestation,
);

/// The subject of `POST /v1/attest`: a peer id or a CID, as text.
#[derive(Debug)]
pub(crate) struct SubjectText;

impl JsonSchema for SubjectText {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "SubjectText".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "anyOf": [g.subschema_for::<PeerId>(), g.subschema_for::<Cid>()],
        })
    }
}

/// The `record` of a ledger entry: a signed receipt or countersignature.
#[derive(Debug)]
pub(crate) struct LedgerRecord;

impl JsonSchema for LedgerRecord {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "LedgerRecord".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "oneOf": [
                g.subschema_for::<SignedReceipt>(),
                g.subschema_for::<SignedCountersignature>(),
            ],
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The operations.
// ---------------------------------------------------------------------------------------------

/// One operation: a route of the server.
#[derive(Debug)]
pub(crate) struct Op {
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    id: &'static str,
    tag: &'static str,
    summary: &'static str,
    description: String,
    parameters: Vec<Value>,
    body: Option<Schema>,
    /// Its success answers, by status.
    ok: Value,
    /// The error codes it answers besides `Unauthorized` (and `Denied` for a session's token on
    /// a route that is not its), each its own response; others fall to `default`.
    errors: &'static [ErrorCode],
    extensions: Value,
}

impl Op {
    fn new(method: Method, path: &'static str, id: &'static str, tag: &'static str) -> Self {
        Op {
            method,
            path,
            id,
            tag,
            summary: "",
            description: String::new(),
            parameters: Vec::new(),
            body: None,
            ok: json!({}),
            errors: &[],
            extensions: json!({}),
        }
    }

    fn doc(mut self, summary: &'static str, description: impl Into<String>) -> Self {
        self.summary = summary;
        self.description = description.into();
        self
    }

    fn param(mut self, param: Value) -> Self {
        self.parameters.push(param);
        self
    }

    fn params(mut self, params: Vec<Value>) -> Self {
        self.parameters.extend(params);
        self
    }

    fn body(mut self, schema: Schema) -> Self {
        self.body = Some(schema);
        self
    }

    /// A JSON answer.
    fn ok(self, status: u16, description: &str, schema: Schema) -> Self {
        self.answer(
            status,
            json!({ "description": description, "content": { "application/json": { "schema": schema } } }),
        )
    }

    fn answer(mut self, status: u16, response: Value) -> Self {
        self.ok[status.to_string()] = response;
        self
    }

    fn errors(mut self, errors: &'static [ErrorCode]) -> Self {
        self.errors = errors;
        self
    }

    fn extension(mut self, name: &str, value: Value) -> Self {
        self.extensions[name] = value;
        self
    }

    /// Who may use it, from the server's own lists.
    fn scope(&self) -> Scope {
        let on = |routes: &[(Method, &str)]| {
            routes.iter().any(|(m, p)| *m == self.method && *p == self.path)
        };
        if on(PUBLIC_ROUTES) {
            Scope::Public
        } else if on(SESSION_ROUTES) {
            Scope::Session
        } else {
            Scope::Node
        }
    }

    fn to_json(&self) -> Value {
        let scope = self.scope();
        let mut responses = self.ok.clone();
        let mut codes: Vec<ErrorCode> = match scope {
            Scope::Public => vec![],
            Scope::Session => vec![ErrorCode::Unauthorized],
            Scope::Node => vec![ErrorCode::Unauthorized, ErrorCode::Denied],
        };
        for code in self.errors {
            if !codes.contains(code) {
                codes.push(*code);
            }
        }
        for code in codes {
            responses[code.http_status().to_string()] =
                json!({ "$ref": format!("#/components/responses/{}", code.as_str()) });
        }
        if scope != Scope::Public {
            responses["default"] = json!({ "$ref": "#/components/responses/Error" });
        }
        let security = match scope {
            Scope::Public => json!([]),
            Scope::Session => json!([{ "nodeToken": [] }, { "sessionToken": [] }]),
            Scope::Node => json!([{ "nodeToken": [] }]),
        };
        let mut op = json!({
            "operationId": self.id,
            "tags": [self.tag],
            "summary": self.summary,
            "description": self.description,
            "security": security,
            "responses": responses,
        });
        if !self.parameters.is_empty() {
            op["parameters"] = json!(self.parameters);
        }
        if let Some(body) = &self.body {
            op["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": body } },
            });
        }
        if let (Some(op), Some(ext)) = (op.as_object_mut(), self.extensions.as_object()) {
            op.extend(ext.clone());
        }
        op
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// No token needed.
    Public,
    /// The node's token or a session's.
    Session,
    /// The node's token only.
    Node,
}

/// A path parameter.
fn path_param(name: &str, schema: Schema, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "schema": schema, "description": description })
}

fn header(name: &str, required: bool, schema: Value, description: &str) -> Value {
    json!({ "name": name, "in": "header", "required": required, "schema": schema, "description": description })
}

/// The query parameters of `T`, a query string's struct: one per field.
fn query<T: JsonSchema>(g: &mut SchemaGenerator) -> Vec<Value> {
    let schema = T::json_schema(g);
    let required: BTreeSet<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, property)| {
            let mut property = property.clone();
            let description = property.as_object_mut().and_then(|p| p.remove("description"));
            // An `Option` field is a parameter left out, never a `null`.
            if let Some(types) = property.get_mut("type").and_then(Value::as_array_mut) {
                types.retain(|t| t != "null");
                if let [only] = types.as_slice() {
                    property["type"] = only.clone();
                }
            }
            let mut param = json!({
                "name": name,
                "in": "query",
                "required": required.contains(name.as_str()),
                "schema": property,
            });
            if let Some(d) = description {
                param["description"] = d;
            }
            param
        })
        .collect()
}

/// Which errors each route answers with its own response (api.md's lists).
mod errs {
    use crate::ErrorCode::{self, *};

    pub(super) const BAD: &[ErrorCode] = &[BadRequest];
    pub(super) const BAD_OR_MISSING: &[ErrorCode] = &[BadRequest, NotFound];
    pub(super) const PUBLISH: &[ErrorCode] = &[BadRequest, Conflict];
    pub(super) const CONTRACT: &[ErrorCode] = &[BadRequest, NotFound, Unavailable];
    pub(super) const CALL: &[ErrorCode] = &[
        BadRequest,
        Denied,
        NotFound,
        Conflict,
        RateLimited,
        Cancelled,
        Internal,
        CallFailed,
        Unavailable,
        Timeout,
    ];
    pub(super) const START_CALL: &[ErrorCode] = &[BadRequest, NotFound, Conflict, RateLimited];
    pub(super) const OPEN_SESSION: &[ErrorCode] = &[BadRequest, RateLimited];
}

/// Every route of the server, in the router's order. `res` describes answers, `req` requests.
pub(crate) fn operations(res: &mut SchemaGenerator, req: &mut SchemaGenerator) -> Vec<Op> {
    use Method as M;
    let capability = |g: &mut SchemaGenerator| {
        path_param("capability", g.subschema_for::<Cid>(), "The capability id (a CID, `b…`).")
    };
    let call_id = |g: &mut SchemaGenerator| {
        path_param(
            "call_id",
            g.subschema_for::<CallId>(),
            "The call's id: 16 bytes as unpadded base64url (22 characters).",
        )
    };
    let session = |g: &mut SchemaGenerator| {
        path_param(
            "session",
            g.subschema_for::<SessionId>(),
            "The session's id; with a session's token, its own (another is `404 NotFound`).",
        )
    };
    let traceparent = header(
        "traceparent",
        false,
        json!({
            "type": "string",
            "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$",
        }),
        "A W3C Trace Context `traceparent` (`00-<32 hex trace id>-<16 hex parent id>-<2 hex \
         flags>`): the call's trace id (api.md §4.7). Without it the node picks one; a malformed \
         one is `400 BadRequest`.",
    );
    let no_store = json!({
        "Cache-Control": { "schema": { "type": "string", "const": "no-store" } },
    });

    vec![
        Op::new(M::GET, "/v1/status", "status", "node")
            .doc("What the node is and how it is doing", "api.md §3.1.")
            .ok(200, "The node's status.", res.subschema_for::<Status>()),
        Op::new(M::GET, "/v1/peers", "peers", "node")
            .doc("The peers the node knows", "api.md §3.2.")
            .ok(200, "The peers, connected or not.", res.subschema_for::<Vec<PeerInfo>>()),
        Op::new(M::GET, "/v1/blocked", "blocked", "node")
            .doc("The peers the node refuses", "api.md §3.13.")
            .ok(200, "The peers blocked now, sorted.", res.subschema_for::<Blocked>()),
        Op::new(M::POST, "/v1/blocked", "block", "node")
            .doc(
                "Block and unblock peers",
                "Unblocking comes first, so a peer in both lists ends blocked. All or nothing: a \
                 malformed peer id or a list over the node's cap changes nothing. api.md §3.13.",
            )
            .body(req.subschema_for::<BlockRequest>())
            .ok(200, "The peers blocked afterwards.", res.subschema_for::<Blocked>())
            .errors(errs::BAD),
        Op::new(M::POST, "/v1/capabilities", "publish", "capabilities")
            .doc(
                "Publish a capability",
                "Checks the contract, signs an advert with the next `seq` and gossips it. A \
                 capability nothing on this node serves is `409 Conflict` unless \
                 `announce_only`. api.md §3.3.",
            )
            .body(req.subschema_for::<PublishRequest>())
            .ok(200, "The advert published.", res.subschema_for::<Published>())
            .errors(errs::PUBLISH),
        Op::new(M::DELETE, "/v1/capabilities/{capability}", "retire", "capabilities")
            .doc("Retire a capability's advert", "api.md §3.4.")
            .param(capability(req))
            .ok(200, "The retirement published.", res.subschema_for::<Retired>())
            .errors(errs::BAD_OR_MISSING),
        Op::new(M::GET, "/v1/find/{capability}", "find", "discovery")
            .doc(
                "Find providers of a capability",
                "Searches the replica and the network. The answer is a stream of lines, each \
                 sent as soon as it is known: `{\"hit\": …}` per provider, then one \
                 `{\"done\": …}`, after which the response ends. An answer that ends without \
                 `done` was cut short. api.md §3.5.",
            )
            .param(capability(req))
            .params(query::<FindParams>(req))
            .answer(
                200,
                json!({
                    "description": "Newline-delimited JSON: one FindEvent per line.",
                    "headers": no_store,
                    "content": {
                        "application/x-ndjson": { "schema": res.subschema_for::<crate::FindEvent>() },
                    },
                }),
            )
            .errors(errs::BAD),
        Op::new(M::GET, "/v1/contracts/{capability}", "contract", "discovery")
            .doc(
                "A capability's contract",
                "From the replica, else from a provider found on the network (checked to hash \
                 to the id). api.md §3.12.",
            )
            .param(capability(req))
            .ok(200, "The contract.", res.subschema_for::<ContractInfo>())
            .errors(errs::CONTRACT),
        Op::new(M::POST, "/v1/registry/query", "query", "discovery")
            .doc("Query the replica", "Reads the node's own replica, no network. api.md §3.6.")
            .body(req.subschema_for::<QueryRequest>())
            .ok(200, "A page of live adverts.", res.subschema_for::<QueryPage>())
            .errors(errs::BAD),
        Op::new(M::GET, "/v1/receipts", "receipts", "receipts")
            .doc(
                "Read the receipt ledger",
                format!(
                    "A page of at most `limit` entries (1 to {LEDGER_PAGE_MAX}, default \
                     {LEDGER_PAGE_DEFAULT}) from `from` on; follow `next` until it is `null`. \
                     api.md §3.7."
                ),
            )
            .params(query::<LedgerRequest>(req))
            .ok(200, "A page of the ledger.", res.subschema_for::<LedgerPage>())
            .errors(errs::BAD),
        Op::new(M::GET, "/v1/receipts/head", "ledgerHead", "receipts")
            .doc(
                "The ledger's signed head",
                "The ledger's length and last chain hash, signed now by the node \
                 (protocol.md §6.9): the last line of an export of the entries `0..len` \
                 (§6.10). api.md §3.8.",
            )
            .ok(200, "The head line.", res.subschema_for::<LedgerHeadLine>()),
        Op::new(M::GET, "/v1/receipts/{receipt}", "receipt", "receipts")
            .doc("One receipt and its countersignature", "api.md §3.8.")
            .param(path_param(
                "receipt",
                req.subschema_for::<Cid>(),
                "The receipt's id (a CID, `b…`): the `id` of its ledger entry.",
            ))
            .ok(200, "The receipt's ledger entries.", res.subschema_for::<ReceiptEntries>())
            .errors(errs::BAD_OR_MISSING),
        Op::new(M::POST, "/v1/call", "call", "calls")
            .doc(
                "Call a capability and wait for its end",
                "Checks the arguments against the contract before anything leaves the node, \
                 finds providers, negotiates, calls, verifies the output and the receipt, fails \
                 over within the deadline. Answers when the call has ended: do not bound the \
                 request by a shorter timeout. Closing the connection cancels the call. An \
                 error of a call that was attempted carries `call` (a CallFailure), and \
                 `Retry-After` when a provider named a wait. api.md §3.9.",
            )
            .param(traceparent.clone())
            .body(req.subschema_for::<CallRequest>())
            .ok(200, "The call succeeded.", res.subschema_for::<CallResult>())
            .errors(errs::CALL),
        Op::new(M::POST, "/v1/calls", "start_call", "calls")
            .doc(
                "Start a call and answer at once",
                "The call runs on in the node: read it with `GET /v1/calls/{call_id}`, follow \
                 its events, cancel it. Everything after the request's checks (the arguments' \
                 included) is reported by the call's state and events. api.md §4.5.",
            )
            .param(traceparent)
            .body(req.subschema_for::<CallRequest>())
            .answer(
                202,
                json!({
                    "description": "The call is accepted; its state is `finding`.",
                    "headers": {
                        "Location": {
                            "description": "`/v1/calls/{call_id}`.",
                            "schema": { "type": "string" },
                        },
                    },
                    "content": {
                        "application/json": { "schema": res.subschema_for::<CallAccepted>() },
                    },
                }),
            )
            .errors(errs::START_CALL),
        Op::new(M::GET, "/v1/calls/{call_id}", "call_status", "calls")
            .doc(
                "A call's state",
                "Every call through the API is kept while it runs and for a while after \
                 (api.md §4.5); a session's token sees only its own.",
            )
            .param(call_id(req))
            .ok(200, "The call.", res.subschema_for::<CallStatus>())
            .errors(errs::BAD_OR_MISSING),
        Op::new(M::GET, "/v1/calls/{call_id}/events", "call_events", "calls")
            .doc(
                "Follow a call's events (Server-Sent Events)",
                format!(
                    "The events kept from the starting id on, then the new ones as they \
                     happen; the stream ends after the final event (`done`, `failed` or \
                     `cancelled`). Each is one SSE message: `id: <n>` (from 0, without gaps), \
                     `event: <its event tag>`, `data: <the CallEvent as JSON, on one line>`, \
                     then a blank line. After {} s without an event the node sends the comment \
                     `: keep-alive`. A client that lost the connection reconnects with \
                     `Last-Event-ID` (or `from`). api.md §4.6.",
                    SSE_KEEPALIVE.as_secs()
                ),
            )
            .param(call_id(req))
            .params(query::<EventsParams>(req))
            .param(header(
                "Last-Event-ID",
                false,
                json!({ "type": "string", "pattern": "^\\s*[0-9]+\\s*$" }),
                "Start after this event id (what SSE clients send when they reconnect); \
                 `from` wins when both are given. Not an integer: `400 BadRequest`.",
            ))
            .answer(
                200,
                json!({
                    "description": "A `text/event-stream`: one message per event, whose `data` \
                                    is a CallEvent.",
                    "headers": no_store,
                    "content": {
                        "text/event-stream": { "schema": res.subschema_for::<CallEvent>() },
                    },
                }),
            )
            .errors(errs::BAD_OR_MISSING),
        Op::new(M::POST, "/v1/calls/{call_id}/cancel", "cancel", "calls")
            .doc(
                "Cancel a call in flight",
                "The provider is told; a pending `POST /v1/call` answers `499 Cancelled`, an \
                 asynchronous call ends `cancelled`. No body. Repeating it is harmless. \
                 api.md §3.10.",
            )
            .param(call_id(req))
            .ok(200, "The call was cancelled.", res.subschema_for::<Cancelled>())
            .errors(errs::BAD_OR_MISSING),
        Op::new(M::POST, "/v1/sessions", "open_session", "sessions")
            .doc(
                "Open an agent session",
                "Answers the session and its token, scoped to it (shown this once). api.md §4.1.",
            )
            .body(req.subschema_for::<SessionRequest>())
            .ok(201, "The session is open.", res.subschema_for::<SessionCreated>())
            .errors(errs::OPEN_SESSION),
        Op::new(M::GET, "/v1/sessions", "sessions", "sessions")
            .doc("The live sessions, oldest first", "api.md §4.1.")
            .ok(200, "The sessions.", res.subschema_for::<SessionList>()),
        Op::new(M::GET, "/v1/sessions/{session}", "session", "sessions")
            .doc("One session", "api.md §4.1.")
            .param(session(req))
            .ok(200, "The session.", res.subschema_for::<SessionInfo>())
            .errors(errs::BAD_OR_MISSING),
        Op::new(M::DELETE, "/v1/sessions/{session}", "end_session", "sessions")
            .doc(
                "End a session",
                "Its runtime's adverts are retired and its socket closed; its token stops \
                 working. api.md §4.1.",
            )
            .param(session(req))
            .ok(200, "The session as it was just before its end.", res.subschema_for::<SessionInfo>())
            .errors(errs::BAD_OR_MISSING),
        Op::new(M::POST, "/v1/sessions/{session}/heartbeat", "heartbeat", "sessions")
            .doc(
                "Extend a session",
                "Sets its end to now + `ttl_secs`. No body (one sent is ignored). api.md §4.1.",
            )
            .param(session(req))
            .ok(200, "The session, with its new `expires_ms`.", res.subschema_for::<SessionInfo>())
            .errors(errs::BAD_OR_MISSING),
        Op::new(M::GET, "/v1/sessions/{session}/runtime", "attach", "sessions")
            .doc(
                "Attach the session's runtime (a WebSocket)",
                "A WebSocket (RFC 6455) upgrade. Both sides then send text messages, each one \
                 JSON frame with a `type`: the agent AgentFrames, the node NodeFrames (first a \
                 `welcome`); `x-websocket` names their schemas. Refused frames get an `error` \
                 frame and the socket stays open. A second socket replaces the first. api.md \
                 §4.2, §4.3.",
            )
            .param(session(req))
            .param(header("Upgrade", true, json!({ "type": "string", "const": "websocket" }), "The WebSocket upgrade."))
            .param(header("Connection", true, json!({ "type": "string" }), "`Upgrade`."))
            .param(header("Sec-WebSocket-Version", true, json!({ "type": "string", "const": "13" }), "The WebSocket version."))
            .param(header("Sec-WebSocket-Key", true, json!({ "type": "string" }), "The client's handshake key."))
            .answer(
                101,
                json!({
                    "description": "Switching Protocols: frames follow, each a JSON text \
                                    message (api.md §4.3).",
                }),
            )
            .extension(
                "x-websocket",
                json!({
                    "client-frames": req.subschema_for::<AgentFrame>(),
                    "server-frames": res.subschema_for::<NodeFrame>(),
                }),
            )
            .errors(errs::BAD_OR_MISSING),
        Op::new(M::POST, "/v1/attest", "attest", "attestations")
            .doc(
                "Issue an attestation",
                "Signs it with the node's key, stores it and gossips it. api.md §3.11.",
            )
            .body(req.subschema_for::<AttestRequest>())
            .ok(200, "The attestation.", res.subschema_for::<Attested>())
            .errors(errs::BAD),
        Op::new(M::GET, "/v1/attestations", "attestations", "attestations")
            .doc(
                "List attestations",
                format!(
                    "Unexpired attestations the node holds (its own and those gossiped to it) \
                     matching every filter given, at most `limit` (1 to {ATTESTATIONS_MAX}, \
                     default {ATTESTATIONS_DEFAULT}). api.md §3.12."
                ),
            )
            .params(query::<AttestationsRequest>(req))
            .ok(200, "The attestations.", res.subschema_for::<AttestationList>())
            .errors(errs::BAD),
        Op::new(M::GET, "/v1/openapi.json", "openapi", "meta")
            .doc(
                "This document",
                "The API's OpenAPI 3.1 description. Public: no token is needed (any sent is not \
                 read), it is the same for every node of this version. api.md §7.",
            )
            .ok(
                200,
                "The OpenAPI document (specs/openapi.json).",
                json_schema!({ "type": "object" }),
            ),
    ]
}

// ---------------------------------------------------------------------------------------------
// The document.
// ---------------------------------------------------------------------------------------------

fn generator(contract: SerdeContract) -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
            s.contract = contract;
        })
        .into_generator()
}

/// The document, and what did not fit in it (names defined twice differently; tests want none).
pub(crate) fn build() -> (Value, Vec<String>) {
    let mut res = generator(SerdeContract::Serialize);
    let mut req = generator(SerdeContract::Deserialize);
    let mut paths = Map::new();
    for op in operations(&mut res, &mut req) {
        let item = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        item[op.method.as_str().to_ascii_lowercase()] = op.to_json();
    }

    let (wire, wire_problems) = &*WIRE;
    let mut problems = wire_problems.clone();
    let responses = error_responses(&mut res, &mut problems);
    let mut schemas = wire.clone();
    for (generator, name) in [(&mut res, "an answer"), (&mut req, "a request")] {
        for (n, schema) in generator.take_definitions(true) {
            merge(&mut schemas, n, schema, &mut problems, name);
        }
    }

    let mut doc = json!({
        "openapi": "3.1.0",
        "info": info(),
        "tags": tags(),
        "security": [{ "nodeToken": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": security_schemes(),
            "responses": responses,
            "headers": {
                "RetryAfter": {
                    "description": "Whole seconds, rounded up: the shortest wait a provider \
                                    asked for (`error.call.retry_after_ms`). Only on errors of \
                                    calls whose failure names one.",
                    "schema": { "type": "integer", "minimum": 1 },
                },
            },
            "schemas": schemas,
        },
    });
    tidy_descriptions(&mut doc);
    prune(&mut doc);
    (doc, problems)
}

fn info() -> Value {
    json!({
        "title": "capmesh local API",
        "version": "1",
        "license": { "name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0" },
        "description": format!(
            "The HTTP/JSON API a running capmesh node answers on 127.0.0.1, for the CLI, \
             agents and tools. specs/api.md is the full contract; this document is generated \
             from the server's types (`crates/api`) and served at `GET /v1/openapi.json`.\n\n\
             The address is in `<data dir>/api.addr` (`IP:PORT`), the node's bearer token in \
             `<data dir>/api.token` (new at each start). Every request but this document's \
             carries `Authorization: Bearer <token>`: the node's token, or a session's where an \
             operation allows it. Request bodies are JSON, at most {MAX_BODY_BYTES} bytes, and \
             refuse unknown fields; answers always carry every field listed, `null` when it has \
             no value, and clients ignore fields they do not know. Errors are \
             `{{\"error\": {{\"code\", \"message\"}}}}` with the HTTP status of their code."
        ),
    })
}

fn tags() -> Value {
    json!([
        { "name": "node", "description": "The node itself: status, peers, the block list." },
        { "name": "capabilities", "description": "Adverts of what this node serves." },
        { "name": "discovery", "description": "Providers, contracts and the registry replica." },
        { "name": "calls", "description": "Calling capabilities, waiting or not." },
        { "name": "receipts", "description": "The receipt ledger." },
        { "name": "sessions", "description": "Agent sessions and their runtime sockets." },
        { "name": "attestations", "description": "Signed claims about peers and content." },
        { "name": "meta", "description": "This document." },
    ])
}

fn security_schemes() -> Value {
    let session_routes: Vec<String> =
        SESSION_ROUTES.iter().map(|(m, p)| format!("`{m} {p}`")).collect();
    json!({
        "nodeToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "The node's token: 64 lowercase hex digits, in `<data dir>/api.token` \
                            (mode 0600), made anew each time the node starts. It may use every \
                            operation.",
        },
        "sessionToken": {
            "type": "http",
            "scheme": "bearer",
            "description": format!(
                "A session's token: 64 lowercase hex digits, answered once by \
                 `POST /v1/sessions`, valid while the session lives. Scoped: it may use only \
                 the operations that list it ({}); any other request with it is \
                 `403 Denied`. Within those, `{{session}}` must be its own session and a call \
                 one made with it (another is `404 NotFound`). api.md §4.1.",
                session_routes.join(", ")
            ),
        },
    })
}

/// A response per error code (its description is the code's doc comment), and `Error` for the
/// codes an operation does not list.
fn error_responses(res: &mut SchemaGenerator, problems: &mut Vec<String>) -> Value {
    let body = res.subschema_for::<ErrorBody>();
    let codes = ErrorCode::json_schema(res);
    let described = |code: ErrorCode| -> String {
        codes
            .get("oneOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|v| v.get("const").and_then(Value::as_str) == Some(code.as_str()))
            .and_then(|v| v.get("description").and_then(Value::as_str))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let mut responses = json!({
        "Error": {
            "description": "Any error: the status of its `code` (see ErrorCode).",
            "headers": { "Retry-After": { "$ref": "#/components/headers/RetryAfter" } },
            "content": { "application/json": { "schema": body } },
        },
    });
    for code in ALL_CODES {
        let about = described(code);
        if about.is_empty() {
            problems.push(format!("ErrorCode::{code} has no doc comment"));
        }
        let mut headers = json!({ "Retry-After": { "$ref": "#/components/headers/RetryAfter" } });
        if code == ErrorCode::Unauthorized {
            headers = json!({
                "WWW-Authenticate": {
                    "description": "`Bearer`.",
                    "schema": { "type": "string", "const": "Bearer" },
                },
            });
        }
        let status = code.http_status();
        let about = about.strip_prefix(&format!("{status}: ")).unwrap_or(&about);
        responses[code.as_str()] = json!({
            "description": format!("`{code}` ({status}): {about}"),
            "headers": headers,
            "content": { "application/json": { "schema": body } },
        });
    }
    responses
}

/// Every error code (a test checks each maps to its own status).
pub(crate) const ALL_CODES: [ErrorCode; 11] = [
    ErrorCode::BadRequest,
    ErrorCode::Unauthorized,
    ErrorCode::Denied,
    ErrorCode::NotFound,
    ErrorCode::Conflict,
    ErrorCode::RateLimited,
    ErrorCode::Cancelled,
    ErrorCode::Internal,
    ErrorCode::CallFailed,
    ErrorCode::Unavailable,
    ErrorCode::Timeout,
];

/// Doc comments read as one paragraph per blank line, with the values of the constants they
/// link to (`[`LEDGER_PAGE_MAX`]` becomes `1000`) and other rustdoc links as plain code.
fn tidy_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match (key.as_str(), v) {
                    ("description", Value::String(text)) => *text = tidy(text),
                    (_, v) => tidy_descriptions(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tidy_descriptions),
        _ => {}
    }
}

fn tidy(text: &str) -> String {
    let constants = [
        ("LEDGER_PAGE_MAX", LEDGER_PAGE_MAX.to_string()),
        ("LEDGER_PAGE_DEFAULT", LEDGER_PAGE_DEFAULT.to_string()),
        ("MAX_STREAM_BYTES", format!("{MAX_STREAM_BYTES} bytes")),
        ("SESSION_NAME_MAX", SESSION_NAME_MAX.to_string()),
        ("SESSION_METADATA_MAX", SESSION_METADATA_MAX.to_string()),
        ("SESSION_TTL_MIN_SECS", SESSION_TTL_MIN_SECS.to_string()),
        ("SESSION_TTL_MAX_SECS", SESSION_TTL_MAX_SECS.to_string()),
        ("SESSION_TTL_DEFAULT_SECS", SESSION_TTL_DEFAULT_SECS.to_string()),
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("[`") {
        let Some(len) = rest[start + 2..].find("`]") else { break };
        let name = &rest[start + 2..start + 2 + len];
        out.push_str(&rest[..start]);
        match constants.iter().find(|(n, _)| *n == name) {
            Some((_, value)) => out.push_str(value),
            None => {
                out.push('`');
                out.push_str(name);
                out.push('`');
            }
        }
        rest = &rest[start + 2 + len + 2..];
        // A link's target: `[`X`](path)`.
        if rest.starts_with('(')
            && let Some(end) = rest.find(')')
        {
            rest = &rest[end + 1..];
        }
    }
    out.push_str(rest);
    // Lines wrapped in the source join; blank lines stay paragraph breaks.
    out.split("\n\n").map(|p| p.replace('\n', " ")).collect::<Vec<_>>().join("\n\n")
}

/// Drops the schemas nothing outside `components.schemas` leads to (definitions of
/// specs/schemas/ the API does not use).
fn prune(doc: &mut Value) {
    let mut roots = doc.clone();
    if let Some(components) = roots["components"].as_object_mut() {
        components.remove("schemas");
    }
    let schemas = doc["components"]["schemas"].as_object().cloned().unwrap_or_default();
    let mut reached = BTreeSet::new();
    let mut todo = Vec::new();
    refs(&roots, &mut todo);
    while let Some(name) = todo.pop() {
        if reached.insert(name.clone())
            && let Some(schema) = schemas.get(&name)
        {
            refs(schema, &mut todo);
        }
    }
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        schemas.retain(|name, _| reached.contains(name));
    }
}

/// The component names `value`'s `$ref`s name.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        if let Some(name) = r.strip_prefix(COMPONENTS) {
                            out.push(name.to_owned());
                        }
                    }
                    (_, v) => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// The document's text: the top level in reading order, everything below with its keys sorted.
fn render(doc: &Value) -> String {
    const FIRST: [&str; 6] = ["openapi", "info", "tags", "security", "paths", "components"];
    let Some(top) = doc.as_object() else { return format!("{:#}\n", sorted(doc)) };
    let rest = top.keys().filter(|k| !FIRST.contains(&k.as_str())).map(String::as_str);
    let keys: Vec<&str> =
        FIRST.iter().copied().filter(|k| top.contains_key(*k)).chain(rest).collect();
    let mut out = String::from("{\n");
    for (i, key) in keys.iter().enumerate() {
        let value = format!("{:#}", sorted(&top[*key])).replace('\n', "\n  ");
        out.push_str(&format!("  {}: {value}", Value::from(*key)));
        out.push_str(if i + 1 < keys.len() { ",\n" } else { "\n" });
    }
    out.push_str("}\n");
    out
}

/// `value` with every object's keys in order, whatever order serde_json's maps keep.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&map[k]))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn nothing_is_left_out_or_defined_twice() {
        let (doc, problems) = build();
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(doc["openapi"], "3.1.0");
        // Every marker has its schema in specs/schemas/, and the document keeps those it uses.
        for name in WIRE_TYPES {
            assert!(WIRE.0.contains_key(*name), "no schema {name} in specs/schemas/");
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in ["Cid", "PeerId", "Price", "Contract", "SignedReceipt", "ErrorBody"] {
            assert!(schemas.contains_key(name), "{name}");
        }
        // No schema name was taken twice (schemars would have made one `Name2`).
        for name in schemas.keys().filter(|n| !WIRE.0.contains_key(*n)) {
            assert!(!name.ends_with(|c: char| c.is_ascii_digit()), "{name}");
        }
        // Every reference leads somewhere.
        let mut named = Vec::new();
        refs(&doc, &mut named);
        for name in named {
            assert!(schemas.contains_key(&name), "dangling $ref {name}");
        }
    }

    /// The routes of `router()` in server.rs, read from its source: `(METHOD, path)`.
    fn router_routes() -> BTreeSet<(String, String)> {
        let source = include_str!("server.rs");
        let start = source.find("fn router<B: Backend>").unwrap();
        let end = start + source[start..].find(".fallback(").unwrap();
        let mut routes = BTreeSet::new();
        for line in source[start..end].lines().map(str::trim) {
            let Some(rest) = line.strip_prefix(".route(\"") else { continue };
            let (path, handlers) = rest.split_once('"').unwrap();
            for method in ["get", "post", "put", "patch", "delete"] {
                for prefix in [format!(" {method}("), format!(".{method}(")] {
                    if handlers.contains(&prefix) {
                        routes.insert((method.to_ascii_uppercase(), path.to_owned()));
                    }
                }
            }
        }
        assert!(routes.len() > 20, "{routes:?}");
        routes
    }

    #[test]
    fn every_route_of_the_router_is_an_operation_and_no_other() {
        let (doc, _) = build();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
        assert_eq!(documented, router_routes());
        let ids: Vec<_> = operations(
            &mut generator(SerdeContract::Serialize),
            &mut generator(SerdeContract::Deserialize),
        )
        .iter()
        .map(|op| op.id)
        .collect();
        assert_eq!(ids.len(), ids.iter().collect::<BTreeSet<_>>().len(), "{ids:?}");
    }

    #[test]
    fn security_follows_the_servers_route_lists() {
        let (doc, _) = build();
        let mut session = BTreeSet::new();
        let mut public = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let route = (method.to_ascii_uppercase(), path.clone());
                let security = op["security"].as_array().unwrap();
                if security.is_empty() {
                    public.insert(route.clone());
                    assert!(op["responses"].get("401").is_none(), "{route:?}");
                } else {
                    assert!(op["responses"].get("401").is_some(), "{route:?}");
                }
                if security.contains(&json!({ "sessionToken": [] })) {
                    session.insert(route);
                }
            }
        }
        let list = |routes: &[(Method, &str)]| {
            routes.iter().map(|(m, p)| (m.to_string(), (*p).to_owned())).collect::<BTreeSet<_>>()
        };
        assert_eq!(session, list(SESSION_ROUTES));
        assert_eq!(public, list(PUBLIC_ROUTES));
    }

    #[test]
    fn the_streams_and_the_socket_are_described() {
        let (doc, _) = build();
        let events = &doc["paths"]["/v1/calls/{call_id}/events"]["get"]["responses"]["200"];
        assert_eq!(
            events["content"]["text/event-stream"]["schema"]["$ref"],
            "#/components/schemas/CallEvent"
        );
        let find = &doc["paths"]["/v1/find/{capability}"]["get"]["responses"]["200"];
        assert_eq!(
            find["content"]["application/x-ndjson"]["schema"]["$ref"],
            "#/components/schemas/FindEvent"
        );
        let attach = &doc["paths"]["/v1/sessions/{session}/runtime"]["get"];
        assert!(attach["responses"].get("101").is_some());
        assert_eq!(
            attach["x-websocket"]["client-frames"]["$ref"],
            "#/components/schemas/AgentFrame"
        );
        // Query strings are the structs' fields.
        let receipts = doc["paths"]["/v1/receipts"]["get"]["parameters"].as_array().unwrap();
        let names: Vec<_> = receipts.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["from", "limit"]);
        assert_eq!(receipts[1]["schema"]["type"], "integer");
        assert_eq!(receipts[1]["required"], false);
    }

    #[test]
    fn descriptions_read_as_text() {
        assert_eq!(
            tidy("Most entries, 1 to [`LEDGER_PAGE_MAX`];\nabsent: [`LEDGER_PAGE_DEFAULT`]."),
            "Most entries, 1 to 1000; absent: 100."
        );
        assert_eq!(
            tidy("Is [`ErrorCode::of_call`](crate::ErrorCode::of_call) of it."),
            "Is `ErrorCode::of_call` of it."
        );
        assert_eq!(tidy("One.\n\nTwo\nlines."), "One.\n\nTwo lines.");
        assert!(!json().contains("[`"));
    }

    #[test]
    fn the_text_is_sorted_and_ends_with_a_newline() {
        let text = json();
        assert!(text.starts_with("{\n  \"openapi\": \"3.1.0\",\n  \"info\": {"));
        assert!(text.ends_with("}\n"));
        let back: Value = serde_json::from_str(text).unwrap();
        assert_eq!(&back, document());
    }
}
