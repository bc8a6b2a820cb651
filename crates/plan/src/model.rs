//! The typed plan: what [`parse`](crate::parse) builds once and every later stage reads.

use std::collections::{BTreeMap, BTreeSet};

use capmesh_types::{Cid, PeerId};
use serde_json::Value;

use crate::pointer::{Pointer, Root, Source};

/// A checked plan: well-formed, every reference resolves, the steps form a DAG.
///
/// Built by [`parse`](crate::parse); its capabilities are pinned by
/// [`resolve`](crate::resolve()).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub(crate) goal: String,
    pub(crate) inputs: BTreeMap<String, Input>,
    pub(crate) constraints: Constraints,
    pub(crate) require: Vec<Requirement>,
    pub(crate) optimize: Option<Weights>,
    pub(crate) steps: BTreeMap<String, Step>,
    pub(crate) output: Option<Source>,
    /// Step names, each after every step it depends on (ties by name).
    pub(crate) order: Vec<String>,
    /// The document as parsed (the JSON data model, whether it came as JSON or YAML).
    pub(crate) document: Value,
}

impl Plan {
    pub fn goal(&self) -> &str {
        &self.goal
    }

    pub fn inputs(&self) -> &BTreeMap<String, Input> {
        &self.inputs
    }

    pub fn constraints(&self) -> &Constraints {
        &self.constraints
    }

    /// `policy.require`: attestations every provider of every step must hold.
    pub fn require(&self) -> &[Requirement] {
        &self.require
    }

    /// `select.optimize` of the plan (each step may override it).
    pub fn optimize(&self) -> Option<&Weights> {
        self.optimize.as_ref()
    }

    pub fn steps(&self) -> &BTreeMap<String, Step> {
        &self.steps
    }

    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.get(name)
    }

    /// The plan's result, when it names one; otherwise the result is an object of the outputs
    /// of the steps nothing depends on, by name.
    pub fn output(&self) -> Option<&Source> {
        self.output.as_ref()
    }

    /// Step names in an order where each comes after every step it depends on (ties broken by
    /// name, so the order is a function of the plan).
    pub fn order(&self) -> &[String] {
        &self.order
    }

    /// The steps nothing depends on, by name.
    pub fn sinks(&self) -> Vec<&str> {
        let used: BTreeSet<&str> = self.steps.values().flat_map(|s| s.dependencies()).collect();
        self.steps.keys().map(String::as_str).filter(|n| !used.contains(n)).collect()
    }

    /// The plan document as parsed (JSON data model).
    pub fn document(&self) -> &Value {
        &self.document
    }
}

/// A named input of the plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `{"value": …}`: the value itself.
    Value(Value),
    /// `{"cid": …, "schema": …}`: the value is the one whose canonical CBOR has this CID
    /// (fetched when the plan runs); its schema, when given, is what checking knows of it.
    Cid { cid: Cid, schema: Option<Value> },
}

/// `constraints`: bounds on the whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Constraints {
    /// The run must end within this many milliseconds of its start.
    pub deadline_ms: Option<u64>,
    /// The prices of all the calls of the run add up to at most this.
    pub max_price: Option<Price>,
    /// At most this many calls in flight at once.
    pub max_parallel: Option<u32>,
}

/// A price cap: an amount in a unit (offers in other units are not taken).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub amount: u64,
    pub unit: String,
}

/// One entry of `policy.require`: providers must hold an unexpired attestation of `claim` by
/// one of `issuers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub claim: String,
    pub issuers: Vec<PeerId>,
}

/// `select.optimize`: how offers are ranked. The names are the market's: price, latency,
/// reputation (a weight not given is 0; at least one is above 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub price: f64,
    pub latency: f64,
    pub reputation: f64,
}

/// A named step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub kind: StepKind,
    /// `select.optimize` for this step's calls (else the plan's).
    pub optimize: Option<Weights>,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// One call. Output: the call's output.
    Call(Call),
    /// The call once per item of the list `over` (`/item`, `/index` name the item and its
    /// position). Output: the list of outputs, in the order of the items.
    Map { over: Source, call: Call },
    /// A fold: the call once per item of `over`, in order, `/acc` being `init` (or the first
    /// item, which is then not called on) and then each call's output. Output: the last
    /// accumulated value.
    Reduce { over: Source, init: Option<Value>, call: Call },
    /// No call: the referenced values gathered into one object (or list). Output: that value.
    Join(Join),
}

/// A capability call: which capability, and its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub target: Target,
    /// Literal arguments (absent: `{}` unless a binding targets the whole arguments).
    pub args: Option<Value>,
    /// Values filled into the arguments before the call, by target pointer order.
    pub bind: Vec<Binding>,
}

/// Which capability a call runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A capability id.
    Id(Cid),
    /// Resolved to an id before the plan runs.
    Query(Query),
}

/// A query by tags, name and words, as the registry answers them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Every tag must be on the contract.
    pub tags: Vec<String>,
    /// The contract's exact name.
    pub name: Option<String>,
    /// Words searched in names, descriptions and tags (every word must be there).
    pub text: Option<String>,
}

/// One entry of `bind`: the value at `from` is put at `to` in the arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Where in the arguments (`""`: the arguments are that value).
    pub to: Pointer,
    pub from: Source,
}

/// What a join gathers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Join {
    /// `{"a": "/steps/x", …}` → `{"a": <value of /steps/x>, …}`.
    Object(BTreeMap<String, Source>),
    /// `["/steps/x", …]` → `[<value of /steps/x>, …]`.
    List(Vec<Source>),
}

impl Step {
    /// Every reference the step reads, `over` first.
    pub fn sources(&self) -> Vec<&Source> {
        match &self.kind {
            StepKind::Call(call) => call.bind.iter().map(|b| &b.from).collect(),
            StepKind::Map { over, call } | StepKind::Reduce { over, call, .. } => {
                std::iter::once(over).chain(call.bind.iter().map(|b| &b.from)).collect()
            }
            StepKind::Join(Join::Object(members)) => members.values().collect(),
            StepKind::Join(Join::List(members)) => members.iter().collect(),
        }
    }

    /// The steps this one needs the outputs of.
    pub fn dependencies(&self) -> BTreeSet<&str> {
        self.sources().into_iter().filter_map(Source::step).collect()
    }

    /// The call this step makes (per item for map and reduce), if any.
    pub fn call(&self) -> Option<&Call> {
        match &self.kind {
            StepKind::Call(call) | StepKind::Map { call, .. } | StepKind::Reduce { call, .. } => {
                Some(call)
            }
            StepKind::Join(_) => None,
        }
    }

    /// `call`, `map`, `reduce` or `join`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            StepKind::Call(_) => "call",
            StepKind::Map { .. } => "map",
            StepKind::Reduce { .. } => "reduce",
            StepKind::Join(_) => "join",
        }
    }
}

/// Why arguments could not be filled (the values found at run time do not fit the bindings).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FillError {
    #[error("{0} has no value")]
    Missing(String),
    #[error("cannot put a value at {0}: what is above it is not an object or array")]
    Target(String),
}

impl Call {
    /// The arguments of one call: the literal `args` with each binding's value put at its
    /// target (missing objects on the way are created; an array member must exist).
    /// `value_of` returns the value a reference names at run time.
    pub fn arguments(
        &self,
        mut value_of: impl FnMut(&Source) -> Option<Value>,
    ) -> Result<Value, FillError> {
        let mut args = self.args.clone().unwrap_or_else(|| Value::Object(Default::default()));
        for binding in &self.bind {
            let value = value_of(&binding.from)
                .ok_or_else(|| FillError::Missing(binding.from.to_string()))?;
            let Some((last, parents)) = binding.to.tokens().split_last() else {
                args = value;
                continue;
            };
            let mut at = &mut args;
            for token in parents {
                at = match at {
                    Value::Object(map) => map
                        .entry(token.clone())
                        .or_insert_with(|| Value::Object(Default::default())),
                    Value::Array(items) => crate::pointer::index(token)
                        .and_then(|i| items.get_mut(i))
                        .ok_or_else(|| FillError::Target(binding.to.to_string()))?,
                    _ => return Err(FillError::Target(binding.to.to_string())),
                };
            }
            match at {
                Value::Object(map) => {
                    map.insert(last.clone(), value);
                }
                Value::Array(items) => {
                    let slot = crate::pointer::index(last)
                        .and_then(|i| items.get_mut(i))
                        .ok_or_else(|| FillError::Target(binding.to.to_string()))?;
                    *slot = value;
                }
                _ => return Err(FillError::Target(binding.to.to_string())),
            }
        }
        Ok(args)
    }
}

impl Source {
    /// Whether this reference may appear in a step of this kind (`/item` in map and reduce,
    /// `/index` in map, `/acc` in reduce; inputs and steps anywhere).
    pub(crate) fn in_scope(&self, kind: Scope) -> bool {
        match self.root {
            Root::Input(_) | Root::Step(_) => true,
            Root::Item => matches!(kind, Scope::Map | Scope::Reduce),
            Root::Index => kind == Scope::Map,
            Root::Acc => kind == Scope::Reduce,
        }
    }
}

/// Where a reference is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The plan level: `over`, joins, `output`, a call step's bindings.
    Plan,
    /// The bindings of a map step's call.
    Map,
    /// The bindings of a reduce step's call.
    Reduce,
}
