//! Behaviour of the replica: refusals, latest-seq-wins, queries, sweep, changefeed, ledger.

use capmesh_store::*;
use capmesh_wire::{Filter, Price, Signed};

use crate::fixtures::*;

fn ids(page: &Page) -> Vec<capmesh_types::Cid> {
    page.hits.iter().map(|h| h.id).collect()
}

/// Asserts that a refused insert left the store exactly as it was.
fn refused(store: &Store, item: Item, now: u64, code: &str) {
    let before = (store.len().unwrap(), store.changes(0, usize::MAX).unwrap());
    let err = store.insert(item, now).unwrap_err();
    assert_eq!(err.code(), code, "{err}");
    assert_eq!((store.len().unwrap(), store.changes(0, usize::MAX).unwrap()), before);
    store.check_integrity().unwrap();
}

#[test]
fn one_test_per_refusal_class() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        Config::default().with_max_records_per_signer(2).with_max_records(3),
    )
    .unwrap();
    let (p, q) = (key(1), key(2));
    let c = contract("text.summarize", &["nlp"], "Summarize text");
    store.insert(advert(&p, &c, AdvertSpec::default()), NOW).unwrap();

    // Signature: a payload signed by another key.
    let Item::Advert { advert: good, contract: named } =
        advert(&p, &c, AdvertSpec { seq: 2, ..Default::default() })
    else {
        unreachable!()
    };
    let forged = Signed::from_parts(
        good.payload().to_vec(),
        *advert(&q, &c, AdvertSpec::default()).sig_for_test(),
    );
    refused(&store, Item::Advert { advert: forged, contract: named }, NOW, "BadSignature");
    // Expired and future-dated records.
    refused(
        &store,
        advert(&p, &c, AdvertSpec { seq: 5, expires: NOW - 1, ..Default::default() }),
        NOW,
        "Expired",
    );
    refused(
        &store,
        advert(&p, &c, AdvertSpec { seq: 5, issued: NOW + HOUR, ..Default::default() }),
        NOW,
        "FutureDated",
    );
    // A contract that is not the one the advert names.
    let other = contract_named("text.other");
    let Item::Advert { advert: a, .. } =
        advert(&p, &c, AdvertSpec { seq: 6, ..Default::default() })
    else {
        unreachable!()
    };
    refused(&store, Item::Advert { advert: a, contract: other }, NOW, "CidMismatch");
    // A malformed contract (bad name) named correctly by its advert.
    let bad = contract("Bad Name", &[], "x");
    refused(&store, advert(&q, &bad, AdvertSpec::default()), NOW, "BadName");
    // Stale seq; the same record again is an idempotent duplicate.
    refused(
        &store,
        advert(&p, &c, AdvertSpec { seq: 1, amount: 7, ..Default::default() }),
        NOW,
        "Stale",
    );
    let again = store.insert(advert(&p, &c, AdvertSpec::default()), NOW).unwrap();
    assert!(matches!(again, Outcome::Duplicate { .. }));
    // Caps: per signer (2) and in total (3).
    store.insert(advert(&p, &contract_named("b"), AdvertSpec::default()), NOW).unwrap();
    refused(&store, advert(&p, &contract_named("c"), AdvertSpec::default()), NOW, "SignerCap");
    store.insert(advert(&q, &contract_named("d"), AdvertSpec::default()), NOW).unwrap();
    refused(&store, advert(&q, &contract_named("e"), AdvertSpec::default()), NOW, "TotalCap");
    let stats = store.stats();
    assert_eq!((stats.dropped_signer_cap, stats.dropped_total_cap, stats.refused_stale), (1, 1, 1));
    assert_eq!(stats.duplicates, 1);
    assert!(stats.refused_verify >= 5, "{stats:?}");
}

fn contract_named(name: &str) -> capmesh_wire::Contract {
    contract(name, &[], "something")
}

trait SigForTest {
    fn sig_for_test(&self) -> &[u8; 64];
}
impl SigForTest for Item {
    fn sig_for_test(&self) -> &[u8; 64] {
        match self {
            Item::Advert { advert, .. } => advert.sig(),
            _ => unreachable!(),
        }
    }
}

#[test]
fn highest_seq_wins_and_retirement_hides_until_a_higher_advert() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = key(1);
    let c = contract("echo", &["test"], "Echo the input");
    let by_cap = |store: &Store| {
        ids(&store.query(&Query { capability: Some(cap_id(&c)), ..Query::default() }, NOW).unwrap())
    };
    let first =
        store.insert(advert(&p, &c, AdvertSpec { seq: 1, ..Default::default() }), NOW).unwrap();
    assert_eq!(by_cap(&store), vec![first.id()]);
    let second = store
        .insert(advert(&p, &c, AdvertSpec { seq: 2, amount: 50, ..Default::default() }), NOW)
        .unwrap();
    assert_eq!(by_cap(&store), vec![second.id()], "the higher seq replaces the advert");
    assert!(store.record(&first.id()).unwrap().is_none(), "the superseded advert is gone");
    store.insert(retirement(&p, &c, 3), NOW).unwrap();
    assert!(by_cap(&store).is_empty(), "retired");
    refused(&store, advert(&p, &c, AdvertSpec { seq: 3, ..Default::default() }), NOW, "Stale");
    let back =
        store.insert(advert(&p, &c, AdvertSpec { seq: 4, ..Default::default() }), NOW).unwrap();
    assert_eq!(by_cap(&store), vec![back.id()], "a higher-seq advert brings it back");
    assert_eq!(store.len().unwrap(), 1);
    store.check_integrity().unwrap();
}

#[test]
fn queries_by_tag_text_name_provider_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (p, q, issuer) = (key(1), key(2), key(9));
    let sum = contract("text.summarize", &["nlp", "text"], "Summarize a long text");
    let tr = contract("text.translate", &["nlp"], "Translate text between languages");
    let img = contract("image.resize", &["image"], "Resize an image");
    let a1 = store
        .insert(advert(&p, &sum, AdvertSpec { amount: 100, ..Default::default() }), NOW)
        .unwrap()
        .id();
    let a2 = store
        .insert(advert(&q, &sum, AdvertSpec { amount: 300, ..Default::default() }), NOW)
        .unwrap()
        .id();
    let a3 = store
        .insert(
            advert(&p, &tr, AdvertSpec { amount: 200, unit: "eur-micro", ..Default::default() }),
            NOW,
        )
        .unwrap()
        .id();
    let a4 = store
        .insert(advert(&q, &img, AdvertSpec { issued: NOW - HOUR, ..Default::default() }), NOW)
        .unwrap()
        .id();
    store.insert(attestation(&issuer, p.peer_id(), "audited", NOW + HOUR), NOW).unwrap();

    let run =
        |filter: Filter| ids(&store.query(&Query { filter, ..Query::default() }, NOW).unwrap());
    assert_eq!(run(Filter { tags: vec!["nlp".into()], ..Filter::default() }), vec![a1, a2, a3]);
    assert_eq!(
        run(Filter { tags: vec!["nlp".into(), "text".into()], ..Filter::default() }),
        vec![a1, a2]
    );
    assert_eq!(run(Filter { text: Some("TEXT languages".into()), ..Filter::default() }), vec![a3]);
    assert_eq!(
        run(Filter { name_prefix: Some("text.".into()), ..Filter::default() }),
        vec![a1, a2, a3]
    );
    assert_eq!(run(Filter { provider: Some(q.peer_id()), ..Filter::default() }), vec![a2, a4]);
    let max = |amount, unit: &str| Some(Price { amount, unit: unit.into() });
    assert_eq!(run(Filter { max_price: max(200, "usd-micro"), ..Filter::default() }), vec![a1, a4]);
    assert_eq!(run(Filter { max_price: max(200, "eur-micro"), ..Filter::default() }), vec![a3]);
    assert_eq!(run(Filter { claim: Some("audited".into()), ..Filter::default() }), vec![a1, a3]);
    assert_eq!(
        run(Filter {
            claim: Some("audited".into()),
            issuer: Some(q.peer_id()),
            ..Filter::default()
        }),
        vec![]
    );
    assert_eq!(
        run(Filter { issued_after: Some(NOW - 2_000), ..Filter::default() }),
        vec![a1, a2, a3]
    );
    let newest = store.query(&Query { order: Order::Newest, ..Query::default() }, NOW).unwrap();
    assert_eq!(ids(&newest), vec![a4, a3, a2, a1]);
    // Expired adverts are never returned, swept or not.
    assert_eq!(ids(&store.query(&Query::default(), NOW + 2 * HOUR).unwrap()), vec![]);
}

#[test]
fn cursors_stay_stable_while_records_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config { posting_chunk: 3, ..Config::default() }).unwrap();
    let p = key(1);
    let mut expected = vec![];
    for i in 0..10 {
        let c = contract(&format!("tool.t{i}"), &["batch"], "a tool");
        expected.push(store.insert(advert(&p, &c, AdvertSpec::default()), NOW).unwrap().id());
    }
    let mut late = 0;
    for order in [Order::Oldest, Order::Newest] {
        let mut seen = vec![];
        let mut cursor = None;
        for page_no in 0.. {
            assert!(page_no < 20, "{order:?}: paging does not end");
            let filter = Filter { tags: vec!["batch".into()], ..Filter::default() };
            let q = Query { filter, order, limit: 3, cursor: cursor.take(), ..Query::default() };
            let page = store.query(&q, NOW).unwrap();
            seen.extend(ids(&page));
            // A few inserts between pages: they must not shift what the pages hold.
            if late < 6 {
                late += 1;
                let c = contract(&format!("late.t{late}"), &["batch"], "late");
                store.insert(advert(&key(2), &c, AdvertSpec::default()), NOW).unwrap();
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let unique: std::collections::BTreeSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "{order:?}: no advert twice");
        match order {
            // Oldest first: the ten in order, then the late ones in order.
            Order::Oldest => assert_eq!(&seen[..10], &expected[..]),
            // Newest first: everything that existed when paging began, newest first; records
            // inserted meanwhile are newer than the cursor and do not appear.
            Order::Newest => {
                let start = seen.len() - 10;
                let mut want = expected.clone();
                want.reverse();
                assert_eq!(&seen[start..], &want[..]);
            }
        }
    }
}

#[test]
fn sweep_removes_expired_records_and_logs_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (p, issuer) = (key(1), key(9));
    let c = contract("echo", &[], "echo");
    let a = store
        .insert(advert(&p, &c, AdvertSpec { expires: NOW + 10, ..Default::default() }), NOW)
        .unwrap()
        .id();
    let t = store.insert(attestation(&issuer, p.peer_id(), "ok", NOW + 10), NOW).unwrap().id();
    let keep = store
        .insert(advert(&p, &contract("keep", &[], "x"), AdvertSpec::default()), NOW)
        .unwrap()
        .id();
    assert_eq!(store.sweep(NOW).unwrap(), 0);
    assert_eq!(store.sweep(NOW + 11).unwrap(), 2);
    assert!(store.record(&a).unwrap().is_none() && store.record(&t).unwrap().is_none());
    assert!(store.record(&keep).unwrap().is_some());
    let deletes: std::collections::BTreeSet<_> = store
        .changes(0, 100)
        .unwrap()
        .into_iter()
        .filter(|c| c.op == ChangeOp::Delete)
        .map(|c| c.id)
        .collect();
    assert_eq!(deletes, [a, t].into_iter().collect());
    // The expired advert's seq still bars an older one.
    refused(
        &store,
        advert(&p, &c, AdvertSpec { seq: 1, amount: 1, ..Default::default() }),
        NOW,
        "Stale",
    );
    store.check_integrity().unwrap();
    assert_eq!(store.stats().expired, 2);
}

#[test]
fn changefeed_delivers_every_change_in_order_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = key(1);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut sub = store.subscribe(1, 2);
    let mut stored = vec![];
    for i in 0..20 {
        stored.push(
            store
                .insert(
                    advert(&p, &contract(&format!("t{i}"), &[], "x"), AdvertSpec::default()),
                    NOW,
                )
                .unwrap(),
        );
    }
    // Bounded waits: a feed that stops delivering fails the test instead of hanging it.
    let within = |f| {
        rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(30), f).await })
    };
    let got: Vec<Change> = within(async {
        let mut got = vec![];
        while got.len() < 20 {
            got.push(sub.rx.recv().await.unwrap());
        }
        got
    })
    .expect("the changefeed delivered 20 changes within 30 s");
    let want: Vec<_> = stored
        .iter()
        .map(|o| match o {
            Outcome::Stored { id, seq } => (*seq, *id),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(got.iter().map(|c| (c.seq, c.id)).collect::<Vec<_>>(), want);
    // A subscriber that restarts from a sequence gets everything from there on.
    let mut again = store.subscribe(15, 4);
    let first = rt
        .block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(30), again.rx.recv()).await
        })
        .expect("a resumed feed delivers within 30 s")
        .unwrap();
    assert_eq!(first.seq, 15);
}

#[test]
fn ledger_chains_and_names_the_first_bad_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = key(1);
    let signed: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let r = capmesh_wire::Receipt {
                call: capmesh_wire::repr::FixedBytes([i; 16]),
                capability: cap_id(&contract("echo", &[], "x")),
                caller: key(2).peer_id(),
                provider: p.peer_id(),
                offer: cap_id(&contract("offer", &[], "x")),
                input: capmesh_types::Digest::of(b"in"),
                output: None,
                price: Price { amount: 1, unit: "usd-micro".into() },
                started: NOW,
                ended: NOW + 1,
                status: capmesh_wire::CallStatus::Failed,
                validation: capmesh_wire::Validation::Skipped,
            };
            Signed::sign(&p, &r).unwrap().to_bytes()
        })
        .collect();
    for s in &signed {
        store.ledger_append(LedgerKind::Receipt, s).unwrap();
    }
    let mut entries = store.ledger().unwrap();
    assert_eq!(entries.len(), 3);
    verify_ledger(&entries).unwrap();
    entries[1].signed[10] ^= 1;
    let err = verify_ledger(&entries).unwrap_err();
    assert_eq!(err.seq, 1, "{err}");
}

/// The ledger's entries in a store, a receipt issued by `p` to `key(2)` per call, and the
/// countersignature of the last by `key(2)`.
fn ledger_of_calls(store: &Store, p: &capmesh_types::NodeKey, calls: u8) {
    let c = key(2);
    let mut last = None;
    for i in 0..calls {
        let r = capmesh_wire::Receipt {
            call: capmesh_wire::repr::FixedBytes([i; 16]),
            capability: cap_id(&contract("echo", &[], "x")),
            caller: c.peer_id(),
            provider: p.peer_id(),
            offer: cap_id(&contract("offer", &[], "x")),
            input: capmesh_types::Digest::of(b"in"),
            output: None,
            price: Price { amount: 1, unit: "usd-micro".into() },
            started: NOW,
            ended: NOW + 1,
            status: capmesh_wire::CallStatus::Failed,
            validation: capmesh_wire::Validation::Skipped,
        };
        let signed = Signed::sign(p, &r).unwrap();
        last = Some(signed.id());
        store.ledger_append(LedgerKind::Receipt, &signed.to_bytes()).unwrap();
    }
    if let Some(receipt) = last {
        let cs = capmesh_wire::Countersignature { receipt, caller: c.peer_id(), signed: NOW + 2 };
        let bytes = Signed::sign(&c, &cs).unwrap().to_bytes();
        store.ledger_append(LedgerKind::Countersignature, &bytes).unwrap();
    }
}

fn head(key: &capmesh_types::NodeKey, len: u64, hash: capmesh_types::Digest) -> Vec<u8> {
    let head = capmesh_wire::LedgerHead { node: key.peer_id(), len, hash, issued: NOW };
    Signed::sign(key, &head).unwrap().to_bytes()
}

#[test]
fn a_signed_head_holds_the_ledger_to_its_length_and_node() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = key(1);
    assert_eq!(store.ledger_tip().unwrap(), (0, capmesh_types::Digest::from_bytes([0; 32])));
    let empty = head(&p, 0, capmesh_types::Digest::from_bytes([0; 32]));
    assert_eq!(verify_head(&[], &empty).unwrap().len, 0);

    ledger_of_calls(&store, &p, 3);
    let entries = store.ledger().unwrap();
    let (len, hash) = store.ledger_tip().unwrap();
    assert_eq!((len, hash), (4, entries[3].hash));
    verify_ledger(&entries).unwrap();
    // The provider's head, and the caller's (both are parties to every entry).
    let signed = head(&p, len, hash);
    assert_eq!(verify_head(&entries, &signed).unwrap().node, p.peer_id());
    verify_head(&entries, &head(&key(2), len, hash)).unwrap();

    // A truncated ledger (a valid chain on its own) and an emptied one.
    verify_ledger(&entries[..2]).unwrap();
    let err = verify_head(&entries[..2], &signed).unwrap_err();
    assert!(matches!(err, HeadError::Length { head: 4, actual: 2, .. }), "{err}");
    assert!(err.to_string().contains("removed"), "{err}");
    let err = verify_head(&[], &signed).unwrap_err();
    assert!(matches!(err, HeadError::Length { head: 4, actual: 0, .. }), "{err}");
    // Same length, another last hash.
    let err = verify_head(&entries, &head(&p, len, entries[2].hash)).unwrap_err();
    assert!(matches!(err, HeadError::Hash { last: Some(3), .. }), "{err}");
    assert!(err.to_string().contains("than ledger entry 3's"), "{err}");
    let err = verify_head(&[], &head(&p, 0, hash)).unwrap_err();
    assert!(err.to_string().contains("than an empty ledger's (32 zero bytes)"), "{err}");
    // A head by a node that is no party to the calls.
    let err = verify_head(&entries, &head(&key(9), len, hash)).unwrap_err();
    assert!(matches!(err, HeadError::Foreign { seq: 0, .. }), "{err}");
    // A head whose signature does not hold.
    let mut bad = signed.clone();
    bad[10] ^= 1;
    let err = verify_head(&entries, &bad).unwrap_err();
    assert!(matches!(&err, HeadError::Signature(e) if e.code() == "BadSignature"), "{err}");

    // The tip follows appends.
    ledger_of_calls(&store, &p, 1);
    assert_eq!(store.ledger_tip().unwrap().0, 6);
}

#[test]
fn peer_book_keeps_the_latest_entry_per_peer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let entry = |addr: &str, last_seen| PeerEntry {
        peer: key(3).peer_id(),
        addrs: vec![addr.into()],
        last_seen,
    };
    store.put_peer(&entry("/ip4/127.0.0.1/tcp/1", NOW)).unwrap();
    store.put_peer(&entry("/ip4/127.0.0.1/tcp/2", NOW + 1)).unwrap();
    assert_eq!(store.peers().unwrap(), vec![entry("/ip4/127.0.0.1/tcp/2", NOW + 1)]);
}

#[test]
fn a_second_open_of_the_same_replica_is_refused_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _held = open(dir.path());
    let err = Store::open(dir.path(), Config::default()).unwrap_err();
    assert_eq!(err.code(), "Locked", "{err}");
}
