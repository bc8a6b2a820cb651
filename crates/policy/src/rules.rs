//! The policy itself: immutable rules and the checks the market asks of them.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::Path,
};

use capmesh_types::{Cid, PeerId};
use capmesh_wire::{Code, Price};

use crate::PolicyError;

/// A node's call policy (DESIGN §6), immutable once loaded.
///
/// [`Policy::default`] allows every caller and provider, any unit and any price, with the default
/// [`Limits`]; it is also what an empty or missing file gives. See the crate doc for the file.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub(crate) provider: ProviderRules,
    pub(crate) caller: CallerRules,
}

/// Who answers for callers not named in `allow` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Access {
    #[default]
    Allow,
    Deny,
}

/// The caller must hold `claim` from one of `issuers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Requirement {
    pub(crate) claim: String,
    pub(crate) issuers: Vec<PeerId>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ProviderRules {
    pub(crate) default: Access,
    pub(crate) allow: HashSet<PeerId>,
    pub(crate) deny: HashSet<PeerId>,
    pub(crate) require: Vec<Requirement>,
    pub(crate) limits: Limits,
    pub(crate) capabilities: HashMap<Cid, Overrides>,
}

/// One `[[provider.capability]]`: each field present replaces the provider-wide one.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    pub(crate) default: Option<Access>,
    pub(crate) allow: Option<HashSet<PeerId>>,
    pub(crate) deny: Option<HashSet<PeerId>>,
    pub(crate) require: Option<Vec<Requirement>>,
    pub(crate) rate_per_sec: Option<f64>,
    pub(crate) burst: Option<u32>,
    pub(crate) concurrency: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct CallerRules {
    pub(crate) deny: HashSet<PeerId>,
    pub(crate) require: Vec<Requirement>,
    /// Empty: any unit.
    pub(crate) accepted_units: Vec<String>,
    /// Per unit; a unit absent has no maximum.
    pub(crate) max_price: HashMap<String, u64>,
}

/// Per-caller limits of a capability on the provider, enforced by [`crate::Admission`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Token bucket refill, calls per second, per (caller, capability). Positive and finite.
    pub rate_per_sec: f64,
    /// Token bucket size: calls a caller may make at once after being idle. At least 1.
    pub burst: u32,
    /// Calls of one caller running at once, over all capabilities. At least 1.
    pub concurrency: u32,
}

impl Limits {
    /// 50 calls per second, burst 100, 16 running at once, per caller.
    pub const DEFAULT: Limits = Limits { rate_per_sec: 50.0, burst: 100, concurrency: 16 };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A refusal the other side sees: its protocol code (§11.2) and a reason a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Denial {
    pub code: DenialCode,
    pub reason: String,
}

/// The protocol code of a [`Denial`]; neither is retryable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenialCode {
    /// The policy refuses this caller, capability or provider.
    PolicyDenied,
    /// The price is above the caller's maximum, or in a unit the caller does not pay in.
    PriceTooHigh,
}

impl DenialCode {
    /// The code as it goes in `ErrorBody.code`: `PolicyDenied` or `PriceTooHigh`.
    pub const fn code(self) -> Code {
        match self {
            DenialCode::PolicyDenied => Code::PolicyDenied,
            DenialCode::PriceTooHigh => Code::PriceTooHigh,
        }
    }
}

impl fmt::Display for DenialCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code().as_str())
    }
}

impl Denial {
    fn policy(reason: String) -> Self {
        Self { code: DenialCode::PolicyDenied, reason }
    }

    fn price(reason: String) -> Self {
        Self { code: DenialCode::PriceTooHigh, reason }
    }
}

impl Policy {
    /// Parses a policy file's text. Every field is optional; unknown keys are refused
    /// ([`PolicyError::Parse`], the message naming the key and its line); a bad PeerId, CID,
    /// claim or limit is [`PolicyError::Invalid`] naming the field, e.g. `provider.deny[1]`.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        crate::file::parse(text, None)
    }

    /// Reads and parses the file at `path`; a file that does not exist is [`Policy::default`].
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => crate::file::parse(&text, Some(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Policy::default()),
            Err(source) => Err(PolicyError::Io { path: path.to_path_buf(), source }),
        }
    }

    /// Provider side: may `caller` call `capability`?
    ///
    /// In order: a caller in `deny` is refused; a caller in `allow` is accepted (neither
    /// `default` nor `require` applies to it); otherwise `default = "deny"` refuses it, and each
    /// `require` entry needs one issuer for which `attested(caller, claim, issuer)` is true. The
    /// fields of the capability's `[[provider.capability]]` entry replace the provider-wide ones.
    /// `attested` answers whether an unexpired verified attestation exists (the node asks its
    /// replica).
    pub fn check_caller(
        &self,
        caller: &PeerId,
        capability: &Cid,
        attested: &dyn Fn(&PeerId, &str, &PeerId) -> bool,
    ) -> Result<(), Denial> {
        let rules = &self.provider;
        let over = rules.capabilities.get(capability);
        let (deny, deny_field) = match over.and_then(|o| o.deny.as_ref()) {
            Some(deny) => (deny, "provider.capability.deny"),
            None => (&rules.deny, "provider.deny"),
        };
        if deny.contains(caller) {
            return Err(Denial::policy(format!(
                "caller {caller} may not call {capability} (listed in {deny_field})"
            )));
        }
        if over.and_then(|o| o.allow.as_ref()).unwrap_or(&rules.allow).contains(caller) {
            return Ok(());
        }
        let (default, default_field) = match over.and_then(|o| o.default) {
            Some(default) => (default, "provider.capability.default"),
            None => (rules.default, "provider.default"),
        };
        if default == Access::Deny {
            return Err(Denial::policy(format!(
                "caller {caller} is not allowed to call {capability} ({default_field} = deny)"
            )));
        }
        let (require, require_field) = match over.and_then(|o| o.require.as_ref()) {
            Some(require) => (require, "provider.capability.require"),
            None => (&rules.require, "provider.require"),
        };
        match missing(caller, require, attested) {
            Some(req) => Err(Denial::policy(format!(
                "caller {caller} is missing attestation '{}' from one of [{}] to call \
                 {capability} ({require_field})",
                req.claim,
                Issuers(&req.issuers)
            ))),
            None => Ok(()),
        }
    }

    /// Provider side: the per-caller limits for `capability`: its `[[provider.capability]]`
    /// values where given, else the provider-wide ones, else [`Limits::DEFAULT`].
    pub fn limits(&self, capability: &Cid) -> Limits {
        let base = self.provider.limits;
        match self.provider.capabilities.get(capability) {
            Some(over) => Limits {
                rate_per_sec: over.rate_per_sec.unwrap_or(base.rate_per_sec),
                burst: over.burst.unwrap_or(base.burst),
                concurrency: over.concurrency.unwrap_or(base.concurrency),
            },
            None => base,
        }
    }

    /// Caller side: may I call `provider`? Refused when it is in `caller.deny` or lacks one of
    /// the `caller.require` attestations.
    pub fn check_provider(
        &self,
        provider: &PeerId,
        attested: &dyn Fn(&PeerId, &str, &PeerId) -> bool,
    ) -> Result<(), Denial> {
        if self.caller.deny.contains(provider) {
            return Err(Denial::policy(format!(
                "provider {provider} is not called (listed in caller.deny)"
            )));
        }
        match missing(provider, &self.caller.require, attested) {
            Some(req) => Err(Denial::policy(format!(
                "provider {provider} is missing attestation '{}' from one of [{}] \
                 (caller.require)",
                req.claim,
                Issuers(&req.issuers)
            ))),
            None => Ok(()),
        }
    }

    /// Caller side: is `price` acceptable? Its unit must be accepted (`caller.accepted_units`),
    /// its amount at most `caller.max_price` for that unit, and, when the agent gave a per-call
    /// maximum `call_max`, in the same unit and at most that amount. Every refusal is
    /// [`DenialCode::PriceTooHigh`].
    pub fn check_price(&self, price: &Price, call_max: Option<&Price>) -> Result<(), Denial> {
        let show = Show(price);
        let rules = &self.caller;
        if !rules.accepted_units.is_empty() && !rules.accepted_units.contains(&price.unit) {
            return Err(Denial::price(format!(
                "price {show} is in a unit that is not accepted (caller.accepted_units = [{}])",
                rules.accepted_units.join(", ")
            )));
        }
        if let Some(&max) = rules.max_price.get(&price.unit)
            && price.amount > max
        {
            return Err(Denial::price(format!(
                "price {show} is above the maximum {max} {} (caller.max_price)",
                price.unit
            )));
        }
        if let Some(call_max) = call_max {
            if call_max.unit != price.unit {
                return Err(Denial::price(format!(
                    "price {show} is not in the unit of the call's maximum {}",
                    Show(call_max)
                )));
            }
            if price.amount > call_max.amount {
                return Err(Denial::price(format!(
                    "price {show} is above the call's maximum {}",
                    Show(call_max)
                )));
            }
        }
        Ok(())
    }

    /// Caller side: the policy's maximum price in `unit` (`caller.max_price`), if any.
    pub fn max_price(&self, unit: &str) -> Option<u64> {
        self.caller.max_price.get(unit).copied()
    }

    /// Caller side: whether prices in `unit` may be accepted (`caller.accepted_units`).
    pub fn accepts_unit(&self, unit: &str) -> bool {
        self.caller.accepted_units.is_empty()
            || self.caller.accepted_units.iter().any(|u| u == unit)
    }
}

/// The first requirement `subject` does not satisfy.
fn missing<'r>(
    subject: &PeerId,
    require: &'r [Requirement],
    attested: &dyn Fn(&PeerId, &str, &PeerId) -> bool,
) -> Option<&'r Requirement> {
    require
        .iter()
        .find(|req| !req.issuers.iter().any(|issuer| attested(subject, &req.claim, issuer)))
}

struct Issuers<'a>(&'a [PeerId]);

impl fmt::Display for Issuers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issuer) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{issuer}")?;
        }
        Ok(())
    }
}

/// "12 credit".
struct Show<'a>(&'a Price);

impl fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0.amount, self.0.unit)
    }
}
