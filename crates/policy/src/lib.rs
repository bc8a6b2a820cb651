//! A capmesh node's call policy (DESIGN §6): pure rules over peers, claims and prices, the TOML
//! file they are read from, and per-caller admission limits. No network, no store: the node
//! answers attestation questions with a closure over its replica.
//!
//! - [`Policy`]: the immutable rules. Provider side, [`Policy::check_caller`] (may this peer call
//!   this capability?) and [`Policy::limits`]; caller side, [`Policy::check_provider`] and
//!   [`Policy::check_price`]. A refusal is a [`Denial`] carrying its protocol code
//!   ([`DenialCode`]: `PolicyDenied`, `PriceTooHigh`) and a reason a person can act on.
//! - [`Admission`]: rate (token bucket per caller and capability) and concurrency (per caller)
//!   on the provider, bounded in callers tracked; a [`Permit`] holds a concurrency slot, a
//!   [`Refusal`] is `RateLimited` (with `retry_after_ms`) or `Busy`.
//! - [`PolicyHandle`]: the live policy, swapped whole on [`PolicyHandle::reload`] (SIGHUP) or by
//!   [`PolicyHandle::watch`] when the file changes; a broken file keeps the last good policy.
//!
//! # The file
//!
//! Every field is optional; an empty or missing file allows everything with the default limits.
//! Unknown keys are refused ([`PolicyError::Parse`]); a bad PeerId, CID, claim or limit is
//! [`PolicyError::Invalid`] naming the field (e.g. `provider.capability[0].allow[1]`). The
//! commented `policy.example.toml` beside this crate's manifest is parsed by its tests.
//!
//! ```toml
//! [provider]                  # who may call what I serve
//! default = "allow"           # "allow" | "deny": callers in neither list (default "allow")
//! allow = ["12D3Koo…"]        # always allowed unless denied; default and require skip them
//! deny = ["12D3Koo…"]         # never allowed (deny beats allow)
//! # other callers must hold each claim from one of its issuers:
//! require = [{ claim = "member", issuers = ["12D3Koo…"] }]
//! rate_per_sec = 20.0         # per caller and capability: token bucket refill (default 50.0) …
//! burst = 40                  # … and size (default 100)
//! concurrency = 8             # per caller: calls running at once (default 16)
//!
//! [[provider.capability]]     # overrides for one capability: each field given replaces the
//! id = "bafy…"                # provider-wide one (lists replace, they do not add)
//! default = "deny"
//! allow = ["12D3Koo…"]
//! rate_per_sec = 2.0
//!
//! [caller]                    # whom I call and at what price
//! deny = ["12D3Koo…"]         # providers never called (default none)
//! require = [{ claim = "audited", issuers = ["12D3Koo…"] }]
//! accepted_units = ["credit"] # empty/absent = any unit
//! max_price = [{ unit = "credit", amount = 100 }]   # per unit; no entry = no maximum
//! ```
//!
//! Claims follow protocol §6.5 (`^[a-z0-9][a-z0-9_.:/-]{0,127}$`); a `require` entry needs at
//! least one issuer; `rate_per_sec` is positive and finite, `burst` and `concurrency` at least 1;
//! a `max_price` unit must be in `accepted_units` when that list is given.
//!
//! # Example
//!
//! ```
//! use capmesh_policy::{DenialCode, Policy};
//! use capmesh_types::{Cid, Codec, NodeKey};
//! use capmesh_wire::Price;
//!
//! let (friend, stranger, issuer) = (
//!     NodeKey::from_seed([1; 32]).peer_id(),
//!     NodeKey::from_seed([2; 32]).peer_id(),
//!     NodeKey::from_seed([3; 32]).peer_id(),
//! );
//! let policy = Policy::from_toml(&format!(
//!     r#"
//!     [provider]
//!     allow = ["{friend}"]
//!     require = [{{ claim = "member", issuers = ["{issuer}"] }}]
//!     [caller]
//!     max_price = [{{ unit = "credit", amount = 10 }}]
//!     "#
//! ))?;
//! let echo = Cid::of(Codec::DagCbor, b"echo contract");
//! let nobody_attested = |_: &_, _: &str, _: &_| false;
//! assert!(policy.check_caller(&friend, &echo, &nobody_attested).is_ok());
//! let denial = policy.check_caller(&stranger, &echo, &nobody_attested).unwrap_err();
//! assert_eq!(denial.code.code(), capmesh_wire::Code::PolicyDenied);
//! assert!(denial.reason.contains("missing attestation 'member'"));
//!
//! let price = Price { amount: 12, unit: "credit".into() };
//! assert_eq!(policy.check_price(&price, None).unwrap_err().code, DenialCode::PriceTooHigh);
//! assert_eq!(policy.limits(&echo).burst, 100);
//! # Ok::<(), capmesh_policy::PolicyError>(())
//! ```

mod admission;
mod error;
mod file;
mod handle;
mod rules;

pub use admission::{Admission, MAX_BUCKETS_PER_CALLER, Permit, Refusal};
pub use error::PolicyError;
pub use handle::PolicyHandle;
pub use rules::{Denial, DenialCode, Limits, Policy};
