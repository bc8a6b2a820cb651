//! Registry benchmarks, each beside a baseline from the same run, reported as ratios:
//!
//! 1. Ingest: signed adverts verified, stored and flushed in groups (`Store::insert_many`,
//!    1024 per call), against single-threaded raw ed25519 verification of the same kind of
//!    signatures. Goal: ≥ 80 % of the raw verify rate.
//! 2. Query latency over the whole replica (default 1 000 000 adverts): tag, one-word and
//!    two-word text queries (first page of 50), against a raw sled prefix scan of the same
//!    number of index entries. Goal: p50 ≤ 1 ms.
//!
//! `CAPMESH_BENCH_ADVERTS=N` changes the size. Run: `cargo bench -p capmesh-store --bench registry`.

use std::time::{Duration, Instant};

use capmesh_store::{Config, Item, Query, Store};
use capmesh_types::{Cid, Codec, NodeKey};
use capmesh_wire::*;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde_json::json;

const NOW: u64 = 1_760_000_000_000;
const PROVIDERS: usize = 2_000;
const CONTRACTS: usize = 1_000;
const TAGS: usize = 100;
const WORDS: usize = 500;

fn word(i: usize) -> String {
    format!("w{i}")
}

fn contract(j: usize) -> Contract {
    let tags = [j % TAGS, (j * 7 + 3) % TAGS, (j * 13 + 5) % TAGS];
    let mut tags: Vec<String> = tags.iter().map(|t| format!("tag{t}")).collect();
    tags.sort();
    tags.dedup();
    Contract {
        name: format!("tool.t{j}"),
        version: "1.0.0".into(),
        description: format!(
            "{} {} {} tool",
            word(j % WORDS),
            word((j * 3 + 1) % WORDS),
            word((j * 11 + 2) % WORDS)
        ),
        input: json!({"type": "object"}),
        output: json!({"type": "object"}),
        tags,
        read_only: true,
        idempotent: true,
        streaming: false,
    }
}

fn sign_adverts(n: usize, keys: &[NodeKey], contracts: &[(Contract, Cid)]) -> Vec<Item> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = n.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t * chunk..((t + 1) * chunk).min(n))
                        .map(|i| {
                            let (provider, cap) = (i % PROVIDERS, (i / PROVIDERS) % CONTRACTS);
                            let (contract, id) = &contracts[cap];
                            let key = &keys[provider];
                            let advert = Advert {
                                capability: *id,
                                provider: key.peer_id(),
                                addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
                                price: Price {
                                    amount: (i % 1000) as u64,
                                    unit: "usd-micro".into(),
                                },
                                limits: CallLimits {
                                    timeout_ms: 30_000,
                                    max_input_bytes: 65_536,
                                    concurrency: 8,
                                },
                                attestations: vec![],
                                seq: 1 + (i / (PROVIDERS * CONTRACTS)) as u64,
                                issued: NOW - 1_000,
                                expires: NOW + 86_400_000,
                            };
                            Item::Advert {
                                advert: Signed::sign(key, &advert).expect("signs"),
                                contract: contract.clone(),
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("signer thread")).collect()
    })
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.90), at(0.99))
}

#[allow(clippy::print_stdout)] // the report is the point of this bench
fn main() {
    let n: usize = std::env::var("CAPMESH_BENCH_ADVERTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let keys: Vec<NodeKey> =
        (0..PROVIDERS).map(|i| NodeKey::from_seed(blake3::hash(&i.to_be_bytes()).into())).collect();
    let contracts: Vec<(Contract, Cid)> = (0..CONTRACTS)
        .map(|j| {
            let c = contract(j);
            let id = Cid::of(Codec::DagCbor, &cbor::to_vec(&c).expect("canonical"));
            (c, id)
        })
        .collect();

    // Baseline 1: single-threaded raw ed25519 verify of advert-sized messages.
    let sk = SigningKey::from_bytes(&[7; 32]);
    let vk_bytes = sk.verifying_key().to_bytes();
    let msgs: Vec<Vec<u8>> =
        (0..4_000u32).map(|i| [domain::ADVERT.as_bytes(), &[i as u8; 300]].concat()).collect();
    let sigs: Vec<_> = msgs.iter().map(|m| sk.sign(m)).collect();
    let t = Instant::now();
    for (m, s) in msgs.iter().zip(&sigs) {
        let vk = VerifyingKey::from_bytes(&vk_bytes).expect("key");
        vk.verify_strict(m, s).expect("verifies");
    }
    let raw_rate = msgs.len() as f64 / t.elapsed().as_secs_f64();

    println!("signing {n} adverts ({PROVIDERS} providers, {CONTRACTS} contracts)…");
    let items = sign_adverts(n, &keys, &contracts);

    let dir = tempfile::tempdir().expect("temp dir");
    let config =
        Config { max_records: u64::MAX, max_records_per_signer: u64::MAX, ..Config::default() };
    let store = Store::open(dir.path(), config).expect("store opens");
    let t = Instant::now();
    let mut stored = 0usize;
    let mut first_100k = None;
    let mut items = items.into_iter();
    loop {
        let batch: Vec<Item> = items.by_ref().take(1024).collect();
        if batch.is_empty() {
            break;
        }
        stored += store.insert_many(batch, NOW).into_iter().filter(Result::is_ok).count();
        if first_100k.is_none() && stored >= 100_000.min(n) {
            first_100k = Some((stored, t.elapsed()));
        }
    }
    let ingest = t.elapsed();
    assert_eq!(stored, n, "every advert is stored");
    let ingest_rate = n as f64 / ingest.as_secs_f64();
    println!("raw ed25519 verify (1 thread): {raw_rate:.0}/s");
    if let Some((k, d)) = first_100k {
        let r = k as f64 / d.as_secs_f64();
        println!("ingest, first {k}: {r:.0}/s = {:.2}x raw verify", r / raw_rate);
    }
    println!(
        "ingest, all {n}: {ingest_rate:.0}/s = {:.2}x raw verify ({:.1} s, {} flushes)",
        ingest_rate / raw_rate,
        ingest.as_secs_f64(),
        store.stats().flushes
    );

    // Queries: first page of 50.
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng as usize
    };
    let rounds = 2_000;
    let run = |label: &str, make: &mut dyn FnMut(usize) -> Query| {
        let mut samples = Vec::with_capacity(rounds);
        let mut hits = 0;
        for i in 0..rounds {
            let q = make(i);
            let t = Instant::now();
            let page = store.query(&q, NOW).expect("query");
            samples.push(t.elapsed());
            hits += page.hits.len();
        }
        let (p50, p90, p99) = percentiles(samples);
        println!(
            "{label}: p50 {p50:?} p90 {p90:?} p99 {p99:?} ({:.1} hits/query)",
            hits as f64 / rounds as f64
        );
        p50
    };
    let tag_p50 = run("tag query", &mut |_| Query {
        filter: Filter { tags: vec![format!("tag{}", next() % TAGS)], ..Filter::default() },
        ..Query::default()
    });
    run("text query, one word", &mut |_| Query {
        filter: Filter { text: Some(word(next() % WORDS)), ..Filter::default() },
        ..Query::default()
    });
    run("text query, two words of one contract", &mut |_| {
        let j = next() % CONTRACTS;
        Query {
            filter: Filter {
                text: Some(format!("{} {}", word(j % WORDS), word((j * 3 + 1) % WORDS))),
                ..Filter::default()
            },
            ..Query::default()
        }
    });
    run("tag + max price", &mut |_| Query {
        filter: Filter {
            tags: vec![format!("tag{}", next() % TAGS)],
            max_price: Some(Price { amount: 100, unit: "usd-micro".into() }),
            ..Filter::default()
        },
        ..Query::default()
    });
    // Baseline 2: the bare sled work under a tag query, a prefix scan of 50 entries.
    let raw = sled::open(dir.path().join("raw")).expect("sled");
    for i in 0..200_000u32 {
        raw.insert(
            [b"it".as_slice(), format!("tag{}", i % 100).as_bytes(), &[0], &i.to_be_bytes()]
                .concat(),
            &[0u8; 36][..],
        )
        .expect("insert");
    }
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let prefix = [b"it".as_slice(), format!("tag{}", next() % 100).as_bytes(), &[0]].concat();
        let t = Instant::now();
        let got = raw.scan_prefix(prefix).take(50).count();
        samples.push(t.elapsed());
        assert_eq!(got, 50);
    }
    let (raw_p50, _, _) = percentiles(samples);
    println!(
        "raw sled prefix scan of 50: p50 {raw_p50:?}; tag query p50 = {:.1}x that",
        tag_p50.as_secs_f64() / raw_p50.as_secs_f64()
    );
}
