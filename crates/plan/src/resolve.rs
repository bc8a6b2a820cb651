//! Pinning: every call's capability id chosen and its contract known, the wiring checked
//! against the contracts, and the plan's CID computed over the pinned document.

use std::collections::BTreeMap;
use std::future::Future;

use capmesh_types::Cid;
use capmesh_wire::Contract;
use serde_json::Value;

use crate::MAX_CANDIDATES;
use crate::check::{self, Env};
use crate::model::{Plan, Query, Target};
use crate::pointer::Pointer;
use crate::violation::{Kind, PlanError, Violation, Violations};

/// Where ids and contracts come from: the node implements it over its replica and the mesh;
/// tests use a table.
pub trait Resolver {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Capability ids whose contracts match `query` (every tag, the exact name, every word of
    /// the text), best first. Only the first [`MAX_CANDIDATES`] are considered.
    fn query(&self, query: &Query) -> impl Future<Output = Result<Vec<Cid>, Self::Error>> + Send;

    /// The contract of a capability id, when known. A contract that does not hash to `id` is
    /// taken as unknown.
    fn contract(
        &self,
        id: &Cid,
    ) -> impl Future<Output = Result<Option<Contract>, Self::Error>> + Send;
}

/// A capability pinned for a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Pinned {
    pub id: Cid,
    pub contract: Contract,
    /// The query it was chosen by, when the plan named one.
    pub query: Option<Query>,
}

/// A plan ready to run: every call names one capability whose contract is known and fits its
/// wiring, and the plan has a CID.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    plan: Plan,
    pinned: BTreeMap<String, Pinned>,
    document: Value,
    cid: Cid,
}

impl Resolved {
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The capability of a step that calls one.
    pub fn pinned(&self, step: &str) -> Option<&Pinned> {
        self.pinned.get(step)
    }

    /// Every pinned capability, by step name.
    pub fn all_pinned(&self) -> &BTreeMap<String, Pinned> {
        &self.pinned
    }

    /// The pinned document: the plan as written, each `call` replaced by its capability id.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// CID (dag-cbor, BLAKE3) of the canonical CBOR of [`document`](Self::document): the same
    /// plan written in JSON or YAML, member order aside, has the same CID.
    pub fn cid(&self) -> Cid {
        self.cid
    }
}

/// Pins `plan`: resolves each query (the first candidate whose contract fits the step is
/// chosen; its outputs are then checked where they are used), fetches every contract, and
/// checks every step's arguments against its capability's input schema, in the plan's order.
/// Violations are all collected; a resolver failure stops at once.
pub async fn resolve<R: Resolver + Sync>(plan: Plan, resolver: &R) -> Result<Resolved, PlanError> {
    let mut out = Vec::new();
    let mut env = Env::new(&plan);
    let mut pinned = BTreeMap::new();
    for name in &plan.order {
        let step = &plan.steps[name];
        let at = Pointer::from_tokens(["plan", name.as_str(), "call"]);
        let Some(call) = step.call() else {
            let shape = check::step(name, step, None, &env, &mut out);
            env.outputs.insert(name.clone(), shape);
            continue;
        };
        let failed = |source| PlanError::Resolver { step: name.clone(), source: Box::new(source) };
        let (ids, query) = match &call.target {
            Target::Id(id) => (vec![*id], None),
            Target::Query(q) => {
                let mut ids = resolver.query(q).await.map_err(failed)?;
                ids.truncate(MAX_CANDIDATES);
                (ids, Some(q.clone()))
            }
        };
        let mut chosen = None;
        let mut first_refusal: Option<Vec<Violation>> = None;
        let mut unknown = 0;
        for id in &ids {
            let contract = match resolver.contract(id).await.map_err(failed)? {
                Some(c) if capmesh_contract::capability_id(&c).ok() == Some(*id) => c,
                _ => {
                    unknown += 1;
                    continue;
                }
            };
            let mut found = Vec::new();
            let shape = check::step(name, step, Some(&contract), &env, &mut found);
            if found.is_empty() {
                chosen = Some((Pinned { id: *id, contract, query: query.clone() }, shape));
                break;
            }
            first_refusal.get_or_insert(found);
        }
        match chosen {
            Some((pin, shape)) => {
                env.outputs.insert(name.clone(), shape);
                pinned.insert(name.clone(), pin);
            }
            None => {
                env.outputs
                    .insert(name.clone(), check::step(name, step, None, &env, &mut Vec::new()));
                match (&query, first_refusal) {
                    (None, Some(found)) => out.extend(found),
                    (None, None) => out.push(Violation::new(
                        &at,
                        Kind::UnknownContract,
                        format!("no contract is known for {} (publish or find it first)", ids[0]),
                    )),
                    // Every candidate refused: why the best one does not fit.
                    (Some(_), Some(found)) => out.extend(found),
                    (Some(_), None) => {
                        let why = if unknown > 0 {
                            format!(" ({unknown} found, none with a known contract)")
                        } else {
                            String::new()
                        };
                        out.push(Violation::new(
                            &at,
                            Kind::NoCandidate,
                            format!("no capability answers the query{why}"),
                        ));
                    }
                }
            }
        }
    }
    check::output(&plan, &env, &mut out);
    if let Some(v) = Violations::of(out) {
        return Err(v.into());
    }
    let mut document = plan.document.clone();
    for (name, pin) in &pinned {
        if let Some(steps) = document.get_mut("plan").and_then(|p| p.get_mut(name)) {
            steps["call"] = Value::String(pin.id.to_string());
        }
    }
    let cid = capmesh_wire::schema::json_cid(&document).map_err(|e| {
        Violations::of(vec![Violation::new("", Kind::TooLarge, format!("no canonical form: {e}"))])
            .expect("one violation")
    })?;
    Ok(Resolved { plan, pinned, document, cid })
}
