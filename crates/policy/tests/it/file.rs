//! The TOML file: the example, defaults, and errors that name the field.

use capmesh_policy::{Limits, Policy, PolicyError};
use capmesh_wire::Price;

use crate::{Attestations, none};

const EXAMPLE: &str = include_str!("../../policy.example.toml");

fn invalid(text: &str) -> (String, String) {
    match Policy::from_toml(text) {
        Err(PolicyError::Invalid { field, message }) => (field, message),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn parse_error(text: &str) -> String {
    match Policy::from_toml(text) {
        Err(PolicyError::Parse { path: None, message }) => message,
        other => panic!("expected Parse, got {other:?}"),
    }
}

#[test]
fn example_file_parses_and_means_what_it_says() {
    let policy = Policy::from_toml(EXAMPLE).unwrap();
    let friend = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq".parse().unwrap();
    let denied = "12D3KooWPqT2nMDSiXUSx5D7fasaxhxKigVhcqfkKqrLghCq9jxz".parse().unwrap();
    let issuer = "12D3KooWLdJAwPtyQ5RFnr9wGXsQzpf3P2SeqFbYkqbfVehLu4Ns".parse().unwrap();
    let narrow = "bafyr4if53zv7hahbllk24eg2i7l6aavqf2ga3sxkol46vrvrwt3ndvkcby".parse().unwrap();
    let acme = "bafyr4ifhidgs4grsm43j67ayjj46ikeorzkjng4dsykhhdls2da54u52oe".parse().unwrap();
    let other = crate::cap("other");
    let stranger = crate::peer(9);

    assert_eq!(policy.limits(&other), Limits { rate_per_sec: 20.0, burst: 40, concurrency: 8 });
    assert_eq!(policy.limits(&narrow), Limits { rate_per_sec: 2.0, burst: 4, concurrency: 8 });
    assert_eq!(policy.limits(&acme), Limits { rate_per_sec: 20.0, burst: 40, concurrency: 2 });

    assert!(policy.check_caller(&friend, &other, &none).is_ok());
    assert!(policy.check_caller(&denied, &other, &none).is_err());
    assert!(policy.check_caller(&stranger, &other, &none).is_err());
    let member = Attestations::default().with(stranger, "member", issuer, 1);
    assert!(policy.check_caller(&stranger, &other, &|s, c, i| member.check(s, c, i)).is_ok());
    // The narrow capability is deny-by-default and allows only its own list.
    assert!(policy.check_caller(&stranger, &narrow, &|s, c, i| member.check(s, c, i)).is_err());
    assert!(policy.check_caller(&friend, &narrow, &none).is_err());

    assert!(policy.check_provider(&denied, &none).is_err());
    let audited = Attestations::default().with(stranger, "audited", issuer, 1);
    assert!(policy.check_provider(&stranger, &|s, c, i| audited.check(s, c, i)).is_ok());
    let price = |amount, unit: &str| Price { amount, unit: unit.to_owned() };
    assert!(policy.check_price(&price(100, "credit"), None).is_ok());
    assert!(policy.check_price(&price(101, "credit"), None).is_err());
    assert!(policy.check_price(&price(1_000_000, "usd-cent"), None).is_ok());
    assert!(policy.check_price(&price(1, "eur"), None).is_err());
    assert_eq!(policy.max_price("credit"), Some(100));
    assert!(policy.accepts_unit("usd-cent") && !policy.accepts_unit("eur"));
}

#[test]
fn empty_file_allows_everything_with_default_limits() {
    for text in ["", "[provider]\n[caller]\n", "# nothing\n"] {
        let policy = Policy::from_toml(text).unwrap();
        let someone = crate::peer(1);
        let cap = crate::cap("echo");
        assert!(policy.check_caller(&someone, &cap, &none).is_ok());
        assert!(policy.check_provider(&someone, &none).is_ok());
        let price = Price { amount: u64::MAX, unit: "anything".into() };
        assert!(policy.check_price(&price, None).is_ok());
        assert_eq!(policy.limits(&cap), Limits { rate_per_sec: 50.0, burst: 100, concurrency: 16 });
        assert_eq!(policy.limits(&cap), Limits::default());
    }
    assert_eq!(Policy::default().limits(&crate::cap("x")), Limits::DEFAULT);
}

#[test]
fn integer_rate_is_accepted() {
    let policy = Policy::from_toml("[provider]\nrate_per_sec = 5\n").unwrap();
    assert_eq!(policy.limits(&crate::cap("x")).rate_per_sec, 5.0);
}

#[test]
fn unknown_keys_are_refused_naming_the_key() {
    let message = parse_error("[provider]\nburst = 4\nrat_per_sec = 1.0\n");
    assert!(message.contains("rat_per_sec"), "{message}");
    assert!(message.contains("line 3"), "{message}");

    let message = parse_error("[[provider.capability]]\nid = \"x\"\nallowed = []\n");
    assert!(message.contains("allowed"), "{message}");

    let message = parse_error("[callers]\n");
    assert!(message.contains("callers"), "{message}");

    let message =
        parse_error("[caller]\nmax_price = [{ unit = \"credit\", amount = 1, cur = 2 }]\n");
    assert!(message.contains("cur"), "{message}");

    let message = parse_error("[provider]\nrequire = [{ claim = \"a\", issuer = [] }]\n");
    assert!(message.contains("issuer"), "{message}");
}

#[test]
fn wrong_types_are_parse_errors() {
    let message = parse_error("[provider]\nrate_per_sec = \"fast\"\n");
    assert!(message.contains("rate_per_sec"), "{message}");
    let message = parse_error("[provider]\ndefault = \"maybe\"\n");
    assert!(message.contains("maybe") || message.contains("allow"), "{message}");
    let message = parse_error("[provider]\nburst = -1\n");
    assert!(message.contains("burst"), "{message}");
    parse_error("this is not toml");
}

#[test]
fn bad_peer_ids_are_named_by_field() {
    let good = crate::peer(1);
    let (field, message) = invalid(&format!("[provider]\ndeny = [\"{good}\", \"12D3KooWnope\"]\n"));
    assert_eq!(field, "provider.deny[1]");
    assert!(message.contains("12D3KooWnope") && message.contains("PeerId"), "{message}");

    let text = format!(
        "[[provider.capability]]\nid = \"{}\"\nallow = [\"{good}\", \"{good}\", \"0OIl\"]\n",
        crate::cap("echo")
    );
    assert_eq!(invalid(&text).0, "provider.capability[0].allow[2]");

    let text = "[caller]\nrequire = [{ claim = \"audited\", issuers = [\"QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N\"] }]\n";
    let (field, message) = invalid(text);
    assert_eq!(field, "caller.require[0].issuers[0]");
    assert!(message.contains("ed25519"), "{message}");

    assert_eq!(invalid("[caller]\ndeny = [\"\"]\n").0, "caller.deny[0]");
    assert_eq!(invalid("[provider]\nallow = [\"x\"]\n").0, "provider.allow[0]");
}

#[test]
fn other_bad_values_are_named_by_field() {
    let cap = crate::cap("echo");
    let issuer = crate::peer(3);
    let cases: Vec<(String, &str)> = vec![
        ("[[provider.capability]]\nid = \"bafynope\"\n".into(), "provider.capability[0].id"),
        (
            format!("[[provider.capability]]\nid = \"{cap}\"\n[[provider.capability]]\nid = \"{cap}\"\n"),
            "provider.capability[1].id",
        ),
        ("[provider]\nrate_per_sec = 0.0\n".into(), "provider.rate_per_sec"),
        ("[provider]\nrate_per_sec = -2.0\n".into(), "provider.rate_per_sec"),
        ("[provider]\nrate_per_sec = nan\n".into(), "provider.rate_per_sec"),
        ("[provider]\nrate_per_sec = inf\n".into(), "provider.rate_per_sec"),
        ("[provider]\nburst = 0\n".into(), "provider.burst"),
        ("[provider]\nconcurrency = 0\n".into(), "provider.concurrency"),
        (
            format!("[[provider.capability]]\nid = \"{cap}\"\nconcurrency = 0\n"),
            "provider.capability[0].concurrency",
        ),
        (
            format!("[provider]\nrequire = [{{ claim = \"Member\", issuers = [\"{issuer}\"] }}]\n"),
            "provider.require[0].claim",
        ),
        ("[provider]\nrequire = [{ claim = \"member\", issuers = [] }]\n".into(), "provider.require[0].issuers"),
        ("[caller]\naccepted_units = [\"credit\", \"\"]\n".into(), "caller.accepted_units[1]"),
        ("[caller]\naccepted_units = [\"credit\", \"credit\"]\n".into(), "caller.accepted_units[1]"),
        (
            "[caller]\naccepted_units = [\"credit\"]\nmax_price = [{ unit = \"credits\", amount = 1 }]\n".into(),
            "caller.max_price[0].unit",
        ),
        (
            "[caller]\nmax_price = [{ unit = \"a\", amount = 1 }, { unit = \"a\", amount = 2 }]\n".into(),
            "caller.max_price[1].unit",
        ),
    ];
    for (text, expected) in cases {
        let (field, message) = invalid(&text);
        assert_eq!(field, expected, "{text}: {message}");
        assert!(!message.is_empty());
        let shown = Policy::from_toml(&text).unwrap_err().to_string();
        assert!(shown.contains(expected), "{shown}");
    }
}

#[test]
fn load_reads_the_file_and_a_missing_one_is_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let policy = Policy::load(&missing).unwrap();
    assert!(policy.check_caller(&crate::peer(1), &crate::cap("x"), &none).is_ok());

    let path = dir.path().join("policy.toml");
    std::fs::write(&path, "[provider]\ndefault = \"deny\"\n").unwrap();
    let policy = Policy::load(&path).unwrap();
    assert!(policy.check_caller(&crate::peer(1), &crate::cap("x"), &none).is_err());

    std::fs::write(&path, "[provider]\nnope = 1\n").unwrap();
    match Policy::load(&path) {
        Err(e @ PolicyError::Parse { path: Some(_), .. }) => {
            assert!(e.to_string().contains("policy.toml"), "{e}");
        }
        other => panic!("expected Parse with the path, got {other:?}"),
    }

    // A directory exists but is not readable as a file.
    match Policy::load(dir.path()) {
        Err(PolicyError::Io { path, .. }) => assert_eq!(path, dir.path()),
        other => panic!("expected Io, got {other:?}"),
    }
}
