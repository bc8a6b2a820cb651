//! What checking knows of a value before the plan runs, and the conservative judgement of
//! whether a value of one shape can be accepted by a JSON Schema.
//!
//! Everything here over-approximates what a value may be, so a refusal is always certain:
//! a wiring is refused only when no value the producer may give is accepted by the consumer.
//! Keywords not understood (composition, `$ref`, patterns, …) make a shape less known, never
//! more refused.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::pointer::index;

/// What is known of a value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shape {
    /// Nothing.
    Unknown,
    /// The value itself (a literal input or argument).
    Exact(Value),
    /// A value valid against this JSON Schema (a contract's output, an input's schema).
    Schema(Value),
    /// A list whose items have this shape (a map's output).
    List(Box<Shape>),
    /// A list of these shapes (a join's list).
    Tuple(Vec<Shape>),
    /// An object with exactly these members (a join's object, arguments being built).
    Record(BTreeMap<String, Shape>),
    /// A non-negative integer (`/index`).
    Index,
}

/// JSON types as bits: integral and fractional numbers apart, so that `integer` and `number`
/// relate as they do in JSON Schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Types(u8);

impl Types {
    const NULL: u8 = 1;
    const BOOLEAN: u8 = 2;
    const INTEGER: u8 = 4;
    const FRACTION: u8 = 8;
    const STRING: u8 = 16;
    const ARRAY: u8 = 32;
    const OBJECT: u8 = 64;
    pub(crate) const ALL: Types = Types(127);
    pub(crate) const ARRAY_ONLY: Types = Types(Self::ARRAY);
    const OBJECT_ONLY: Types = Types(Self::OBJECT);

    fn named(name: &str) -> Types {
        Types(match name {
            "null" => Self::NULL,
            "boolean" => Self::BOOLEAN,
            "integer" => Self::INTEGER,
            "number" => Self::INTEGER | Self::FRACTION,
            "string" => Self::STRING,
            "array" => Self::ARRAY,
            "object" => Self::OBJECT,
            _ => 127,
        })
    }

    pub(crate) fn of(value: &Value) -> Types {
        Types(match value {
            Value::Null => Self::NULL,
            Value::Bool(_) => Self::BOOLEAN,
            Value::Number(n) if n.is_i64() || n.is_u64() => Self::INTEGER,
            Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => Self::INTEGER,
            Value::Number(_) => Self::FRACTION,
            Value::String(_) => Self::STRING,
            Value::Array(_) => Self::ARRAY,
            Value::Object(_) => Self::OBJECT,
        })
    }

    /// The types a schema admits, as far as `type`, `const` and `enum` say.
    fn of_schema(schema: &Value) -> Types {
        let Value::Object(s) = schema else {
            return Types::ALL;
        };
        let mut t = Types::ALL;
        match s.get("type") {
            Some(Value::String(name)) => t = t.and(Types::named(name)),
            Some(Value::Array(names)) => {
                let u = names
                    .iter()
                    .filter_map(Value::as_str)
                    .map(Types::named)
                    .fold(Types(0), Types::or);
                t = t.and(u);
            }
            _ => {}
        }
        if let Some(c) = s.get("const") {
            t = t.and(Types::of(c));
        }
        if let Some(Value::Array(values)) = s.get("enum") {
            t = t.and(values.iter().map(Types::of).fold(Types(0), Types::or));
        }
        t
    }

    fn and(self, other: Types) -> Types {
        Types(self.0 & other.0)
    }

    fn or(self, other: Types) -> Types {
        Types(self.0 | other.0)
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether a value of these types may be an array.
    pub(crate) fn may_be(self, other: Types) -> bool {
        !self.and(other).is_empty()
    }

    pub(crate) fn describe(self) -> String {
        let names = [
            (Self::NULL, "null"),
            (Self::BOOLEAN, "boolean"),
            (Self::INTEGER | Self::FRACTION, "number"),
            (Self::INTEGER, "integer"),
            (Self::FRACTION, "fraction"),
            (Self::STRING, "string"),
            (Self::ARRAY, "array"),
            (Self::OBJECT, "object"),
        ];
        let mut left = self.0;
        let mut out = Vec::new();
        for (bits, name) in names {
            if left & bits == bits && bits != 0 {
                out.push(name);
                left &= !bits;
            }
        }
        if out.is_empty() { "nothing".into() } else { out.join(" or ") }
    }
}

/// Nesting followed at most by the compatibility judgement (deeper is taken as fitting).
const MAX_COMPARE_DEPTH: usize = 32;

impl Shape {
    /// The types the value may have.
    pub(crate) fn types(&self) -> Types {
        match self {
            Shape::Unknown => Types::ALL,
            Shape::Exact(v) => Types::of(v),
            Shape::Schema(s) => {
                let t = Types::of_schema(s);
                // A schema no value satisfies produces nothing: nothing to refuse.
                if t.is_empty() || *s == Value::Bool(false) { Types::ALL } else { t }
            }
            Shape::List(_) | Shape::Tuple(_) => Types::ARRAY_ONLY,
            Shape::Record(_) => Types::OBJECT_ONLY,
            Shape::Index => Types(Types::INTEGER),
        }
    }

    /// What is known of the value at `token` below this one, or why nothing can be there.
    pub(crate) fn member(&self, token: &str) -> Result<Shape, String> {
        match self {
            Shape::Unknown => Ok(Shape::Unknown),
            Shape::Exact(v) => {
                let found = match v {
                    Value::Object(m) => m.get(token),
                    Value::Array(items) => index(token).and_then(|i| items.get(i)),
                    _ => None,
                };
                found
                    .map(|v| Shape::Exact(v.clone()))
                    .ok_or_else(|| format!("the value has no member {token:?}"))
            }
            Shape::Schema(s) => {
                schema_member(s, token).map(|s| s.map_or(Shape::Unknown, Shape::Schema))
            }
            Shape::List(item) => match index(token) {
                Some(_) => Ok((**item).clone()),
                None => Err(format!("a list has no member {token:?}")),
            },
            Shape::Tuple(items) => index(token)
                .and_then(|i| items.get(i).cloned())
                .ok_or_else(|| format!("the list has {} members: none is {token:?}", items.len())),
            Shape::Record(m) => {
                m.get(token).cloned().ok_or_else(|| format!("the object has no member {token:?}"))
            }
            Shape::Index => Err("an index is a number: it has no members".into()),
        }
    }

    /// What is known of a member at `path` below this one.
    pub(crate) fn at(&self, path: &[String]) -> Result<Shape, String> {
        path.iter().try_fold(self.clone(), |shape, token| shape.member(token))
    }

    /// What is known of each item, if this is a list; `Err` when it is certainly not one.
    pub(crate) fn items(&self) -> Result<Vec<Shape>, String> {
        if !self.types().may_be(Types::ARRAY_ONLY) {
            return Err(format!("it can only be {}", self.types().describe()));
        }
        Ok(match self {
            Shape::Exact(Value::Array(items)) => items.iter().cloned().map(Shape::Exact).collect(),
            Shape::List(item) => vec![(**item).clone()],
            Shape::Tuple(items) => items.clone(),
            Shape::Schema(Value::Object(s)) => match s.get("items") {
                Some(items @ (Value::Object(_) | Value::Bool(true)))
                    if !s.contains_key("prefixItems") =>
                {
                    vec![Shape::Schema(items.clone())]
                }
                _ => vec![Shape::Unknown],
            },
            _ => vec![Shape::Unknown],
        })
    }
}

/// The subschema a member `token` of a value valid against `schema` is valid against:
/// `Ok(None)` when unknown, `Err` when no such member can exist.
fn schema_member(schema: &Value, token: &str) -> Result<Option<Value>, String> {
    let Value::Object(s) = schema else {
        return Ok(None);
    };
    let types = Types::of_schema(schema);
    let may_object = types.may_be(Types::OBJECT_ONLY);
    let may_array = types.may_be(Types::ARRAY_ONLY) && index(token).is_some();
    if !may_object && !may_array {
        return Err(format!("a value of type {} has no member {token:?}", types.describe()));
    }
    if may_object && let Some(p) = s.get("properties").and_then(|p| p.get(token)) {
        return Ok(Some(p.clone()));
    }
    if may_array && !may_object {
        let i = index(token).expect("checked");
        if let Some(Value::Array(prefix)) = s.get("prefixItems")
            && let Some(p) = prefix.get(i)
        {
            return Ok(Some(p.clone()));
        }
        return Ok(match s.get("items") {
            Some(items) if !s.contains_key("prefixItems") => Some(items.clone()),
            _ => None,
        });
    }
    if may_object && !may_array && closed(s) {
        return Err(format!(
            "the schema allows no member {token:?} (additionalProperties is false)"
        ));
    }
    if may_object
        && !may_array
        && !s.contains_key("patternProperties")
        && let Some(extra @ Value::Object(_)) = s.get("additionalProperties")
    {
        return Ok(Some(extra.clone()));
    }
    Ok(None)
}

/// An object schema that admits only its `properties`.
fn closed(s: &Map<String, Value>) -> bool {
    s.get("additionalProperties") == Some(&Value::Bool(false))
        && !s.contains_key("patternProperties")
}

/// Most mismatches reported for one comparison.
const MAX_MISMATCHES: usize = 16;

/// Every reason found why a value of shape `producer` can certainly not be valid against
/// `consumer`, each with the JSON Pointer (relative) of its place; empty when it may be.
pub(crate) fn incompatible(producer: &Shape, consumer: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    mismatch(producer, consumer, "", 0, &mut out);
    out
}

fn mismatch(
    producer: &Shape,
    consumer: &Value,
    at: &str,
    depth: usize,
    out: &mut Vec<(String, String)>,
) {
    if depth > MAX_COMPARE_DEPTH
        || out.len() >= MAX_MISMATCHES
        || matches!(producer, Shape::Unknown)
    {
        return;
    }
    if *consumer == Value::Bool(false) {
        out.push((at.to_owned(), "the schema accepts no value here".into()));
        return;
    }
    let Value::Object(c) = consumer else {
        return;
    };
    let produced = producer.types();
    let accepted = Types::of_schema(consumer);
    if !produced.may_be(accepted) {
        out.push((
            at.to_owned(),
            format!("{} is given where {} is accepted", produced.describe(), accepted.describe()),
        ));
        return;
    }
    // Objects: members the producer certainly has, against what the consumer says of them.
    if produced == Types::OBJECT_ONLY {
        if let Some(Value::Array(required)) = c.get("required") {
            for key in required.iter().filter_map(Value::as_str) {
                if !may_have(producer, key) {
                    out.push((at.to_owned(), format!("`{key}` is required but never given")));
                }
            }
        }
        for (key, shape) in certain_members(producer) {
            let here = format!("{at}/{}", crate::pointer::escape(&key));
            let sub = match c.get("properties").and_then(|p| p.get(&key)) {
                Some(sub) => sub,
                None if c.contains_key("patternProperties") => continue,
                None => {
                    match c.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            out.push((here, format!("`{key}` is given but not accepted (additionalProperties is false)")));
                            continue;
                        }
                        Some(sub) => sub,
                        None => continue,
                    }
                }
            };
            mismatch(&shape, sub, &here, depth + 1, out);
        }
    }
    // Lists: only members that certainly exist (a list may be empty).
    if produced == Types::ARRAY_ONLY {
        let members: Vec<Shape> = match producer {
            Shape::Exact(Value::Array(items)) => items.iter().cloned().map(Shape::Exact).collect(),
            Shape::Tuple(items) => items.clone(),
            _ => Vec::new(),
        };
        for (i, shape) in members.iter().enumerate() {
            let sub = match c.get("prefixItems").and_then(|p| p.get(i)) {
                Some(sub) => sub,
                None => match c.get("items") {
                    Some(sub) => sub,
                    None => continue,
                },
            };
            mismatch(shape, sub, &format!("{at}/{i}"), depth + 1, out);
        }
    }
}

/// Members an object of this shape certainly has, with what is known of each.
fn certain_members(shape: &Shape) -> Vec<(String, Shape)> {
    match shape {
        Shape::Exact(Value::Object(m)) => {
            m.iter().map(|(k, v)| (k.clone(), Shape::Exact(v.clone()))).collect()
        }
        Shape::Record(m) => m.iter().map(|(k, s)| (k.clone(), s.clone())).collect(),
        Shape::Schema(Value::Object(s)) => match s.get("required") {
            Some(Value::Array(required)) => required
                .iter()
                .filter_map(Value::as_str)
                .map(|k| {
                    let sub = s.get("properties").and_then(|p| p.get(k)).cloned();
                    (k.to_owned(), sub.map_or(Shape::Unknown, Shape::Schema))
                })
                .collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Whether an object of this shape may have the member `key`.
fn may_have(shape: &Shape, key: &str) -> bool {
    match shape {
        Shape::Exact(Value::Object(m)) => m.contains_key(key),
        Shape::Record(m) => m.contains_key(key),
        Shape::Schema(Value::Object(s)) if closed(s) => {
            s.get("properties").is_some_and(|p| p.get(key).is_some())
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refused(producer: Shape, consumer: Value) -> bool {
        !incompatible(&producer, &consumer).is_empty()
    }

    #[test]
    fn only_certain_mismatches_are_refused() {
        let string = Shape::Schema(json!({"type": "string"}));
        assert!(refused(string.clone(), json!({"type": "integer"})));
        assert!(!refused(string.clone(), json!({"type": ["integer", "string"]})));
        assert!(!refused(string, json!({})));
        // A number may be integral: accepted where an integer is; an integer is a number.
        assert!(!refused(Shape::Schema(json!({"type": "number"})), json!({"type": "integer"})));
        assert!(!refused(Shape::Schema(json!({"type": "integer"})), json!({"type": "number"})));
        assert!(refused(Shape::Exact(json!(2.5)), json!({"type": "integer"})));
        assert!(!refused(Shape::Exact(json!(2.0)), json!({"type": "integer"})));
        // Unknown producers and schemas beyond the simple keywords are accepted.
        assert!(!refused(Shape::Unknown, json!({"type": "integer"})));
        assert!(!refused(Shape::Schema(json!({"$ref": "#/$defs/x"})), json!({"type": "integer"})));
        assert!(refused(Shape::Schema(json!({"enum": ["a", "b"]})), json!({"type": "integer"})));
    }

    #[test]
    fn objects_are_compared_member_by_member() {
        let out = Shape::Schema(json!({
            "type": "object", "properties": {"n": {"type": "string"}}, "required": ["n"]
        }));
        assert!(refused(
            out.clone(),
            json!({"type": "object", "properties": {"n": {"type": "integer"}}})
        ));
        assert!(!refused(
            out.clone(),
            json!({"type": "object", "properties": {"n": {"type": "string"}}})
        ));
        // Not required by the producer: it may be absent.
        let loose =
            Shape::Schema(json!({"type": "object", "properties": {"n": {"type": "string"}}}));
        assert!(!refused(
            loose,
            json!({"type": "object", "properties": {"n": {"type": "integer"}}})
        ));
        // A member the consumer requires and the producer can never have.
        let closed = Shape::Schema(json!({"type": "object", "additionalProperties": false}));
        assert!(refused(closed, json!({"type": "object", "required": ["x"]})));
        let args = Shape::Record(BTreeMap::from([("text".to_owned(), Shape::Unknown)]));
        assert!(refused(args.clone(), json!({"type": "object", "required": ["lang"]})));
        assert!(refused(args, json!({"type": "object", "additionalProperties": false})));
    }

    #[test]
    fn paths_are_walked_through_schemas() {
        let s = Shape::Schema(json!({
            "type": "object",
            "properties": {"items": {"type": "array", "items": {"type": "string"}}},
            "additionalProperties": false
        }));
        assert_eq!(
            s.at(&["items".into(), "3".into()]),
            Ok(Shape::Schema(json!({"type": "string"})))
        );
        assert!(s.at(&["other".into()]).is_err());
        assert!(s.at(&["items".into(), "x".into()]).is_err());
        assert!(s.at(&["items".into(), "0".into(), "deeper".into()]).is_err());
        assert_eq!(Shape::Schema(json!({})).at(&["a".into()]), Ok(Shape::Unknown));
        assert!(Shape::Exact(json!({"a": 1})).at(&["b".into()]).is_err());
    }
}
