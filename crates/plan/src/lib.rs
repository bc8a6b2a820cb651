//! Plans (Pervasive.link): a goal, its inputs, constraints, policy and selection weights, and
//! named steps — `call`, `map`, `reduce`, `join` — wired by references (JSON Pointers) to the
//! inputs and to earlier steps' outputs. The format is `specs/plans.md`; its JSON Schema
//! `specs/schemas/plan/Plan.json`.
//!
//! Two stages, each reporting every [`Violation`] with its path, never only the first:
//! - [`parse`] (JSON or YAML text) builds a [`Plan`]: well-formed, within bounds, every
//!   reference resolving to a declared input or step in a place where it is defined, no cycle,
//!   and every path and wiring that the literal inputs already prove wrong refused.
//! - [`resolve()`] pins it through a [`Resolver`] into a [`Resolved`] plan: each query turned
//!   into one capability id, every contract known, each step's arguments checked against its
//!   capability's input schema (conservatively: refused only when certainly incompatible),
//!   and the plan's CID computed over the pinned document.
//!
//! A [`Plan`] is what an executor walks: [`Plan::order`] (each step after its dependencies),
//! [`Step::dependencies`], [`Step::sources`], and [`Call::arguments`] to fill a call's
//! arguments from the values its references name.
//!
//! ```
//! use capmesh_plan::{Format, Kind, parse};
//!
//! let plan = parse(r#"
//! goal: Shout every word
//! inputs:
//!   words: {value: ["a", "b"]}
//! plan:
//!   shout:
//!     map: /inputs/words
//!     call: {name: text.upper}
//!     bind: {/text: /item}
//!   all:
//!     join: {shouted: /steps/shout, count: /steps/missing}
//! "#, Format::Yaml).unwrap_err();
//! assert_eq!(plan.list().len(), 1);
//! assert_eq!(plan.list()[0].path, "/plan/all/join/count");
//! assert_eq!(plan.list()[0].kind, Kind::Unresolved);
//! ```
//!
//! **Invariant:** pure: no network, disk, clock or async runtime; contracts and query results
//! come only through the caller's [`Resolver`].

mod check;
mod graph;
mod model;
mod parse;
pub mod pointer;
mod resolve;
mod shape;
mod violation;

pub use model::{
    Binding, Call, Constraints, FillError, Input, Join, Plan, Price, Query, Requirement, Step,
    StepKind, Target, Weights,
};
pub use parse::{Format, parse, parse_value};
pub use pointer::{Pointer, Root, Source};
pub use resolve::{Pinned, Resolved, Resolver, resolve};
pub use violation::{Kind, PlanError, Violation, Violations};

/// Largest plan text accepted, in bytes (256 KiB), checked before parsing.
pub const MAX_PLAN_BYTES: usize = 256 * 1024;
/// Deepest nesting of the plan document (objects and lists), so that it always has a
/// canonical CBOR form (whose decoder allows 64).
pub const MAX_DEPTH: usize = 48;
/// Most steps in a plan.
pub const MAX_STEPS: usize = 256;
/// Most inputs of a plan.
pub const MAX_INPUTS: usize = 64;
/// Most items of a literal list under `map` or `reduce` (an executor holds step outputs to
/// the same bound when they are mapped over).
pub const MAX_MAP_ITEMS: usize = 1024;
/// Most bindings of one call.
pub const MAX_BINDINGS: usize = 64;
/// Most members of a join.
pub const MAX_JOIN: usize = 64;
/// Most entries of `policy.require`.
pub const MAX_REQUIRE: usize = 16;
/// Most issuers of one requirement.
pub const MAX_ISSUERS: usize = 16;
/// Largest `constraints.max_parallel`.
pub const MAX_PARALLEL: u32 = 64;
/// Largest `constraints.deadline_ms`: one day, a call's own longest deadline.
pub const MAX_DEADLINE_MS: u64 = 86_400_000;
/// Longest `goal`, in characters.
pub const MAX_GOAL_CHARS: usize = 4096;
/// Longest query `text`, in characters.
pub const MAX_TEXT_CHARS: usize = 256;
/// Longest price unit, in characters.
pub const MAX_UNIT_CHARS: usize = 64;
/// Most tags in a query (a contract has at most as many).
pub const MAX_QUERY_TAGS: usize = 32;
/// Most candidates of a query considered when resolving it.
pub const MAX_CANDIDATES: usize = 16;

/// The rule of input and step names, in words.
pub const NAME_RULE: &str = "a letter, then up to 63 letters, digits, '_' or '-'";
/// The rule of claims, in words.
pub const CLAIM_RULE: &str = "^[a-z0-9][a-z0-9_.:/-]{0,127}$";

/// An input or step name: `^[A-Za-z][A-Za-z0-9_-]{0,63}$`.
pub fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

/// A contract name: `^[a-z][a-z0-9_.-]{0,63}$`.
pub(crate) fn is_contract_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c))
}

/// A tag: `^[a-z0-9][a-z0-9_.:-]{0,63}$`.
pub(crate) fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && b.len() <= 64 && ok(&b[0]) && b.iter().all(|c| ok(c) || b"_.:-".contains(c))
}

/// A claim: `^[a-z0-9][a-z0-9_.:/-]{0,127}$`.
pub(crate) fn is_claim(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && b.len() <= 128 && ok(&b[0]) && b.iter().all(|c| ok(c) || b"_.:/-".contains(c))
}
