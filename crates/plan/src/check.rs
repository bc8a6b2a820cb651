//! The typing pass: every reference's path against what is known of its target, lists under
//! `map` / `reduce`, and (once contracts are known) each call's arguments against its
//! capability's input schema. Run by [`parse`](crate::parse) with no contract, and by
//! [`resolve`](crate::resolve()) with each step's contract.

use std::collections::BTreeMap;

use capmesh_wire::Contract;
use serde_json::Value;

use crate::MAX_MAP_ITEMS;
use crate::model::{Call, Input, Join, Plan, Step, StepKind};
use crate::pointer::{Pointer, Root, Source};
use crate::shape::{Shape, incompatible};
use crate::violation::{Kind, Violation};

/// What is known of the inputs and of the outputs of the steps checked so far.
#[derive(Debug, Default)]
pub(crate) struct Env {
    inputs: BTreeMap<String, Shape>,
    pub(crate) outputs: BTreeMap<String, Shape>,
}

impl Env {
    pub(crate) fn new(plan: &Plan) -> Self {
        let inputs = plan
            .inputs
            .iter()
            .map(|(name, input)| {
                let shape = match input {
                    Input::Value(v) => Shape::Exact(v.clone()),
                    Input::Cid { schema: Some(s), .. } => Shape::Schema(s.clone()),
                    Input::Cid { schema: None, .. } => Shape::Unknown,
                };
                (name.clone(), shape)
            })
            .collect();
        Self { inputs, outputs: BTreeMap::new() }
    }
}

/// What `/item`, `/index` and `/acc` are in the bindings being checked.
#[derive(Debug, Clone, Default)]
struct Local {
    item: Option<Shape>,
    acc: Option<Shape>,
}

fn shape_of(source: &Source, env: &Env, local: &Local) -> Result<Shape, String> {
    let base = match &source.root {
        Root::Input(name) => env.inputs.get(name).cloned().unwrap_or(Shape::Unknown),
        Root::Step(name) => env.outputs.get(name).cloned().unwrap_or(Shape::Unknown),
        Root::Item => local.item.clone().unwrap_or(Shape::Unknown),
        Root::Index => Shape::Index,
        Root::Acc => local.acc.clone().unwrap_or(Shape::Unknown),
    };
    base.at(source.path.tokens()).map_err(|why| format!("{source} cannot exist: {why}"))
}

/// The parse-stage pass: no contract known, every step's output unknown but joins'.
pub(crate) fn check(plan: &Plan, out: &mut Vec<Violation>) {
    let mut env = Env::new(plan);
    for name in &plan.order {
        let shape = step(name, &plan.steps[name], None, &env, out);
        env.outputs.insert(name.clone(), shape);
    }
    output(plan, &env, out);
}

/// The plan's `output` reference.
pub(crate) fn output(plan: &Plan, env: &Env, out: &mut Vec<Violation>) {
    if let Some(source) = &plan.output
        && let Err(why) = shape_of(source, env, &Local::default())
    {
        out.push(Violation::new("/output", Kind::Implausible, why));
    }
}

/// Checks one step given what is known so far (and its contract, when known); returns what
/// is known of its output.
pub(crate) fn step(
    name: &str,
    step: &Step,
    contract: Option<&Contract>,
    env: &Env,
    out: &mut Vec<Violation>,
) -> Shape {
    let path = Pointer::from_tokens(["plan", name]);
    let produced = contract.map_or(Shape::Unknown, |c| Shape::Schema(c.output.clone()));
    match &step.kind {
        StepKind::Call(c) => {
            call(c, contract, env, &Local::default(), &path, out);
            produced
        }
        StepKind::Map { over, call: c } => {
            let Some(items) = list(over, env, &path.child("map"), out) else {
                return Shape::List(Box::new(produced));
            };
            for item in items {
                let local = Local { item: Some(item), acc: None };
                if !call(c, contract, env, &local, &path, out) {
                    break;
                }
            }
            Shape::List(Box::new(produced))
        }
        StepKind::Reduce { over, init, call: c } => {
            let Some(items) = list(over, env, &path.child("reduce"), out) else {
                return Shape::Unknown;
            };
            // The accumulator: `init` (or an item) first, then each call's output.
            let mut accs: Vec<Shape> = match init {
                Some(v) => vec![Shape::Exact(v.clone())],
                None => items.clone(),
            };
            if contract.is_some() {
                accs.push(produced.clone());
            }
            'items: for item in &items {
                for acc in &accs {
                    let local = Local { item: Some(item.clone()), acc: Some(acc.clone()) };
                    if !call(c, contract, env, &local, &path, out) {
                        break 'items;
                    }
                }
            }
            match (contract, init) {
                (None, _) => Shape::Unknown,
                (Some(_), None) => produced,
                // An empty list gives `init`: the output schema holds only if `init` is valid.
                (Some(c), Some(init)) => match capmesh_contract::Compiled::new(c) {
                    Ok(compiled) if compiled.validate_output(init).is_ok() => produced,
                    _ => Shape::Unknown,
                },
            }
        }
        StepKind::Join(Join::Object(members)) => Shape::Record(
            members
                .iter()
                .map(|(key, source)| {
                    let at = path.child("join").child(key);
                    (key.clone(), resolved(source, env, &Local::default(), &at, out))
                })
                .collect(),
        ),
        StepKind::Join(Join::List(members)) => Shape::Tuple(
            members
                .iter()
                .enumerate()
                .map(|(i, source)| {
                    let at = path.child("join").child(i.to_string());
                    resolved(source, env, &Local::default(), &at, out)
                })
                .collect(),
        ),
    }
}

/// What is known of a reference's value; `Unknown` (and a violation) when its path cannot exist.
fn resolved(
    source: &Source,
    env: &Env,
    local: &Local,
    at: &Pointer,
    out: &mut Vec<Violation>,
) -> Shape {
    shape_of(source, env, local).unwrap_or_else(|why| {
        out.push(Violation::new(at, Kind::Implausible, why));
        Shape::Unknown
    })
}

/// The items of the list `over` names, as far as known (one shape standing for all of them
/// when they are not known one by one); `None` when it is certainly not a list.
fn list(over: &Source, env: &Env, at: &Pointer, out: &mut Vec<Violation>) -> Option<Vec<Shape>> {
    let shape = match shape_of(over, env, &Local::default()) {
        Ok(shape) => shape,
        Err(why) => {
            out.push(Violation::new(at, Kind::Implausible, why));
            return None;
        }
    };
    match shape.items() {
        Ok(items) if items.len() > MAX_MAP_ITEMS => {
            out.push(Violation::new(
                at,
                Kind::TooManyItems,
                format!("{} items: at most {MAX_MAP_ITEMS} are mapped or reduced", items.len()),
            ));
            None
        }
        Ok(items) if items.is_empty() => Some(vec![Shape::Unknown]),
        Ok(items) => Some(items),
        Err(why) => {
            out.push(Violation::new(at, Kind::NotAList, format!("{over} is not a list: {why}")));
            None
        }
    }
}

/// Checks a call's bindings and, with its contract, its arguments. `false` when something was
/// reported (the caller stops at the first failing item of a list).
fn call(
    c: &Call,
    contract: Option<&Contract>,
    env: &Env,
    local: &Local,
    step: &Pointer,
    out: &mut Vec<Violation>,
) -> bool {
    let before = out.len();
    let bind = step.child("bind");
    let mut args = match &c.args {
        Some(v) => Shape::Exact(v.clone()),
        None => Shape::Record(BTreeMap::new()),
    };
    for b in &c.bind {
        let value = resolved(&b.from, env, local, &bind.child(b.to.to_string()), out);
        args = overlay(args, b.to.tokens(), value);
    }
    let Some(contract) = contract else {
        return out.len() == before;
    };
    if c.bind.is_empty() {
        // Literal arguments: judged exactly.
        let literal = c.args.clone().unwrap_or_else(|| Value::Object(Default::default()));
        if let Ok(compiled) = capmesh_contract::Compiled::new(contract)
            && let Err(violations) = compiled.validate_input(&literal)
        {
            let at = if c.args.is_some() { step.child("args") } else { step.clone() };
            for v in violations {
                out.push(Violation::new(
                    format!("{at}{}", v.pointer),
                    Kind::InvalidArgs,
                    format!("{} refuses these arguments: {}", contract.name, v.reason),
                ));
            }
        }
        return out.len() == before;
    }
    for (rel, why) in incompatible(&args, &contract.input) {
        // Blame the binding that put the value there, else the literal arguments.
        let target = Pointer::parse(&rel).unwrap_or_default();
        let at = match c.bind.iter().rev().find(|b| target.starts_with(&b.to)) {
            Some(b) => bind.child(b.to.to_string()),
            None if c.args.is_some() => Pointer::parse(&format!("{}{rel}", step.child("args")))
                .unwrap_or_else(|_| step.child("args")),
            None => step.clone(),
        };
        let place =
            if rel.is_empty() { "the arguments".to_owned() } else { format!("argument {rel}") };
        out.push(Violation::new(
            at,
            Kind::Incompatible,
            format!("{place} of {} {}: {why}", contract.name, contract.version),
        ));
    }
    out.len() == before
}

/// `base` with `value` put at `tokens` (objects on the way created, as when the call is made).
fn overlay(base: Shape, tokens: &[String], value: Shape) -> Shape {
    let Some((first, rest)) = tokens.split_first() else {
        return value;
    };
    match base {
        Shape::Exact(Value::Array(items)) => {
            let mut items: Vec<Shape> = items.into_iter().map(Shape::Exact).collect();
            if let Some(slot) = crate::pointer::index(first).and_then(|i| items.get_mut(i)) {
                *slot = overlay(std::mem::replace(slot, Shape::Unknown), rest, value);
            }
            Shape::Tuple(items)
        }
        Shape::Tuple(mut items) => {
            if let Some(slot) = crate::pointer::index(first).and_then(|i| items.get_mut(i)) {
                *slot = overlay(std::mem::replace(slot, Shape::Unknown), rest, value);
            }
            Shape::Tuple(items)
        }
        other => {
            let mut members = match other {
                Shape::Exact(Value::Object(m)) => {
                    m.into_iter().map(|(k, v)| (k, Shape::Exact(v))).collect()
                }
                Shape::Record(m) => m,
                _ => BTreeMap::new(),
            };
            let below = members.remove(first).unwrap_or(Shape::Record(BTreeMap::new()));
            members.insert(first.clone(), overlay(below, rest, value));
            Shape::Record(members)
        }
    }
}
