//! The rules of `check_caller`, `limits`, `check_provider` and `check_price`.

use capmesh_policy::{Denial, DenialCode, Limits, Policy};
use capmesh_wire::Price;

use crate::{Attestations, cap, none, peer};

fn policy(text: &str) -> Policy {
    Policy::from_toml(text).unwrap()
}

fn denied(result: Result<(), Denial>) -> Denial {
    let denial = result.expect_err("expected a denial");
    assert_eq!(denial.to_string(), denial.reason);
    denial
}

fn price(amount: u64, unit: &str) -> Price {
    Price { amount, unit: unit.to_owned() }
}

#[test]
fn codes() {
    assert_eq!(DenialCode::PolicyDenied.code(), capmesh_wire::Code::PolicyDenied);
    assert_eq!(DenialCode::PriceTooHigh.code(), capmesh_wire::Code::PriceTooHigh);
    assert_eq!(DenialCode::PriceTooHigh.to_string(), "PriceTooHigh");
}

#[test]
fn deny_beats_allow() {
    let (a, b) = (peer(1), peer(2));
    let p = policy(&format!("[provider]\nallow = [\"{a}\", \"{b}\"]\ndeny = [\"{a}\"]\n"));
    let echo = cap("echo");
    let denial = denied(p.check_caller(&a, &echo, &none));
    assert_eq!(denial.code, DenialCode::PolicyDenied);
    assert!(denial.reason.contains(&a.to_string()), "{}", denial.reason);
    assert!(denial.reason.contains("provider.deny"), "{}", denial.reason);
    assert!(p.check_caller(&b, &echo, &none).is_ok());
    // Deny beats allow on the capability too.
    let p = policy(&format!(
        "[[provider.capability]]\nid = \"{echo}\"\nallow = [\"{a}\"]\ndeny = [\"{a}\"]\n"
    ));
    let denial = denied(p.check_caller(&a, &echo, &none));
    assert!(denial.reason.contains("provider.capability.deny"), "{}", denial.reason);
}

#[test]
fn default_deny_refuses_callers_not_allowed() {
    let (friend, stranger) = (peer(1), peer(2));
    let echo = cap("echo");
    let p = policy(&format!("[provider]\ndefault = \"deny\"\nallow = [\"{friend}\"]\n"));
    assert!(p.check_caller(&friend, &echo, &none).is_ok());
    let denial = denied(p.check_caller(&stranger, &echo, &none));
    assert_eq!(denial.code, DenialCode::PolicyDenied);
    assert_eq!(
        denial.reason,
        format!("caller {stranger} is not allowed to call {echo} (provider.default = deny)")
    );
}

#[test]
fn capability_override_replaces_lists_and_limits() {
    let (a, b, c) = (peer(1), peer(2), peer(3));
    let (echo, other) = (cap("echo"), cap("other"));
    let p = policy(&format!(
        r#"
        [provider]
        allow = ["{a}"]
        deny = ["{b}"]
        rate_per_sec = 10.0
        burst = 20
        concurrency = 4

        [[provider.capability]]
        id = "{echo}"
        default = "deny"
        allow = ["{c}"]
        deny = []
        rate_per_sec = 2.0
        "#
    ));
    // Elsewhere the provider-wide rules hold.
    assert!(p.check_caller(&a, &other, &none).is_ok());
    assert!(p.check_caller(&b, &other, &none).is_err());
    assert!(p.check_caller(&c, &other, &none).is_ok());
    assert_eq!(p.limits(&other), Limits { rate_per_sec: 10.0, burst: 20, concurrency: 4 });

    // On echo the lists are the capability's: c allowed, a no longer, and b no longer denied
    // but refused by the capability's default.
    assert!(p.check_caller(&c, &echo, &none).is_ok());
    let denial = denied(p.check_caller(&a, &echo, &none));
    assert_eq!(
        denial.reason,
        format!("caller {a} is not allowed to call {echo} (provider.capability.default = deny)")
    );
    let denial = denied(p.check_caller(&b, &echo, &none));
    assert!(denial.reason.contains("provider.capability.default = deny"), "{}", denial.reason);
    // Limits given replace, the others are inherited.
    assert_eq!(p.limits(&echo), Limits { rate_per_sec: 2.0, burst: 20, concurrency: 4 });

    // An override with only limits leaves the lists alone.
    let p = policy(&format!(
        "[provider]\ndeny = [\"{b}\"]\n[[provider.capability]]\nid = \"{echo}\"\nburst = 1\n"
    ));
    assert!(p.check_caller(&b, &echo, &none).is_err());
    assert!(p.check_caller(&a, &echo, &none).is_ok());
    assert_eq!(p.limits(&echo), Limits { burst: 1, ..Limits::DEFAULT });
}

#[test]
fn require_needs_the_claim_from_a_listed_issuer_unexpired() {
    let (caller, trusted, other_trusted, untrusted) = (peer(1), peer(2), peer(3), peer(4));
    let echo = cap("echo");
    let p = policy(&format!(
        "[provider]\nrequire = [{{ claim = \"member\", issuers = [\"{trusted}\", \"{other_trusted}\"] }}]\n"
    ));
    let check = |att: &Attestations| p.check_caller(&caller, &echo, &|s, c, i| att.check(s, c, i));
    let now = 1_000;

    // None at all.
    let denial = denied(check(&Attestations { now, ..Default::default() }));
    assert_eq!(denial.code, DenialCode::PolicyDenied);
    assert!(
        denial.reason.contains(&format!(
            "missing attestation 'member' from one of [{trusted}, {other_trusted}]"
        )),
        "{}",
        denial.reason
    );
    assert!(denial.reason.contains("provider.require"), "{}", denial.reason);

    // Wrong issuer.
    let att = Attestations { now, ..Default::default() }.with(caller, "member", untrusted, now + 1);
    denied(check(&att));
    // Right issuer, wrong claim.
    let att = Attestations { now, ..Default::default() }.with(caller, "members", trusted, now + 1);
    denied(check(&att));
    // Right issuer, about someone else.
    let att = Attestations { now, ..Default::default() }.with(peer(9), "member", trusted, now + 1);
    denied(check(&att));
    // Right issuer, expired: the replica answers false.
    let att = Attestations { now, ..Default::default() }.with(caller, "member", trusted, now);
    denied(check(&att));
    // Right issuer, unexpired: either listed issuer will do.
    let att = Attestations { now, ..Default::default() }.with(caller, "member", trusted, now + 1);
    assert!(check(&att).is_ok());
    let att =
        Attestations { now, ..Default::default() }.with(caller, "member", other_trusted, now + 1);
    assert!(check(&att).is_ok());
}

#[test]
fn every_requirement_must_hold() {
    let (caller, issuer) = (peer(1), peer(2));
    let echo = cap("echo");
    let p = policy(&format!(
        "[provider]\nrequire = [{{ claim = \"member\", issuers = [\"{issuer}\"] }}, {{ claim = \"kyc\", issuers = [\"{issuer}\"] }}]\n"
    ));
    let one = Attestations::default().with(caller, "member", issuer, 1);
    let denial = denied(p.check_caller(&caller, &echo, &|s, c, i| one.check(s, c, i)));
    assert!(denial.reason.contains("'kyc'"), "{}", denial.reason);
    let both = one.with(caller, "kyc", issuer, 1);
    assert!(p.check_caller(&caller, &echo, &|s, c, i| both.check(s, c, i)).is_ok());
}

#[test]
fn allowed_callers_skip_require_but_not_deny() {
    let (friend, issuer) = (peer(1), peer(2));
    let echo = cap("echo");
    let p = policy(&format!(
        "[provider]\nallow = [\"{friend}\"]\nrequire = [{{ claim = \"member\", issuers = [\"{issuer}\"] }}]\n"
    ));
    assert!(p.check_caller(&friend, &echo, &none).is_ok());
    assert!(p.check_caller(&peer(3), &echo, &none).is_err());
}

#[test]
fn capability_require_replaces_the_provider_one() {
    let (caller, issuer) = (peer(1), peer(2));
    let (echo, other) = (cap("echo"), cap("other"));
    let p = policy(&format!(
        r#"
        [provider]
        require = [{{ claim = "member", issuers = ["{issuer}"] }}]
        [[provider.capability]]
        id = "{echo}"
        require = [{{ claim = "gold", issuers = ["{issuer}"] }}]
        [[provider.capability]]
        id = "{other}"
        require = []
        "#
    ));
    let member = Attestations::default().with(caller, "member", issuer, 1);
    let denial = denied(p.check_caller(&caller, &echo, &|s, c, i| member.check(s, c, i)));
    assert!(denial.reason.contains("'gold'"), "{}", denial.reason);
    assert!(denial.reason.contains("provider.capability.require"), "{}", denial.reason);
    let gold = Attestations::default().with(caller, "gold", issuer, 1);
    assert!(p.check_caller(&caller, &echo, &|s, c, i| gold.check(s, c, i)).is_ok());
    assert!(p.check_caller(&caller, &other, &none).is_ok());
    assert!(p.check_caller(&caller, &cap("third"), &|s, c, i| member.check(s, c, i)).is_ok());
}

#[test]
fn caller_side_deny_and_require() {
    let (bad, good, issuer, untrusted) = (peer(1), peer(2), peer(3), peer(4));
    let p = policy(&format!(
        "[caller]\ndeny = [\"{bad}\"]\nrequire = [{{ claim = \"audited\", issuers = [\"{issuer}\"] }}]\n"
    ));
    let att = Attestations::default()
        .with(bad, "audited", issuer, 1)
        .with(good, "audited", issuer, 1)
        .with(peer(5), "audited", untrusted, 1);
    let check = |provider: &capmesh_types::PeerId| {
        p.check_provider(provider, &|s, c, i| att.check(s, c, i))
    };

    let denial = denied(check(&bad));
    assert_eq!(denial.code, DenialCode::PolicyDenied);
    assert!(denial.reason.contains("caller.deny"), "{}", denial.reason);
    assert!(check(&good).is_ok());
    let denial = denied(check(&peer(5)));
    assert_eq!(
        denial.reason,
        format!(
            "provider {} is missing attestation 'audited' from one of [{issuer}] (caller.require)",
            peer(5)
        )
    );
    denied(check(&peer(6)));

    // The provider side is not affected by the caller side.
    assert!(p.check_caller(&bad, &cap("echo"), &none).is_ok());
}

#[test]
fn accepted_units() {
    let p = policy("[caller]\naccepted_units = [\"credit\", \"usd-cent\"]\n");
    assert!(p.check_price(&price(5, "credit"), None).is_ok());
    assert!(p.check_price(&price(u64::MAX, "usd-cent"), None).is_ok());
    let denial = denied(p.check_price(&price(5, "eur"), None));
    assert_eq!(denial.code, DenialCode::PriceTooHigh);
    assert_eq!(
        denial.reason,
        "price 5 eur is in a unit that is not accepted (caller.accepted_units = [credit, usd-cent])"
    );
    // An empty list is any unit.
    let p = policy("[caller]\naccepted_units = []\n");
    assert!(p.check_price(&price(5, "eur"), None).is_ok());
}

#[test]
fn max_price_per_unit() {
    let p = policy(
        "[caller]\nmax_price = [{ unit = \"credit\", amount = 10 }, { unit = \"usd\", amount = 0 }]\n",
    );
    assert!(p.check_price(&price(10, "credit"), None).is_ok());
    let denial = denied(p.check_price(&price(12, "credit"), None));
    assert_eq!(denial.code, DenialCode::PriceTooHigh);
    assert_eq!(denial.reason, "price 12 credit is above the maximum 10 credit (caller.max_price)");
    assert!(p.check_price(&price(0, "usd"), None).is_ok());
    denied(p.check_price(&price(1, "usd"), None));
    // No maximum for a unit not listed.
    assert!(p.check_price(&price(u64::MAX, "eur"), None).is_ok());
}

#[test]
fn call_max_of_the_agent() {
    let p = policy("[caller]\nmax_price = [{ unit = \"credit\", amount = 10 }]\n");
    let eight = price(8, "credit");
    assert!(p.check_price(&eight, Some(&price(8, "credit"))).is_ok());
    let denial = denied(p.check_price(&eight, Some(&price(7, "credit"))));
    assert_eq!(denial.code, DenialCode::PriceTooHigh);
    assert_eq!(denial.reason, "price 8 credit is above the call's maximum 7 credit");
    // A maximum in another unit cannot be compared: refused.
    let denial = denied(p.check_price(&eight, Some(&price(1_000, "usd"))));
    assert_eq!(denial.code, DenialCode::PriceTooHigh);
    assert_eq!(denial.reason, "price 8 credit is not in the unit of the call's maximum 1000 usd");
    // The policy maximum still applies under a looser call maximum.
    denied(p.check_price(&price(11, "credit"), Some(&price(100, "credit"))));
    // Without a policy maximum, the call's alone.
    let p = Policy::default();
    assert!(p.check_price(&price(100, "usd"), Some(&price(100, "usd"))).is_ok());
    denied(p.check_price(&price(101, "usd"), Some(&price(100, "usd"))));
}
