//! From text to a [`Plan`]: every violation collected with its path, nothing stops at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use capmesh_types::{Cid, Codec, PeerId};
use serde_json::{Map, Value};

use crate::model::{
    Binding, Call, Constraints, Input, Join, Plan, Price, Query, Requirement, Scope, Step,
    StepKind, Target, Weights,
};
use crate::pointer::{Pointer, Root, Source};
use crate::violation::{Kind, Violation, Violations};
use crate::{
    MAX_BINDINGS, MAX_DEADLINE_MS, MAX_DEPTH, MAX_GOAL_CHARS, MAX_INPUTS, MAX_ISSUERS, MAX_JOIN,
    MAX_PARALLEL, MAX_PLAN_BYTES, MAX_QUERY_TAGS, MAX_REQUIRE, MAX_STEPS, MAX_TEXT_CHARS,
    MAX_UNIT_CHARS, check, graph,
};

/// How a plan is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    /// YAML 1.2 (only `true` / `false` are booleans); one document; no duplicate keys.
    Yaml,
}

impl Format {
    /// YAML for `.yaml` / `.yml` files, JSON otherwise.
    pub fn of_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Format::Yaml,
            _ => Format::Json,
        }
    }
}

/// Parses and checks a plan written as `format`: every violation of the format, every
/// reference that does not resolve, every cycle, and every path or wiring that the inputs'
/// values and schemas already prove wrong (contracts are not known yet: see
/// [`resolve`](crate::resolve())).
pub fn parse(text: &str, format: Format) -> Result<Plan, Violations> {
    let doc = read(text, format).map_err(|v| Violations::of(vec![v]).expect("one violation"))?;
    parse_value(doc)
}

/// [`parse`] for a document already in the JSON data model.
pub fn parse_value(doc: Value) -> Result<Plan, Violations> {
    let mut p = Parser::default();
    if depth(&doc) > MAX_DEPTH {
        p.push(&Pointer::root(), Kind::TooLarge, format!("nested deeper than {MAX_DEPTH} levels"));
        return Err(Violations::of(p.out).expect("one violation"));
    }
    let plan = p.plan(doc);
    match Violations::of(p.out) {
        Some(v) => Err(v),
        None => Ok(plan),
    }
}

/// The text as a JSON value, or why it is not one.
fn read(text: &str, format: Format) -> Result<Value, Violation> {
    let root = Pointer::root();
    if text.len() > MAX_PLAN_BYTES {
        return Err(Violation::new(
            &root,
            Kind::TooLarge,
            format!("{} bytes exceed the limit of {MAX_PLAN_BYTES}", text.len()),
        ));
    }
    match format {
        Format::Json => capmesh_wire::json::from_str_strict(text)
            .map_err(|e| Violation::new(&root, Kind::Syntax, format!("not JSON: {e}"))),
        Format::Yaml => {
            let mut options = serde_saphyr::Options::default();
            options.strict_booleans = true;
            options.alias_limits.max_total_replayed_events = 65_536;
            options.crop_radius = 0;
            serde_saphyr::from_str_with_options::<Value>(text, options)
                .map_err(|e| Violation::new(&root, Kind::Syntax, format!("not YAML: {e}")))
        }
    }
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[derive(Default)]
struct Parser {
    out: Vec<Violation>,
}

impl Parser {
    fn push(&mut self, path: &Pointer, kind: Kind, message: impl Into<String>) {
        self.out.push(Violation::new(path, kind, message));
    }

    fn object<'a>(&mut self, v: &'a Value, path: &Pointer) -> Option<&'a Map<String, Value>> {
        match v {
            Value::Object(map) => Some(map),
            other => {
                self.push(
                    path,
                    Kind::WrongType,
                    format!("expected an object, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// Reports members outside `allowed` and absent `required` ones.
    fn members(
        &mut self,
        map: &Map<String, Value>,
        path: &Pointer,
        allowed: &[&str],
        required: &[&str],
    ) {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                self.push(
                    &path.child(key),
                    Kind::Unknown,
                    format!("unknown member {key:?} (expected one of: {})", allowed.join(", ")),
                );
            }
        }
        for key in required {
            if !map.contains_key(*key) {
                self.push(path, Kind::Missing, format!("`{key}` is required"));
            }
        }
    }

    fn string<'a>(&mut self, v: &'a Value, path: &Pointer) -> Option<&'a str> {
        match v {
            Value::String(s) => Some(s),
            other => {
                self.push(
                    path,
                    Kind::WrongType,
                    format!("expected a string, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// A text of `min..=max` characters.
    fn text(&mut self, v: &Value, path: &Pointer, min: usize, max: usize) -> Option<String> {
        let s = self.string(v, path)?;
        let n = s.chars().count();
        if n < min || n > max {
            self.push(
                path,
                Kind::BadValue,
                format!("must have {min} to {max} characters, has {n}"),
            );
            return None;
        }
        Some(s.to_owned())
    }

    /// An integer in `min..=max` (an integral float such as `5.0` counts, as in JSON Schema).
    fn integer(&mut self, v: &Value, path: &Pointer, min: u64, max: u64) -> Option<u64> {
        let Value::Number(n) = v else {
            self.push(
                path,
                Kind::WrongType,
                format!("expected an integer, found {}", type_name(v)),
            );
            return None;
        };
        let value = match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Some(u),
            (None, Some(_), _) => None,
            (None, None, Some(f)) if f.fract() == 0.0 => {
                if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    Some(f as u64)
                } else {
                    None
                }
            }
            _ => {
                self.push(path, Kind::WrongType, "expected an integer, found a fraction");
                return None;
            }
        };
        match value {
            Some(u) if (min..=max).contains(&u) => Some(u),
            _ => {
                self.push(path, Kind::BadValue, format!("must be an integer from {min} to {max}"));
                None
            }
        }
    }

    fn name_keys(&mut self, map: &Map<String, Value>, path: &Pointer, what: &str) -> bool {
        let mut ok = true;
        for key in map.keys() {
            if !crate::is_name(key) {
                ok = false;
                self.push(
                    &path.child(key),
                    Kind::BadValue,
                    format!("{key:?} is not a valid {what} name ({})", crate::NAME_RULE),
                );
            }
        }
        ok
    }

    fn source(&mut self, v: &Value, path: &Pointer) -> Option<Source> {
        let s = self.string(v, path)?;
        match Source::parse(s) {
            Ok(source) => Some(source),
            Err(reason) => {
                self.push(path, Kind::BadPointer, reason);
                None
            }
        }
    }

    fn plan(&mut self, doc: Value) -> Plan {
        let root = Pointer::root();
        let mut plan = Plan {
            goal: String::new(),
            inputs: BTreeMap::new(),
            constraints: Constraints::default(),
            require: Vec::new(),
            optimize: None,
            steps: BTreeMap::new(),
            output: None,
            order: Vec::new(),
            document: Value::Null,
        };
        let Some(map) = self.object(&doc, &root) else {
            plan.document = doc;
            return plan;
        };
        self.members(
            map,
            &root,
            &["v", "goal", "inputs", "constraints", "policy", "select", "plan", "output"],
            &["goal", "plan"],
        );
        if let Some(v) = map.get("v") {
            let path = root.child("v");
            if !v.is_number() {
                self.push(&path, Kind::WrongType, "`v` is the format version: the number 1");
            } else if v.as_f64() != Some(1.0) {
                self.push(
                    &path,
                    Kind::BadValue,
                    "this is version 1 of the plan format: `v` must be 1",
                );
            }
        }
        if let Some(goal) = map.get("goal") {
            plan.goal = self.text(goal, &root.child("goal"), 1, MAX_GOAL_CHARS).unwrap_or_default();
        }
        let mut input_names = BTreeSet::new();
        if let Some(inputs) = map.get("inputs") {
            let path = root.child("inputs");
            if let Some(inputs) = self.object(inputs, &path) {
                if inputs.len() > MAX_INPUTS {
                    self.push(&path, Kind::TooMany, format!("more than {MAX_INPUTS} inputs"));
                }
                self.name_keys(inputs, &path, "input");
                for (name, value) in inputs {
                    input_names.insert(name.clone());
                    if let Some(input) = self.input(value, &path.child(name)) {
                        plan.inputs.insert(name.clone(), input);
                    }
                }
            }
        }
        if let Some(c) = map.get("constraints") {
            plan.constraints = self.constraints(c, &root.child("constraints"));
        }
        if let Some(policy) = map.get("policy") {
            plan.require = self.policy(policy, &root.child("policy"));
        }
        if let Some(select) = map.get("select") {
            plan.optimize = self.select(select, &root.child("select"));
        }
        let mut step_names = BTreeSet::new();
        if let Some(steps) = map.get("plan") {
            let path = root.child("plan");
            if let Some(steps) = self.object(steps, &path) {
                if steps.is_empty() {
                    self.push(&path, Kind::BadValue, "a plan has at least one step");
                }
                if steps.len() > MAX_STEPS {
                    self.push(&path, Kind::TooMany, format!("more than {MAX_STEPS} steps"));
                }
                self.name_keys(steps, &path, "step");
                for (name, value) in steps {
                    step_names.insert(name.clone());
                    if let Some(step) = self.step(value, &path.child(name)) {
                        plan.steps.insert(name.clone(), step);
                    }
                }
            }
        }
        if let Some(output) = map.get("output") {
            plan.output = self.source(output, &root.child("output"));
        }

        // References: each names something declared, in a place where it is defined.
        if let Some(output) = &plan.output {
            self.reference(output, &root.child("output"), Scope::Plan, &input_names, &step_names);
        }
        for (name, step) in &plan.steps {
            let path = root.child("plan").child(name);
            for (source, at, scope) in located_sources(step, &path) {
                self.reference(source, &at, scope, &input_names, &step_names);
            }
            if let Some(call) = step.call() {
                self.targets(call, &path);
            }
        }
        // The graph: no cycle; then the order the typing pass (and a run) follows.
        match graph::order(&plan.steps) {
            Ok(order) => plan.order = order,
            Err(cycles) => {
                for cycle in cycles {
                    let first = cycle.first().cloned().unwrap_or_default();
                    self.push(
                        &root.child("plan").child(&first),
                        Kind::Cycle,
                        if cycle.len() == 1 {
                            "the step depends on its own output".to_owned()
                        } else {
                            format!("steps {} depend on each other in a circle", cycle.join(", "))
                        },
                    );
                }
            }
        }
        if !plan.order.is_empty() || plan.steps.is_empty() {
            check::check(&plan, &mut self.out);
        }
        plan.document = doc;
        plan
    }

    fn reference(
        &mut self,
        source: &Source,
        path: &Pointer,
        scope: Scope,
        inputs: &BTreeSet<String>,
        steps: &BTreeSet<String>,
    ) {
        let problem = match &source.root {
            Root::Input(name) if !inputs.contains(name) => {
                Some(format!("no input is named {name:?}"))
            }
            Root::Step(name) if !steps.contains(name) => Some(format!("no step is named {name:?}")),
            Root::Item | Root::Index | Root::Acc if !source.in_scope(scope) => Some(match scope {
                Scope::Plan => {
                    format!("{source} is defined only in the bindings of a map or reduce step")
                }
                Scope::Map => format!("{source} is not defined in a map step (`/acc` is reduce's)"),
                Scope::Reduce => {
                    format!("{source} is not defined in a reduce step (`/index` is map's)")
                }
            }),
            _ => None,
        };
        if let Some(message) = problem {
            self.push(path, Kind::Unresolved, message);
        }
    }

    /// Bindings' targets: none inside another, none through a literal that cannot hold it.
    fn targets(&mut self, call: &Call, step: &Pointer) {
        let bind = step.child("bind");
        for (i, b) in call.bind.iter().enumerate() {
            let at = bind.child(b.to.to_string());
            if let Some(outer) = call.bind[..i].iter().find(|o| b.to.starts_with(&o.to)) {
                self.push(
                    &at,
                    Kind::BadTarget,
                    format!("inside the target {:?} of another binding", outer.to.to_string()),
                );
                continue;
            }
            if b.to.is_root() {
                if call.args.is_some() {
                    self.push(
                        &at,
                        Kind::BadTarget,
                        "replaces the whole arguments, but `args` is given too",
                    );
                }
                continue;
            }
            let Some(args) = &call.args else {
                continue;
            };
            let tokens = b.to.tokens();
            let mut node = args;
            for (k, token) in tokens.iter().enumerate() {
                let last = k + 1 == tokens.len();
                match node {
                    // A missing member is created when the call is made; the last one replaced.
                    Value::Object(map) => match map.get(token) {
                        Some(next) if !last => node = next,
                        _ => break,
                    },
                    Value::Array(items) => {
                        match crate::pointer::index(token).and_then(|i| items.get(i)) {
                            Some(next) if !last => node = next,
                            Some(_) => break,
                            None => {
                                self.push(
                                    &at,
                                    Kind::BadTarget,
                                    format!("`args` has no list member {token:?} to fill"),
                                );
                                break;
                            }
                        }
                    }
                    other => {
                        self.push(
                            &at,
                            Kind::BadTarget,
                            format!(
                                "goes through {} in `args`, which has no members",
                                type_name(other)
                            ),
                        );
                        break;
                    }
                }
            }
        }
    }

    fn input(&mut self, v: &Value, path: &Pointer) -> Option<Input> {
        let map = self.object(v, path)?;
        if let Some(value) = map.get("value") {
            self.members(map, path, &["value"], &[]);
            return Some(Input::Value(value.clone()));
        }
        if !map.contains_key("cid") {
            self.members(map, path, &["value", "cid", "schema"], &[]);
            self.push(path, Kind::Missing, "an input is `{value: …}` or `{cid: …, schema: …}`");
            return None;
        }
        self.members(map, path, &["cid", "schema"], &["cid"]);
        let cid = map.get("cid").and_then(|c| self.cid(c, &path.child("cid"), None));
        let schema = match map.get("schema") {
            None => None,
            Some(s @ (Value::Object(_) | Value::Bool(_))) => {
                if let Err(e) = jsonschema_compiles(s) {
                    self.push(&path.child("schema"), Kind::BadSchema, e);
                    return None;
                }
                Some(s.clone())
            }
            Some(other) => {
                self.push(
                    &path.child("schema"),
                    Kind::WrongType,
                    format!("a JSON Schema is an object or a boolean, found {}", type_name(other)),
                );
                return None;
            }
        };
        Some(Input::Cid { cid: cid?, schema })
    }

    /// A CID's text, of `codec` when one is required.
    fn cid(&mut self, v: &Value, path: &Pointer, codec: Option<Codec>) -> Option<Cid> {
        let s = self.string(v, path)?;
        match s.parse::<Cid>() {
            Ok(cid) if cid.to_string() == s && codec.is_none_or(|c| cid.codec() == c) => Some(cid),
            Ok(_) => {
                self.push(
                    path,
                    Kind::BadValue,
                    "a capability id is a dag-cbor CID (b… text, as `capmesh cap id` prints it)",
                );
                None
            }
            Err(e) => {
                self.push(path, Kind::BadValue, format!("not a CID: {e}"));
                None
            }
        }
    }

    fn constraints(&mut self, v: &Value, path: &Pointer) -> Constraints {
        let mut out = Constraints::default();
        let Some(map) = self.object(v, path) else {
            return out;
        };
        self.members(map, path, &["deadline_ms", "max_price", "max_parallel"], &[]);
        if let Some(d) = map.get("deadline_ms") {
            out.deadline_ms = self.integer(d, &path.child("deadline_ms"), 1, MAX_DEADLINE_MS);
        }
        if let Some(p) = map.get("max_parallel") {
            out.max_parallel = self
                .integer(p, &path.child("max_parallel"), 1, u64::from(MAX_PARALLEL))
                .and_then(|n| u32::try_from(n).ok());
        }
        if let Some(price) = map.get("max_price") {
            let path = path.child("max_price");
            if let Some(m) = self.object(price, &path) {
                self.members(m, &path, &["amount", "unit"], &["amount", "unit"]);
                let amount = m
                    .get("amount")
                    .and_then(|a| self.integer(a, &path.child("amount"), 0, u64::MAX));
                let unit = m
                    .get("unit")
                    .and_then(|u| self.text(u, &path.child("unit"), 1, MAX_UNIT_CHARS));
                if let (Some(amount), Some(unit)) = (amount, unit) {
                    out.max_price = Some(Price { amount, unit });
                }
            }
        }
        out
    }

    fn policy(&mut self, v: &Value, path: &Pointer) -> Vec<Requirement> {
        let mut out = Vec::new();
        let Some(map) = self.object(v, path) else {
            return out;
        };
        self.members(map, path, &["require"], &[]);
        let Some(require) = map.get("require") else {
            return out;
        };
        let path = path.child("require");
        let Value::Array(items) = require else {
            self.push(
                &path,
                Kind::WrongType,
                format!("expected a list, found {}", type_name(require)),
            );
            return out;
        };
        if items.len() > MAX_REQUIRE {
            self.push(&path, Kind::TooMany, format!("more than {MAX_REQUIRE} requirements"));
        }
        for (i, item) in items.iter().enumerate() {
            let path = path.child(i.to_string());
            let Some(m) = self.object(item, &path) else {
                continue;
            };
            self.members(m, &path, &["claim", "issuers"], &["claim", "issuers"]);
            let claim = m.get("claim").and_then(|c| {
                let at = path.child("claim");
                let s = self.string(c, &at)?;
                if crate::is_claim(s) {
                    Some(s.to_owned())
                } else {
                    self.push(
                        &at,
                        Kind::BadValue,
                        format!("{s:?} is not a claim ({})", crate::CLAIM_RULE),
                    );
                    None
                }
            });
            let issuers =
                m.get("issuers").and_then(|list| self.issuers(list, &path.child("issuers")));
            if let (Some(claim), Some(issuers)) = (claim, issuers) {
                out.push(Requirement { claim, issuers });
            }
        }
        out
    }

    fn issuers(&mut self, v: &Value, path: &Pointer) -> Option<Vec<PeerId>> {
        let Value::Array(items) = v else {
            self.push(
                path,
                Kind::WrongType,
                format!("expected a list of PeerIds, found {}", type_name(v)),
            );
            return None;
        };
        if items.is_empty() {
            self.push(path, Kind::BadValue, "name at least one issuer");
        }
        if items.len() > MAX_ISSUERS {
            self.push(path, Kind::TooMany, format!("more than {MAX_ISSUERS} issuers"));
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = path.child(i.to_string());
            let Some(s) = self.string(item, &at) else { continue };
            match s.parse::<PeerId>() {
                Ok(peer) if peer.to_string() == s => out.push(peer),
                _ => self.push(
                    &at,
                    Kind::BadValue,
                    format!("{s:?} is not an ed25519 PeerId (12D3KooW…)"),
                ),
            }
        }
        (out.len() == items.len() && !items.is_empty() && items.len() <= MAX_ISSUERS).then_some(out)
    }

    /// `select`: `{optimize: {price, latency, reputation}}`.
    fn select(&mut self, v: &Value, path: &Pointer) -> Option<Weights> {
        let map = self.object(v, path)?;
        self.members(map, path, &["optimize"], &["optimize"]);
        let path = path.child("optimize");
        let m = self.object(map.get("optimize")?, &path)?;
        self.members(m, &path, &["price", "latency", "reputation"], &[]);
        let mut w = Weights { price: 0.0, latency: 0.0, reputation: 0.0 };
        let mut ok = true;
        for (name, slot) in [
            ("price", &mut w.price),
            ("latency", &mut w.latency),
            ("reputation", &mut w.reputation),
        ] {
            let Some(value) = m.get(name) else { continue };
            let at = path.child(name);
            match value.as_f64() {
                Some(x) if x >= 0.0 && value.is_number() => *slot = x,
                Some(_) => {
                    ok = false;
                    self.push(&at, Kind::BadValue, "a weight is a number ≥ 0");
                }
                None => {
                    ok = false;
                    self.push(
                        &at,
                        Kind::WrongType,
                        format!("a weight is a number, found {}", type_name(value)),
                    );
                }
            }
        }
        if ok && w.price + w.latency + w.reputation <= 0.0 {
            self.push(
                &path,
                Kind::BadValue,
                "at least one weight (price, latency, reputation) must be above 0",
            );
            return None;
        }
        ok.then_some(w)
    }

    fn step(&mut self, v: &Value, path: &Pointer) -> Option<Step> {
        let map = self.object(v, path)?;
        let kinds: Vec<&str> =
            ["map", "reduce", "join"].into_iter().filter(|k| map.contains_key(*k)).collect();
        let kind = match kinds.as_slice() {
            [] if map.contains_key("call") => "call",
            [] => {
                self.push(path, Kind::StepKind, "a step has `call`, `map`, `reduce` or `join`");
                return None;
            }
            [one] => *one,
            _ => {
                self.push(
                    path,
                    Kind::StepKind,
                    format!("a step is one kind: it has {}", kinds.join(" and ")),
                );
                return None;
            }
        };
        let (allowed, required): (&[&str], &[&str]) = match kind {
            "call" => (&["call", "args", "bind", "select"], &[]),
            "map" => (&["map", "call", "args", "bind", "select"], &["call"]),
            "reduce" => (&["reduce", "init", "call", "args", "bind", "select"], &["call"]),
            _ => (&["join"], &[]),
        };
        self.members(map, path, allowed, required);
        let optimize = match map.get("select") {
            Some(s) if kind != "join" => self.select(s, &path.child("select")).map(Some),
            _ => Some(None),
        };
        let step_kind = match kind {
            "join" => StepKind::Join(self.join(&map["join"], &path.child("join"))?),
            _ => {
                let call = self.call(map, path);
                let over = match kind {
                    "call" => None,
                    _ => self.source(&map[kind], &path.child(kind)),
                };
                match (kind, call, over) {
                    ("call", Some(call), _) => StepKind::Call(call),
                    ("map", Some(call), Some(over)) => StepKind::Map { over, call },
                    ("reduce", Some(call), Some(over)) => {
                        StepKind::Reduce { over, init: map.get("init").cloned(), call }
                    }
                    _ => return None,
                }
            }
        };
        Some(Step { kind: step_kind, optimize: optimize? })
    }

    fn call(&mut self, map: &Map<String, Value>, path: &Pointer) -> Option<Call> {
        let target = self.target(map.get("call")?, &path.child("call"));
        let mut bind = Vec::new();
        let mut ok = true;
        if let Some(b) = map.get("bind") {
            let at = path.child("bind");
            match self.object(b, &at) {
                Some(m) => {
                    if m.len() > MAX_BINDINGS {
                        self.push(&at, Kind::TooMany, format!("more than {MAX_BINDINGS} bindings"));
                    }
                    for (to, from) in m {
                        let here = at.child(to);
                        let to = match Pointer::parse(to) {
                            Ok(p) => Some(p),
                            Err(e) => {
                                self.push(
                                    &here,
                                    Kind::BadPointer,
                                    format!("the target {to:?}: {e}"),
                                );
                                None
                            }
                        };
                        let from = self.source(from, &here);
                        match (to, from) {
                            (Some(to), Some(from)) => bind.push(Binding { to, from }),
                            _ => ok = false,
                        }
                    }
                }
                None => ok = false,
            }
        }
        bind.sort_by(|a, b| a.to.cmp(&b.to));
        let target = target?;
        ok.then(|| Call { target, args: map.get("args").cloned(), bind })
    }

    fn target(&mut self, v: &Value, path: &Pointer) -> Option<Target> {
        match v {
            Value::String(_) => self.cid(v, path, Some(Codec::DagCbor)).map(Target::Id),
            Value::Object(m) => {
                self.members(m, path, &["tags", "name", "text"], &[]);
                if m.is_empty() {
                    self.push(path, Kind::BadValue, "a query has `tags`, `name` or `text`");
                    return None;
                }
                let mut q = Query::default();
                let mut ok = true;
                if let Some(tags) = m.get("tags") {
                    ok &= self.tags(tags, &path.child("tags"), &mut q.tags);
                }
                if let Some(name) = m.get("name") {
                    let at = path.child("name");
                    match self.string(name, &at) {
                        Some(s) if crate::is_contract_name(s) => q.name = Some(s.to_owned()),
                        Some(s) => {
                            ok = false;
                            self.push(
                                &at,
                                Kind::BadValue,
                                format!(
                                    "{s:?} is not a contract name (^[a-z][a-z0-9_.-]{{0,63}}$)"
                                ),
                            );
                        }
                        None => ok = false,
                    }
                }
                if let Some(text) = m.get("text") {
                    q.text = self.text(text, &path.child("text"), 1, MAX_TEXT_CHARS);
                    ok &= q.text.is_some();
                }
                ok.then_some(Target::Query(q))
            }
            other => {
                self.push(
                    path,
                    Kind::WrongType,
                    format!(
                        "`call` is a capability id or a query object, found {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    fn tags(&mut self, v: &Value, path: &Pointer, out: &mut Vec<String>) -> bool {
        let Value::Array(items) = v else {
            self.push(
                path,
                Kind::WrongType,
                format!("expected a list of tags, found {}", type_name(v)),
            );
            return false;
        };
        let mut ok = true;
        if items.is_empty() {
            ok = false;
            self.push(path, Kind::BadValue, "name at least one tag (or leave `tags` out)");
        }
        if items.len() > MAX_QUERY_TAGS {
            ok = false;
            self.push(path, Kind::TooMany, format!("more than {MAX_QUERY_TAGS} tags"));
        }
        for (i, item) in items.iter().enumerate() {
            let at = path.child(i.to_string());
            match self.string(item, &at) {
                Some(s) if !crate::is_tag(s) => {
                    ok = false;
                    self.push(
                        &at,
                        Kind::BadValue,
                        format!("{s:?} is not a tag (^[a-z0-9][a-z0-9_.:-]{{0,63}}$)"),
                    );
                }
                Some(s) if out.iter().any(|t| t == s) => {
                    ok = false;
                    self.push(&at, Kind::BadValue, format!("the tag {s:?} is named twice"));
                }
                Some(s) => out.push(s.to_owned()),
                None => ok = false,
            }
        }
        ok
    }

    fn join(&mut self, v: &Value, path: &Pointer) -> Option<Join> {
        let n = match v {
            Value::Object(m) => m.len(),
            Value::Array(items) => items.len(),
            other => {
                self.push(
                    path,
                    Kind::WrongType,
                    format!(
                        "`join` is an object or a list of references, found {}",
                        type_name(other)
                    ),
                );
                return None;
            }
        };
        if n == 0 {
            self.push(path, Kind::BadValue, "a join gathers at least one value");
        }
        if n > MAX_JOIN {
            self.push(path, Kind::TooMany, format!("more than {MAX_JOIN} members"));
        }
        let before = self.out.len();
        let join = match v {
            Value::Object(m) => Join::Object(
                m.iter()
                    .filter_map(|(k, s)| Some((k.clone(), self.source(s, &path.child(k))?)))
                    .collect(),
            ),
            Value::Array(items) => Join::List(
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| self.source(s, &path.child(i.to_string())))
                    .collect(),
            ),
            _ => unreachable!("checked above"),
        };
        (self.out.len() == before).then_some(join)
    }
}

/// Every reference of a step with its path in the document and where it is read.
pub(crate) fn located_sources<'a>(
    step: &'a Step,
    path: &Pointer,
) -> Vec<(&'a Source, Pointer, Scope)> {
    let bound = |call: &'a Call, scope| {
        call.bind.iter().map(move |b| (&b.from, path.child("bind").child(b.to.to_string()), scope))
    };
    match &step.kind {
        StepKind::Call(call) => bound(call, Scope::Plan).collect(),
        StepKind::Map { over, call } => std::iter::once((over, path.child("map"), Scope::Plan))
            .chain(bound(call, Scope::Map))
            .collect(),
        StepKind::Reduce { over, call, .. } => {
            std::iter::once((over, path.child("reduce"), Scope::Plan))
                .chain(bound(call, Scope::Reduce))
                .collect()
        }
        StepKind::Join(Join::Object(m)) => {
            m.iter().map(|(k, s)| (s, path.child("join").child(k), Scope::Plan)).collect()
        }
        StepKind::Join(Join::List(items)) => items
            .iter()
            .enumerate()
            .map(|(i, s)| (s, path.child("join").child(i.to_string()), Scope::Plan))
            .collect(),
    }
}

/// Whether an input's schema is a valid 2020-12 schema that compiles offline.
fn jsonschema_compiles(schema: &Value) -> Result<(), String> {
    let contract = capmesh_wire::Contract {
        name: "plan.input".into(),
        version: "1.0.0".into(),
        description: String::new(),
        input: schema.clone(),
        output: Value::Bool(true),
        tags: Vec::new(),
        read_only: true,
        idempotent: true,
        streaming: false,
    };
    capmesh_contract::check(&contract)
        .map(|_| ())
        .map_err(|e| format!("not a usable JSON Schema: {e}"))
}
