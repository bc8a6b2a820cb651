//! The TOML file: its raw shape (serde, unknown keys refused) and its conversion to a [`Policy`]
//! with every id parsed and every value checked, errors naming the field.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    str::FromStr,
};

use capmesh_types::{Cid, PeerId};
use capmesh_wire::Price;
use serde::Deserialize;

use crate::{
    PolicyError,
    rules::{Access, CallerRules, Limits, Overrides, Policy, ProviderRules, Requirement},
};

/// Longest claim, in bytes (protocol §6.5: `^[a-z0-9][a-z0-9_.:/-]{0,127}$`).
const MAX_CLAIM_BYTES: usize = 128;
/// Longest unit of account accepted in the file, in bytes.
const MAX_UNIT_BYTES: usize = 64;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    provider: RawProvider,
    #[serde(default)]
    caller: RawCaller,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    default: Option<Access>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    require: Option<Vec<RawRequirement>>,
    rate_per_sec: Option<f64>,
    burst: Option<u32>,
    concurrency: Option<u32>,
    #[serde(default)]
    capability: Vec<RawCapability>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapability {
    id: String,
    default: Option<Access>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    require: Option<Vec<RawRequirement>>,
    rate_per_sec: Option<f64>,
    burst: Option<u32>,
    concurrency: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    claim: String,
    issuers: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaller {
    deny: Option<Vec<String>>,
    require: Option<Vec<RawRequirement>>,
    accepted_units: Option<Vec<String>>,
    max_price: Option<Vec<Price>>,
}

/// Parses and checks a policy file's text; `path` only labels parse errors.
pub(crate) fn parse(text: &str, path: Option<&Path>) -> Result<Policy, PolicyError> {
    let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError::Parse {
        path: path.map(Path::to_path_buf),
        message: e.to_string().trim_end().to_owned(),
    })?;
    Ok(Policy { provider: provider(raw.provider)?, caller: caller(raw.caller)? })
}

fn provider(raw: RawProvider) -> Result<ProviderRules, PolicyError> {
    let base = Limits::default();
    let limits = Limits {
        rate_per_sec: rate(raw.rate_per_sec, "provider.rate_per_sec")?.unwrap_or(base.rate_per_sec),
        burst: at_least_one(raw.burst, "provider.burst")?.unwrap_or(base.burst),
        concurrency: at_least_one(raw.concurrency, "provider.concurrency")?
            .unwrap_or(base.concurrency),
    };
    let mut capabilities = HashMap::with_capacity(raw.capability.len());
    let mut first_seen: HashMap<Cid, usize> = HashMap::new();
    for (i, cap) in raw.capability.into_iter().enumerate() {
        let at = format!("provider.capability[{i}]");
        let id: Cid = parse_id(&cap.id, &format!("{at}.id"), "CID")?;
        if let Some(first) = first_seen.insert(id, i) {
            return Err(invalid(
                format!("{at}.id"),
                format!("capability {id} is already listed at provider.capability[{first}]"),
            ));
        }
        let overrides = Overrides {
            default: cap.default,
            allow: cap.allow.map(|list| peers(&list, &format!("{at}.allow"))).transpose()?,
            deny: cap.deny.map(|list| peers(&list, &format!("{at}.deny"))).transpose()?,
            require: cap
                .require
                .map(|list| requirements(list, &format!("{at}.require")))
                .transpose()?,
            rate_per_sec: rate(cap.rate_per_sec, &format!("{at}.rate_per_sec"))?,
            burst: at_least_one(cap.burst, &format!("{at}.burst"))?,
            concurrency: at_least_one(cap.concurrency, &format!("{at}.concurrency"))?,
        };
        capabilities.insert(id, overrides);
    }
    Ok(ProviderRules {
        default: raw.default.unwrap_or(Access::Allow),
        allow: raw
            .allow
            .map(|list| peers(&list, "provider.allow"))
            .transpose()?
            .unwrap_or_default(),
        deny: raw.deny.map(|list| peers(&list, "provider.deny")).transpose()?.unwrap_or_default(),
        require: raw
            .require
            .map(|list| requirements(list, "provider.require"))
            .transpose()?
            .unwrap_or_default(),
        limits,
        capabilities,
    })
}

fn caller(raw: RawCaller) -> Result<CallerRules, PolicyError> {
    let deny = raw.deny.map(|list| peers(&list, "caller.deny")).transpose()?.unwrap_or_default();
    let require = raw
        .require
        .map(|list| requirements(list, "caller.require"))
        .transpose()?
        .unwrap_or_default();
    let mut accepted_units = Vec::new();
    for (i, unit_name) in raw.accepted_units.unwrap_or_default().into_iter().enumerate() {
        let field = format!("caller.accepted_units[{i}]");
        unit(&unit_name, &field)?;
        if accepted_units.contains(&unit_name) {
            return Err(invalid(field, format!("unit '{unit_name}' is listed twice")));
        }
        accepted_units.push(unit_name);
    }
    let mut max_price = HashMap::new();
    for (i, price) in raw.max_price.unwrap_or_default().into_iter().enumerate() {
        let field = format!("caller.max_price[{i}].unit");
        unit(&price.unit, &field)?;
        if !accepted_units.is_empty() && !accepted_units.contains(&price.unit) {
            return Err(invalid(
                field,
                format!(
                    "unit '{}' is not in caller.accepted_units, so no price in it is ever \
                     accepted; add it there or remove this maximum",
                    price.unit
                ),
            ));
        }
        if max_price.insert(price.unit.clone(), price.amount).is_some() {
            return Err(invalid(field, format!("unit '{}' has two maximums", price.unit)));
        }
    }
    Ok(CallerRules { deny, require, accepted_units, max_price })
}

fn peers(list: &[String], field: &str) -> Result<HashSet<PeerId>, PolicyError> {
    list.iter()
        .enumerate()
        .map(|(i, text)| parse_id(text, &format!("{field}[{i}]"), "PeerId"))
        .collect()
}

fn requirements(list: Vec<RawRequirement>, field: &str) -> Result<Vec<Requirement>, PolicyError> {
    list.into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let at = format!("{field}[{i}]");
            if !valid_claim(&raw.claim) {
                return Err(invalid(
                    format!("{at}.claim"),
                    format!(
                        "{:?} is not a claim: claims match ^[a-z0-9][a-z0-9_.:/-]{{0,127}}$ \
                         (e.g. \"audited\", \"org:acme/member\")",
                        shorten(&raw.claim)
                    ),
                ));
            }
            if raw.issuers.is_empty() {
                return Err(invalid(
                    format!("{at}.issuers"),
                    "no issuers: nobody could satisfy this requirement; name at least one issuer"
                        .to_owned(),
                ));
            }
            let issuers = raw
                .issuers
                .iter()
                .enumerate()
                .map(|(j, text)| parse_id(text, &format!("{at}.issuers[{j}]"), "PeerId"))
                .collect::<Result<Vec<PeerId>, _>>()?;
            Ok(Requirement { claim: raw.claim, issuers })
        })
        .collect()
}

fn parse_id<T>(text: &str, field: &str, what: &str) -> Result<T, PolicyError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    text.parse::<T>()
        .map_err(|e| invalid(field.to_owned(), format!("{:?} is not a {what}: {e}", shorten(text))))
}

fn rate(value: Option<f64>, field: &str) -> Result<Option<f64>, PolicyError> {
    match value {
        Some(r) if !(r.is_finite() && r > 0.0) => Err(invalid(
            field.to_owned(),
            format!("{r} is not a rate: give a positive number of calls per second"),
        )),
        other => Ok(other),
    }
}

fn at_least_one(value: Option<u32>, field: &str) -> Result<Option<u32>, PolicyError> {
    match value {
        Some(0) => Err(invalid(
            field.to_owned(),
            "0 would refuse every call: give at least 1 (use `default = \"deny\"` or `deny` to \
             refuse callers)"
                .to_owned(),
        )),
        other => Ok(other),
    }
}

fn unit(name: &str, field: &str) -> Result<(), PolicyError> {
    if name.is_empty() || name.len() > MAX_UNIT_BYTES {
        return Err(invalid(
            field.to_owned(),
            format!("a unit is 1 to {MAX_UNIT_BYTES} bytes, not {:?}", shorten(name)),
        ));
    }
    Ok(())
}

/// `^[a-z0-9][a-z0-9_.:/-]{0,127}$` (protocol §6.5).
fn valid_claim(claim: &str) -> bool {
    let bytes = claim.as_bytes();
    let body = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.:/-".contains(b);
    match bytes.split_first() {
        Some((first, rest)) => {
            bytes.len() <= MAX_CLAIM_BYTES
                && (first.is_ascii_lowercase() || first.is_ascii_digit())
                && rest.iter().all(body)
        }
        None => false,
    }
}

/// At most 80 characters of a bad value, for error messages.
fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX).collect();
        short.push('…');
        short
    }
}

fn invalid(field: String, message: String) -> PolicyError {
    PolicyError::Invalid { field, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims() {
        for good in ["audited", "org:acme/member", "0", "a-b_c.d"] {
            assert!(valid_claim(good), "{good}");
        }
        for bad in ["", "Audited", "-a", "a b", "é", &"a".repeat(129)] {
            assert!(!valid_claim(bad), "{bad}");
        }
        assert!(valid_claim(&"a".repeat(128)));
    }

    #[test]
    fn shorten_keeps_short_values() {
        assert_eq!(shorten("abc"), "abc");
        assert_eq!(shorten(&"x".repeat(100)).chars().count(), 81);
    }
}
