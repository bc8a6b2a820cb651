//! Capability contracts (DESIGN §3): the "what" of a capability — name, version, description,
//! input and output JSON Schemas (2020-12), tags and flags — whose CID is the capability id.
//!
//! - [`check`] admits a [`Contract`] only if it is well-formed (at most [`MAX_CONTRACT_BYTES`] of
//!   canonical CBOR, name and tag patterns, semantic version, valid and self-contained schemas)
//!   and returns its capability id; each refusal is a typed [`ContractError`] with a stable
//!   [`code`](ContractError::code).
//! - [`Validators`] is the bounded, thread-safe LRU cache of [`Compiled`] contracts by capability
//!   id; a [`Compiled`] validates arguments and outputs and lists every [`Violation`].
//! - [`scaffold`] writes the starting contract of `capmesh cap new NAME`.
//!
//! Schemas must be self-contained: every `$ref` and `$dynamicRef` starts with `#`, checked on the
//! JSON before anything is compiled, and validators are built offline, so nothing is ever fetched
//! or read while checking or validating.
//!
//! ```
//! use capmesh_contract::{Validators, check, scaffold};
//! use serde_json::json;
//!
//! let mut contract = scaffold("weather.forecast")?;
//! contract.description = "Daily forecast for a city.".into();
//! contract.input = json!({
//!     "type": "object",
//!     "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
//!     "required": ["city"],
//!     "additionalProperties": false,
//! });
//! let id = check(&contract)?;
//!
//! let validators = Validators::default();
//! let compiled = validators.get(&id, &contract)?;
//! assert!(compiled.validate_input(&json!({"city": "Lyon", "days": 3})).is_ok());
//! let violations = compiled.validate_input(&json!({"days": 0})).unwrap_err();
//! assert_eq!(violations.len(), 2); // "city" missing, /days below the minimum
//!
//! // A reference outside the document is refused by name and place.
//! contract.output = json!({"$ref": "https://example.com/out.json"});
//! let refused = check(&contract).unwrap_err();
//! assert_eq!(refused.code(), "ExternalRef");
//! # Ok::<(), capmesh_contract::ContractError>(())
//! ```
//!
//! **Invariant:** no network, no disk, no async, no clock: a contract is judged on its bytes
//! alone.

mod cache;
mod check;
mod error;

pub use cache::{Compiled, Validators};
pub use capmesh_wire::Contract;
pub use check::{
    DRAFT_2020_12, MAX_CONTRACT_BYTES, MAX_CONTRACT_DEPTH, MAX_DESCRIPTION_BYTES, MAX_NAME_BYTES,
    MAX_TAG_BYTES, MAX_TAGS, capability_id, check, scaffold,
};
pub use error::{ContractError, TagProblem, Violation, Which, summarize};
