//! The query engine against a simple in-memory model: random sequences of inserts,
//! retirements, re-adverts, expiries and queries give the same answers.

use std::collections::BTreeMap;

use capmesh_store::*;
use capmesh_types::Cid;
use capmesh_wire::{Contract, Filter, Price};
use proptest::prelude::*;

use crate::fixtures::*;

const PROVIDERS: u8 = 3;
const NAMES: [&str; 4] = ["text.sum", "text.tr", "image.fx", "audio.asr"];
const TAGS: [&[&str]; 4] = [&["nlp", "text"], &["nlp"], &["image"], &["audio", "nlp"]];
const WORDS: [&str; 4] =
    ["summarize text", "translate text", "image effects", "speech recognition"];

fn contracts() -> Vec<Contract> {
    (0..4).map(|i| contract(NAMES[i], TAGS[i], WORDS[i])).collect()
}

#[derive(Debug, Clone)]
enum Op {
    Advert { provider: u8, cap: usize, seq: u64, amount: u64, ttl: u64 },
    Retire { provider: u8, cap: usize, seq: u64 },
    Advance(u64),
    Sweep,
    Query { filter: u8, order: bool, limit: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PROVIDERS, 0..4usize, 1..6u64, 1..500u64, 1..100u64)
            .prop_map(|(provider, cap, seq, amount, ttl)| Op::Advert { provider, cap, seq, amount, ttl }),
        1 => (0..PROVIDERS, 0..4usize, 1..6u64).prop_map(|(provider, cap, seq)| Op::Retire { provider, cap, seq }),
        1 => (1..40u64).prop_map(Op::Advance),
        1 => Just(Op::Sweep),
        3 => (0..8u8, any::<bool>(), 1..5usize).prop_map(|(filter, order, limit)| Op::Query { filter, order, limit }),
    ]
}

/// The model: per (provider, capability), the winning seq and whether it is a live advert.
#[derive(Default)]
struct Model {
    state: BTreeMap<(u8, usize), (u64, Option<Live>)>,
    order: u64,
}

#[derive(Clone)]
struct Live {
    id: Cid,
    order: u64,
    amount: u64,
    expires: u64,
}

fn filter(n: u8, providers: &[capmesh_types::PeerId]) -> Filter {
    match n {
        0 => Filter::default(),
        1 => Filter { tags: vec!["nlp".into()], ..Filter::default() },
        2 => Filter { tags: vec!["nlp".into(), "text".into()], ..Filter::default() },
        3 => Filter { text: Some("text".into()), ..Filter::default() },
        4 => Filter { name_prefix: Some("text.".into()), ..Filter::default() },
        5 => Filter { provider: Some(providers[1]), ..Filter::default() },
        6 => Filter {
            max_price: Some(Price { amount: 250, unit: "usd-micro".into() }),
            ..Filter::default()
        },
        _ => Filter { text: Some("image".into()), tags: vec!["image".into()], ..Filter::default() },
    }
}

fn model_matches(n: u8, provider: u8, cap: usize, live: &Live) -> bool {
    match n {
        0 => true,
        1 => TAGS[cap].contains(&"nlp"),
        2 => TAGS[cap].contains(&"nlp") && TAGS[cap].contains(&"text"),
        3 => WORDS[cap].contains("text") || NAMES[cap].contains("text"),
        4 => NAMES[cap].starts_with("text."),
        5 => provider == 1,
        6 => live.amount <= 250,
        _ => NAMES[cap].contains("image") && TAGS[cap].contains(&"image"),
    }
}

/// The order an index scan yields: by name first for name-prefix queries, else insertion.
fn sort_key(n: u8, cap: usize, live: &Live) -> (String, u64) {
    if n == 4 { (NAMES[cap].to_string(), live.order) } else { (String::new(), live.order) }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_answers_like_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        // Chunks of two postings, so chunk creation, removal and cursors across chunks are hit.
        let store = Store::open(dir.path(), Config { posting_chunk: 2, ..Config::default() }).unwrap();
        let keys: Vec<_> = (0..PROVIDERS).map(|i| key(i + 1)).collect();
        let peers: Vec<_> = keys.iter().map(|k| k.peer_id()).collect();
        let contracts = contracts();
        let mut model = Model::default();
        let mut now = NOW;
        for op in ops {
            match op {
                Op::Advert { provider, cap, seq, amount, ttl } => {
                    let spec = AdvertSpec { seq, amount, issued: now - 1, expires: now + ttl, ..Default::default() };
                    let result = store.insert(advert(&keys[provider as usize], &contracts[cap], spec), now);
                    let fresh = model.state.get(&(provider, cap)).is_none_or(|(s, _)| seq > *s);
                    if fresh {
                        let Ok(Outcome::Stored { id, seq: order }) = result else { panic!("{result:?}") };
                        model.order = order;
                        model.state.insert((provider, cap), (seq, Some(Live { id, order, amount, expires: now + ttl })));
                    } else {
                        let refused_or_same = result.is_err() || matches!(result, Ok(Outcome::Duplicate { .. }));
                        prop_assert!(refused_or_same, "{:?}", result);
                    }
                }
                Op::Retire { provider, cap, seq } => {
                    let result = store.insert(retirement(&keys[provider as usize], &contracts[cap], seq), now);
                    let fresh = model.state.get(&(provider, cap)).is_none_or(|(s, _)| seq > *s);
                    if fresh {
                        prop_assert!(result.is_ok(), "{:?}", result);
                        model.state.insert((provider, cap), (seq, None));
                    } else {
                        let refused_or_same = result.is_err() || matches!(result, Ok(Outcome::Duplicate { .. }));
                        prop_assert!(refused_or_same, "{:?}", result);
                    }
                }
                Op::Advance(ms) => now += ms,
                Op::Sweep => {
                    store.sweep(now).unwrap();
                    for (_, live) in model.state.values_mut() {
                        if live.as_ref().is_some_and(|l| l.expires < now) {
                            *live = None;
                        }
                    }
                }
                Op::Query { filter: n, order, limit } => {
                    let order = if order { Order::Newest } else { Order::Oldest };
                    let mut want: Vec<((String, u64), Cid)> = model
                        .state
                        .iter()
                        .filter_map(|(&(p, c), (_, live))| live.as_ref().map(|l| (p, c, l)))
                        .filter(|(p, c, l)| l.expires >= now && model_matches(n, *p, *c, l))
                        .map(|(_, c, l)| (sort_key(n, c, l), l.id))
                        .collect();
                    want.sort();
                    if order == Order::Newest {
                        want.reverse();
                    }
                    let want: Vec<Cid> = want.into_iter().map(|(_, id)| id).collect();
                    // Page through with the cursor; the concatenation is the whole answer.
                    let mut got = vec![];
                    let mut cursor = None;
                    for page_no in 0.. {
                        // Every page but the last is full, so more pages than this is a loop.
                        prop_assert!(page_no <= want.len() / limit + 1, "paging does not end");
                        let q = Query { filter: filter(n, &peers), order, limit, cursor: cursor.take(), ..Query::default() };
                        let page = store.query(&q, now).unwrap();
                        prop_assert!(page.hits.len() <= limit);
                        got.extend(page.hits.iter().map(|h| h.id));
                        match page.next { Some(c) => cursor = Some(c), None => break }
                    }
                    prop_assert_eq!(got, want);
                }
            }
        }
        store.check_integrity().unwrap();
    }
}
