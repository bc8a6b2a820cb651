//! Envelope cost against raw ed25519 on the same bytes, in the same run.
//!
//! Body: a `TaskProgress` with a 1 KiB chunk. Pairs:
//! - `sign/envelope` (build the payload with a random nonce and trace as a node does, canonical
//!   encode, sign, encode `{payload, sig}`) vs `sign/raw-ed25519` (sign domain || the same
//!   payload bytes);
//! - `verify/envelope` (strict decode of both layers, version, signature, time window, schema
//!   id, envelope id; `Envelope::open`) vs `verify/raw-ed25519` (parse the 32-byte key,
//!   verify_strict over domain || payload) and `verify/raw-ed25519-preparsed-key`.
//!
//! After the run, the ratios are printed from criterion's estimates of this run.

use std::{hint::black_box, time::SystemTime};

use capmesh_types::{NodeKey, PeerId};
use capmesh_wire::{
    Body, Envelope, Rules, TaskProgress,
    cbor::Limits,
    domain,
    repr::{Bytes, FixedBytes},
};
use criterion::{BatchSize, Criterion};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

const NOW: u64 = 1_760_000_000_000;

fn body() -> Body {
    TaskProgress {
        call: FixedBytes([1; 16]),
        seq: 7,
        data: Bytes(vec![0x5a; 1024]),
        chain: capmesh_types::Digest::of(b"chain"),
    }
    .into()
}

/// The production path: random nonce and trace from the OS, as a node sends them.
fn build(key: &NodeKey, to: PeerId, body: Body) -> Envelope {
    Envelope::builder(body).to(to).sign(key, NOW).expect("signs")
}

fn benches(c: &mut Criterion) {
    let key = NodeKey::from_seed([0x11; 32]);
    let to = NodeKey::from_seed([0x22; 32]).peer_id();
    let dalek = SigningKey::from_bytes(&key.seed());
    let envelope = build(&key, to, body());
    let wire = envelope.to_bytes();
    let message = [domain::ENVELOPE.as_bytes(), envelope.payload()].concat();
    let sig = dalek.sign(&message);
    let pk = key.public().as_bytes().to_owned();

    let mut sign = c.benchmark_group("sign");
    sign.bench_function("raw-ed25519", |b| b.iter(|| black_box(dalek.sign(black_box(&message)))));
    sign.bench_function("envelope", |b| {
        b.iter_batched(
            body,
            |body| black_box(build(&key, to, body).to_bytes()),
            BatchSize::SmallInput,
        )
    });
    sign.finish();

    let rules = Rules::default();
    let mut verify = c.benchmark_group("verify");
    verify.bench_function("raw-ed25519", |b| {
        b.iter(|| {
            let vk = VerifyingKey::from_bytes(black_box(&pk)).expect("key");
            vk.verify_strict(black_box(&message), &sig).expect("verifies")
        })
    });
    let vk = VerifyingKey::from_bytes(&pk).expect("key");
    verify.bench_function("raw-ed25519-preparsed-key", |b| {
        b.iter(|| vk.verify_strict(black_box(&message), &sig).expect("verifies"))
    });
    verify.bench_function("envelope", |b| {
        b.iter(|| {
            let env = Envelope::from_bytes(black_box(&wire), Limits::default()).expect("parses");
            black_box(env.open(NOW, &rules).expect("opens"))
        })
    });
    verify.finish();
}

/// Mean time of a benchmark from criterion's estimates, in ns, if it was measured in this run
/// (a filtered run leaves older estimates behind; those are not compared).
fn mean_ns(group: &str, name: &str, since: SystemTime) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| format!("{}/../../target", env!("CARGO_MANIFEST_DIR")));
    let path = format!("{dir}/criterion/{group}/{name}/new/estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

#[allow(clippy::print_stdout)] // the ratios are the point of this bench
fn main() {
    let start = SystemTime::now();
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    let pairs = [
        ("sign", "envelope", "raw-ed25519"),
        ("verify", "envelope", "raw-ed25519"),
        ("verify", "envelope", "raw-ed25519-preparsed-key"),
    ];
    for (group, ours, base) in pairs {
        if let (Some(a), Some(b)) = (mean_ns(group, ours, start), mean_ns(group, base, start)) {
            println!("{group}: {ours} {a:.0} ns / {base} {b:.0} ns = {:.3}x", a / b);
        }
    }
}
