//! `capmesh registry query` on a replica the test fills itself (seeded keys, fixed times).

use std::{path::PathBuf, process::Command, time::Duration};

use capmesh_store::{Config, Item, Outcome, Store};
use capmesh_system_tests::User;
use capmesh_types::{Cid, Codec, NodeKey};
use capmesh_wire::{Advert, CallLimits, Contract, Price, Signed, cbor};
use serde_json::{Value, json};

/// Queries are judged at this time (`--at`), so that the adverts' windows hold whatever the
/// clock says.
const NOW: u64 = 1_760_000_000_000;
const HOUR: u64 = 3_600_000;

fn key(seed: u8) -> NodeKey {
    NodeKey::from_seed([seed; 32])
}

fn contract(name: &str, tags: &[&str], description: &str) -> Contract {
    Contract {
        name: name.into(),
        version: "1.0.0".into(),
        description: description.into(),
        input: json!({"type": "object"}),
        output: json!({"type": "object"}),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        read_only: true,
        idempotent: true,
        streaming: false,
    }
}

/// One advert the test stored, with what the CLI should print of it.
#[derive(Debug, Clone)]
struct Stored {
    id: Cid,
    capability: Cid,
    name: &'static str,
    provider: String,
    amount: u64,
}

fn advert(provider: &NodeKey, contract: &Contract, amount: u64) -> (Item, Cid, Cid) {
    let capability = Cid::of(Codec::DagCbor, &cbor::to_vec(contract).unwrap());
    let advert = Advert {
        capability,
        provider: provider.peer_id(),
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        price: Price { amount, unit: "usd-micro".into() },
        limits: CallLimits { timeout_ms: 30_000, max_input_bytes: 65_536, concurrency: 4 },
        attestations: vec![],
        seq: 1,
        issued: NOW - 1_000,
        expires: NOW + HOUR,
    };
    let signed = Signed::sign(provider, &advert).unwrap();
    let id = signed.id();
    (Item::Advert { advert: signed, contract: contract.clone() }, id, capability)
}

fn replica_dir(user: &User) -> PathBuf {
    user.data_dir.path().join("replica")
}

/// Three adverts, in insertion order: two from provider 1, one from provider 2. Keys and
/// times are fixed and ed25519 signs deterministically, so every process computes the same ones.
fn adverts() -> [(Item, Stored); 3] {
    let (a, b) = (key(1), key(2));
    let specs = [
        (&a, "weather.forecast", &["weather", "geo"][..], "Daily forecast for a city.", 100),
        (&a, "translate.text", &["text", "language"][..], "Translate text between languages.", 500),
        (&b, "weather.alerts", &["weather", "alerts"][..], "Severe weather alerts by region.", 50),
    ];
    specs.map(|(provider, name, tags, description, amount)| {
        let (item, id, capability) = advert(provider, &contract(name, tags, description), amount);
        let provider = provider.peer_id().to_string();
        (item, Stored { id, capability, name, provider, amount })
    })
}

/// Inserts [`adverts`] into `store`.
fn fill(store: &Store) -> [Stored; 3] {
    adverts().map(|(item, stored)| {
        let outcome = store.insert(item, NOW).unwrap();
        assert!(matches!(outcome, Outcome::Stored { .. }), "{outcome:?}");
        stored
    })
}

const FILL_VAR: &str = "CAPMESH_TEST_FILL_REPLICA";

/// Not a test: the child process of [`user_with_replica`], which fills the replica named by
/// `CAPMESH_TEST_FILL_REPLICA` (and does nothing when it is not set).
#[test]
fn fill_replica_child() {
    let Some(dir) = std::env::var_os(FILL_VAR) else { return };
    let store = Store::open(std::path::Path::new(&dir), Config::default()).unwrap();
    fill(&store);
    store.close();
}

/// A user whose replica holds the three [`adverts`].
///
/// A child process fills it: sled closes its file (and so releases its lock) on one of its IO
/// threads a moment after the last handle is dropped, so a replica filled and dropped in this
/// process could still be locked when the CLI opens it. A process's files are all closed by
/// the time its parent sees it exit.
fn user_with_replica() -> (User, [Stored; 3]) {
    let user = User::new();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "registry::fill_replica_child", "--test-threads", "1", "--nocapture"])
        .env(FILL_VAR, replica_dir(&user))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "filling the replica failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (user, adverts().map(|(_, stored)| stored))
}

fn query(user: &User, args: &[&str]) -> String {
    let at = NOW.to_string();
    let mut all = vec!["registry", "query", "--at", &at];
    all.extend_from_slice(args);
    user.run(&all).success()
}

/// The names in text output, checking each line's format against what was stored.
fn names(out: &str, stored: &[Stored]) -> Vec<&'static str> {
    out.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split("  ").collect();
            assert_eq!(fields.len(), 5, "{line:?}");
            let s = stored
                .iter()
                .find(|s| s.id.to_string() == fields[0])
                .unwrap_or_else(|| panic!("unknown advert id in {line:?}"));
            assert_eq!(fields[1], s.capability.to_string(), "{line:?}");
            assert_eq!(fields[2], s.name, "{line:?}");
            assert_eq!(fields[3], format!("{} usd-micro", s.amount), "{line:?}");
            assert_eq!(fields[4], s.provider, "{line:?}");
            s.name
        })
        .collect()
}

fn json_query(user: &User, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&query(user, &all)).unwrap()
}

#[test]
fn registry_query_finds_adverts_by_tag_text_provider_name_capability_and_price() {
    let (user, stored) = user_with_replica();
    let [forecast, translate, alerts] = &stored;
    // Which adverts match, in name order (the order of hits depends on the index scanned).
    let q = |args: &[&str]| {
        let mut found = names(&query(&user, args), &stored);
        found.sort_unstable();
        found
    };

    // Without a filter, insertion order, oldest or newest first.
    let all = names(&query(&user, &[]), &stored);
    assert_eq!(all, ["weather.forecast", "translate.text", "weather.alerts"]);
    let newest = names(&query(&user, &["--newest"]), &stored);
    assert_eq!(newest, ["weather.alerts", "translate.text", "weather.forecast"]);

    assert_eq!(q(&["--tag", "weather"]), ["weather.alerts", "weather.forecast"]);
    assert_eq!(q(&["--tag", "weather", "--tag", "geo"]), ["weather.forecast"]);
    assert!(q(&["--tag", "music"]).is_empty());
    assert_eq!(q(&["--text", "translate"]), ["translate.text"]);
    assert_eq!(q(&["--text", "Severe ALERTS"]), ["weather.alerts"]);
    assert!(q(&["--text", "severe forecast"]).is_empty(), "every word must be there");
    assert_eq!(q(&["--provider", &forecast.provider]), ["translate.text", "weather.forecast"]);
    assert_eq!(q(&["--provider", &alerts.provider]), ["weather.alerts"]);
    assert_eq!(q(&["--provider", &alerts.provider, "--tag", "geo"]), Vec::<&str>::new());
    assert_eq!(q(&["--name", "weather."]), ["weather.alerts", "weather.forecast"]);
    assert_eq!(q(&["--capability", &translate.capability.to_string()]), ["translate.text"]);
    assert_eq!(q(&["--max-price", "100:usd-micro"]), ["weather.alerts", "weather.forecast"]);
    assert!(q(&["--max-price", "1000:eur-micro"]).is_empty(), "another unit never matches");

    // Judged at another time: after the adverts expired, nothing.
    let later = (NOW + 2 * HOUR).to_string();
    let run = user.run(&["registry", "query", "--at", &later]);
    assert!(run.ok && run.stdout.is_empty(), "{run:?}");
}

/// Names of all hits, read one page of one hit at a time with `--cursor`.
fn pages(user: &User, args: &[&str]) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut all = vec!["--limit", "1"];
        all.extend_from_slice(args);
        if let Some(c) = &cursor {
            all.extend(["--cursor", c.as_str()]);
        }
        let page = json_query(user, &all);
        seen.extend(
            page["hits"].as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap().to_owned()),
        );
        let Some(next) = page["next"].as_str() else { break };
        assert!(next.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')), "{next}");
        assert!(seen.len() <= 3, "{args:?}: pages never end: {seen:?}, next {next}");
        assert_ne!(cursor.as_deref(), Some(next), "{args:?}: the cursor did not advance: {seen:?}");
        cursor = Some(next.to_owned());
    }
    seen
}

#[test]
fn registry_query_json_has_the_hits_and_pages_with_the_cursor() {
    let (user, stored) = user_with_replica();
    let [forecast, _, alerts] = &stored;

    let page = json_query(&user, &["--tag", "weather"]);
    assert_eq!(page["next"], Value::Null);
    let hits = page["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 2, "{page}");
    for s in [forecast, alerts] {
        let hit = hits.iter().find(|h| h["id"] == s.id.to_string()).expect("both adverts hit");
        assert_eq!(
            hit,
            &json!({
                "id": s.id.to_string(),
                "capability": s.capability.to_string(),
                "name": s.name,
                "provider": s.provider,
                "price": {"amount": s.amount, "unit": "usd-micro"},
                "issued": NOW - 1_000,
                "expires": NOW + HOUR,
            })
        );
    }

    // One hit per page, either way: every advert once, then a null cursor.
    let forward = ["weather.forecast", "translate.text", "weather.alerts"];
    assert_eq!(pages(&user, &["--newest"]), forward.iter().rev().copied().collect::<Vec<_>>());
    assert_eq!(pages(&user, &[]), forward);
    assert_eq!(pages(&user, &["--tag", "weather"]), ["weather.forecast", "weather.alerts"]);

    // In text mode the next page is announced on stderr, stdout keeps only hits.
    let at = NOW.to_string();
    let run = user.run(&["registry", "query", "--at", &at, "--limit", "2"]);
    assert!(run.stderr.contains("more: --cursor "), "{}", run.stderr);
    assert_eq!(names(&run.success(), &stored), ["weather.forecast", "translate.text"]);
}

#[test]
fn registry_query_on_an_empty_replica_prints_no_hits() {
    let user = User::new();
    let run = user.run(&["registry", "query", "--tag", "weather"]);
    assert!(run.ok && run.stdout.is_empty(), "{run:?}");
    let page: Value =
        serde_json::from_str(&user.run(&["registry", "query", "--json"]).success()).unwrap();
    assert_eq!(page, json!({"hits": [], "next": null}));
}

#[test]
fn registry_query_refuses_bad_flags_with_the_expected_form() {
    let user = User::new();
    let err = user.run(&["registry", "query", "--max-price", "100"]).failure();
    assert!(err.contains("AMOUNT:UNIT"), "{err}");
    let err = user.run(&["registry", "query", "--cursor", "xyz"]).failure();
    assert!(err.contains("not a cursor"), "{err}");
    let err = user.run(&["registry", "query", "--limit", "0"]).failure();
    assert!(err.contains("1..=1000"), "{err}");
}

#[test]
fn registry_query_fails_fast_while_the_replica_is_held() {
    let user = User::new();
    let store = Store::open(&replica_dir(&user), Config::default()).unwrap();
    fill(&store);

    // As a running node would, the test holds sled's lock: the CLI must say so, not wait.
    let run = user.run_within(Duration::from_secs(30), &["registry", "query", "--tag", "weather"]);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    let err = run.failure();
    assert!(err.contains("in use by a running capmesh node"), "{err}");
    assert!(err.contains("try again in a moment"), "{err}");
    assert!(err.contains(replica_dir(&user).to_str().unwrap()), "names the replica: {err}");
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    store.close();
}
