//! The pure mapping between contracts and MCP tools, both ways: tool names, schemas, and the
//! contract an imported tool becomes.

use std::sync::Arc;

use capmesh_types::Cid;
use capmesh_wire::Contract;
use rmcp::model::{JsonObject, Tool};
use serde_json::{Value, json};

/// Tag of an imported tool that had no `outputSchema`: its output is the MCP result's
/// `{"content": [...]}`, which `capmesh mcp` hands back as content blocks.
pub const CONTENT_TAG: &str = "mcp.content";

/// Tag of every imported tool.
pub const MCP_TAG: &str = "mcp";

/// Version of every imported contract: the id changes only when the tool's definition does.
pub const IMPORTED_VERSION: &str = "1.0.0";

/// Characters of the capability id that end a tool name: 16 base32 characters (80 bits), so a
/// look-alike capability cannot be made to take another's tool name.
const SHORT_ID_CHARS: usize = 16;

/// Longest tool name: what the strictest MCP clients accept (`^[a-zA-Z0-9_-]{1,64}$`).
const MAX_TOOL_NAME: usize = 64;

/// Longest contract name (`^[a-z][a-z0-9_.-]{0,63}$`).
const MAX_CONTRACT_NAME: usize = 64;

/// The last characters of `cap`'s text form: its base32 digest ends there, so they tell
/// capabilities of one name apart (its start is the same multibase/CID prefix for all).
pub fn short_id(cap: &Cid) -> String {
    let text = cap.to_string();
    text[text.len().saturating_sub(SHORT_ID_CHARS)..].to_owned()
}

/// The MCP tool name of a capability: the contract name with `.` as `_`, then `_` and the short
/// id, at most 64 characters of `[a-z0-9_-]`: `builtin_blake3_q7m2x4ka`.
pub fn tool_name(contract: &Contract, cap: &Cid) -> String {
    let short = short_id(cap);
    let room = MAX_TOOL_NAME - short.len() - 1;
    let mut name: String = contract
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .take(room)
        .collect();
    name.push('_');
    name.push_str(&short);
    name
}

/// An MCP `inputSchema` for `contract`, and whether the arguments are wrapped. MCP requires an
/// object schema; any other input schema (a boolean, or one that admits non-objects) is wrapped
/// as `{"input": <schema>}` and the argument unwrapped before the call.
pub fn input_schema(contract: &Contract) -> (JsonObject, bool) {
    match &contract.input {
        Value::Object(schema) if is_object_schema(schema) => (schema.clone(), false),
        other => {
            let wrapped = json!({
                "type": "object",
                "properties": {"input": other},
                "required": ["input"],
                "additionalProperties": false,
            });
            (as_object(wrapped), true)
        }
    }
}

/// An MCP `outputSchema` for `contract`: its output schema if it describes objects (MCP's
/// `structuredContent` is an object), else none.
pub fn output_schema(contract: &Contract) -> Option<JsonObject> {
    match &contract.output {
        Value::Object(schema) if is_object_schema(schema) && !is_content(contract) => {
            Some(schema.clone())
        }
        _ => None,
    }
}

/// Whether `contract` is an imported tool whose output is MCP content blocks.
pub fn is_content(contract: &Contract) -> bool {
    contract.tags.iter().any(|t| t == CONTENT_TAG)
}

/// The MCP tool of capability `cap`: [`tool_name`], schemas from the contract, a description
/// that names the capability id, and the contract's read-only and idempotent flags as hints.
pub fn tool_of(contract: &Contract, cap: &Cid) -> (Tool, bool) {
    let (input, wrapped) = input_schema(contract);
    let description = format!(
        "{}\n\ncapmesh capability {cap} ({} {}), called on the mesh with a signed receipt.",
        contract.description.trim(),
        contract.name,
        contract.version
    );
    let mut tool = Tool::new(tool_name(contract, cap), description, Arc::new(input));
    tool.title = Some(contract.name.clone());
    tool.output_schema = output_schema(contract).map(Arc::new);
    let mut hints = rmcp::model::ToolAnnotations::new();
    hints.read_only_hint = Some(contract.read_only);
    hints.idempotent_hint = Some(contract.idempotent);
    hints.open_world_hint = Some(true);
    tool.annotations = Some(hints);
    (tool, wrapped)
}

fn is_object_schema(schema: &JsonObject) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("object")
}

/// `value`'s members if it is an object, else none.
pub(crate) fn as_object(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    }
}

/// Why an MCP tool cannot become a contract.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The import's name cannot start contract names and be a tag.
    #[error("the import name {0:?} is not ^[a-z][a-z0-9_-]{{0,31}}$")]
    BadPrefix(String),
    /// The tool's definition does not make a well-formed contract (e.g. a schema that is not
    /// valid JSON Schema 2020-12).
    #[error("the tool {tool:?} is not a well-formed contract: {reason}")]
    Refused { tool: String, reason: String },
}

/// Whether `name` can name an import: `^[a-z][a-z0-9_-]{0,31}$`.
pub fn check_prefix(name: &str) -> Result<(), ImportError> {
    let ok = name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok { Ok(()) } else { Err(ImportError::BadPrefix(name.to_owned())) }
}

/// The contract name of tool `tool` of the import `prefix`: `<prefix>.<tool>`, lower-cased,
/// characters outside `[a-z0-9_.-]` as `_`, cut to 64 characters.
pub fn contract_name(prefix: &str, tool: &str) -> String {
    let mut name = String::with_capacity(prefix.len() + 1 + tool.len());
    name.push_str(prefix);
    name.push('.');
    name.extend(tool.chars().map(|c| {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-') {
            c
        } else {
            '_'
        }
    }));
    name.chars().take(MAX_CONTRACT_NAME).collect()
}

/// The contract tool `tool` of the MCP server imported as `prefix` becomes, with `tags` added:
///
/// - name [`contract_name`], version [`IMPORTED_VERSION`], tags `mcp`, `<prefix>`, then `tags`;
/// - description: the tool's, then where it comes from (cut to the contract limit);
/// - input: the tool's `inputSchema`; output: its `outputSchema`, or, without one, the shape of
///   MCP content (`{"content": [...]}`) and the tag [`CONTENT_TAG`]. A top-level `$schema` other
///   than 2020-12 is dropped: MCP's dialect is 2020-12 unless a schema says otherwise, and
///   contracts admit 2020-12 only (the rest of the schema must then be valid 2020-12);
/// - `read_only` and `idempotent` from the tool's annotations (hints; absent = false).
///
/// The contract is checked ([`capmesh_contract::check`]) and returned with its id.
pub fn contract_of(
    prefix: &str,
    tags: &[String],
    tool: &Tool,
) -> Result<(Contract, Cid), ImportError> {
    check_prefix(prefix)?;
    let refused = |reason: String| ImportError::Refused { tool: tool.name.to_string(), reason };
    let mut all_tags = vec![MCP_TAG.to_owned(), prefix.to_owned()];
    for t in tags {
        if !all_tags.contains(t) {
            all_tags.push(t.clone());
        }
    }
    let output = match &tool.output_schema {
        Some(schema) => dialect_2020_12(schema),
        None => {
            all_tags.push(CONTENT_TAG.to_owned());
            content_schema()
        }
    };
    let origin =
        format!("(The tool {:?} of the MCP server {prefix:?}, imported into capmesh.)", tool.name);
    let own = tool.description.as_deref().unwrap_or("").trim();
    let room = capmesh_contract::MAX_DESCRIPTION_BYTES.saturating_sub(origin.len() + 2);
    let description =
        if own.is_empty() { origin } else { format!("{}\n\n{origin}", cut(own, room)) };
    let hints = tool.annotations.as_ref();
    let contract = Contract {
        name: contract_name(prefix, &tool.name),
        version: IMPORTED_VERSION.to_owned(),
        description,
        input: dialect_2020_12(&tool.input_schema),
        output,
        tags: all_tags,
        read_only: hints.and_then(|h| h.read_only_hint).unwrap_or(false),
        idempotent: hints.and_then(|h| h.idempotent_hint).unwrap_or(false),
        streaming: false,
    };
    let id = capmesh_contract::check(&contract).map_err(|e| refused(e.to_string()))?;
    Ok((contract, id))
}

/// `schema` without a top-level `$schema` naming another dialect.
fn dialect_2020_12(schema: &JsonObject) -> Value {
    let mut schema = schema.clone();
    if schema.get("$schema").and_then(Value::as_str) != Some(capmesh_contract::DRAFT_2020_12) {
        schema.remove("$schema");
    }
    Value::Object(schema)
}

/// The output schema of an imported tool without `outputSchema`: MCP content blocks.
pub fn content_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "content": {"type": "array", "items": {"type": "object", "required": ["type"]}},
        },
        "required": ["content"],
    })
}

/// At most `max` bytes of `text`, cut at a character boundary.
pub(crate) fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use capmesh_exec::Builtin;

    use super::*;

    fn tool(name: &str, input: Value, output: Option<Value>) -> Tool {
        let mut t = Tool::new(name.to_owned(), "Adds two numbers.", Arc::new(as_object(input)));
        t.output_schema = output.map(|o| Arc::new(as_object(o)));
        t
    }

    #[test]
    fn tool_names_are_short_distinct_and_portable() {
        let c = Builtin::Blake3.contract();
        let id = capmesh_contract::check(&c).unwrap_or_else(|e| panic!("{e}"));
        let name = tool_name(&c, &id);
        assert!(name.starts_with("builtin_blake3_"), "{name}");
        assert!(name.ends_with(&short_id(&id)));
        let mut long = c.clone();
        long.name = format!("a{}", "b.".repeat(31));
        let name = tool_name(&long, &id);
        assert_eq!(name.len(), 64);
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'), "{name}");
        assert!(name.ends_with(&short_id(&id)));
    }

    #[test]
    fn schemas_that_are_not_objects_are_wrapped() {
        let c = Builtin::Blake3.contract();
        let id = capmesh_contract::check(&c).unwrap_or_else(|e| panic!("{e}"));
        let (t, wrapped) = tool_of(&c, &id);
        assert!(!wrapped);
        assert_eq!(Value::Object((*t.input_schema).clone()), c.input);
        assert_eq!(t.output_schema.as_deref().cloned().map(Value::Object), Some(c.output.clone()));
        assert!(t.description.as_deref().unwrap_or("").contains(&id.to_string()));

        let mut any = c;
        any.input = json!(true);
        any.output = json!({"type": "string"});
        let (t, wrapped) = tool_of(&any, &id);
        assert!(wrapped);
        assert_eq!(t.input_schema.get("required"), Some(&json!(["input"])));
        assert_eq!(t.input_schema["properties"]["input"], json!(true));
        assert!(t.output_schema.is_none(), "structuredContent must be an object");
    }

    #[test]
    fn imported_tools_become_checked_contracts() {
        let input = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        });
        let output = json!({"type": "object", "properties": {"sum": {"type": "number"}}});
        let (c, id) = contract_of(
            "calc",
            &["math".into()],
            &tool("Add Numbers", input, Some(output.clone())),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.name, "calc.add_numbers");
        assert_eq!(c.tags, ["mcp", "calc", "math"]);
        assert_eq!(c.output, output);
        assert!(c.input.get("$schema").is_none(), "the draft-07 dialect is dropped");
        assert!(c.description.starts_with("Adds two numbers."));
        assert!(!is_content(&c));

        // Another definition, another id; no output schema: content blocks.
        let (c2, id2) =
            contract_of("calc", &[], &tool("Add Numbers", json!({"type": "object"}), None))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(id, id2);
        assert!(is_content(&c2));
        assert_eq!(c2.output, content_schema());

        let bad = tool("x", json!({"type": "object", "properties": {"a": {"type": 7}}}), None);
        assert!(matches!(contract_of("calc", &[], &bad), Err(ImportError::Refused { .. })));
        assert!(matches!(contract_of("Calc", &[], &bad), Err(ImportError::BadPrefix(_))));
    }

    #[test]
    fn contract_names_are_sanitized_and_cut() {
        assert_eq!(contract_name("fs", "Read File!"), "fs.read_file_");
        assert_eq!(contract_name("fs", &"x".repeat(100)).len(), 64);
        assert!(check_prefix("files-2").is_ok());
        for bad in ["", "2fs", "F", "a.b", &"a".repeat(33)] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
