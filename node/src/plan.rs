//! `capmesh plan check`: a plan's violations, or the steps in order and the plan's CID.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use capmesh::{DataDir, registry};
use capmesh_plan::{Format, Kind, Plan, PlanError, Query, Resolver, StepKind, Target};
use capmesh_store::Store;
use capmesh_types::Cid;
use capmesh_wire::{Contract, Filter};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum PlanCommand {
    /// Check a plan (JSON, or YAML for .yaml/.yml; FILE or -): prints every violation as
    /// `<path>: <message> [<code>]` and exits 1, or the steps in order and the plan's CID.
    /// Queries and contracts are resolved from the replica on disk when no node runs;
    /// otherwise they are left to run time.
    Check {
        file: PathBuf,
        /// Read FILE as YAML whatever its name.
        #[arg(long)]
        yaml: bool,
    },
}

pub(crate) fn run(
    command: PlanCommand,
    data_dir: impl Fn() -> anyhow::Result<DataDir>,
) -> anyhow::Result<ExitCode> {
    let PlanCommand::Check { file, yaml } = command;
    let bytes = crate::read(&file)?;
    let text =
        String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", file.display()))?;
    let format = if yaml { Format::Yaml } else { Format::of_path(&file) };
    let plan = match capmesh_plan::parse(&text, format) {
        Ok(plan) => plan,
        Err(violations) => return report(violations.list()),
    };
    let Some(store) = replica(data_dir) else {
        return unresolved(&plan);
    };
    let resolved = crate::block_on(capmesh_plan::resolve(plan, &Replica(&store)));
    store.close();
    match resolved {
        Ok(resolved) => {
            for name in resolved.plan().order() {
                let step = resolved.plan().step(name).expect("ordered steps exist");
                match resolved.pinned(name) {
                    Some(pin) => outln!(
                        "{name}  {}  {}  {} {}",
                        step.kind_name(),
                        pin.id,
                        pin.contract.name,
                        pin.contract.version
                    )?,
                    None => outln!("{name}  {}", step.kind_name())?,
                }
            }
            outln!("plan {}", resolved.cid())?;
            Ok(ExitCode::SUCCESS)
        }
        // The local replica is only this node's view of the registry: what it lacks may
        // still be found when the plan runs.
        Err(PlanError::Invalid(violations))
            if violations
                .list()
                .iter()
                .all(|v| matches!(v.kind, Kind::NoCandidate | Kind::UnknownContract)) =>
        {
            let plan = capmesh_plan::parse(&text, format).expect("parsed once already");
            for v in violations.list() {
                eprintln!("{}: not in the local replica, resolved at run time", v.path);
            }
            unresolved(&plan)
        }
        Err(PlanError::Invalid(violations)) => report(violations.list()),
        Err(e) => Err(e.into()),
    }
}

fn report(violations: &[capmesh_plan::Violation]) -> anyhow::Result<ExitCode> {
    for v in violations {
        outln!("{v}")?;
    }
    eprintln!("{} violation{}", violations.len(), if violations.len() == 1 { "" } else { "s" });
    Ok(ExitCode::from(1))
}

/// The steps in order without contracts: ids as written, queries left to run time.
fn unresolved(plan: &Plan) -> anyhow::Result<ExitCode> {
    for name in plan.order() {
        let step = plan.step(name).expect("ordered steps exist");
        match step.call().map(|c| &c.target) {
            Some(Target::Id(id)) => outln!("{name}  {}  {id}", step.kind_name())?,
            Some(Target::Query(_)) => {
                outln!("{name}  {}  (query: resolved at run time)", step.kind_name())?;
            }
            None => outln!("{name}  {}", step.kind_name())?,
        }
    }
    let queries = plan
        .steps()
        .values()
        .filter(|s| !matches!(s.kind, StepKind::Join(_)))
        .filter(|s| s.call().is_some_and(|c| matches!(c.target, Target::Query(_))))
        .count();
    eprintln!(
        "well-formed; contracts not all known here (a node runs, no replica was set up, or \
         it lacks them), {queries} quer{} resolved at run time; the CID is given once resolved",
        if queries == 1 { "y" } else { "ies" }
    );
    Ok(ExitCode::SUCCESS)
}

/// The replica on disk, when there is one and no node holds it.
fn replica(data_dir: impl Fn() -> anyhow::Result<DataDir>) -> Option<Store> {
    let dir = data_dir().ok()?;
    if !dir.replica_dir().exists() {
        return None;
    }
    let config = dir.config().ok()?;
    match registry::open(&dir, &config) {
        Ok(store) => Some(store),
        Err(e) => {
            tracing::debug!(error = %e, "replica not readable; queries left to run time");
            None
        }
    }
}

/// Queries and contracts from the replica (live adverts only).
struct Replica<'a>(&'a Store);

impl Resolver for Replica<'_> {
    type Error = capmesh_store::StoreError;

    async fn query(&self, q: &Query) -> Result<Vec<Cid>, Self::Error> {
        let query = capmesh_store::Query {
            filter: Filter {
                tags: q.tags.clone(),
                name_prefix: q.name.clone(),
                text: q.text.clone(),
                ..Filter::default()
            },
            limit: 1000,
            ..capmesh_store::Query::default()
        };
        let page = self.0.query(&query, capmesh::now_ms())?;
        let mut ids: Vec<Cid> = Vec::new();
        for hit in page.hits {
            let exact = q.name.as_ref().is_none_or(|n| *n == hit.summary.name);
            if exact && !ids.contains(&hit.summary.capability) {
                ids.push(hit.summary.capability);
            }
        }
        Ok(ids)
    }

    async fn contract(&self, id: &Cid) -> Result<Option<Contract>, Self::Error> {
        self.0.contract(id)
    }
}
