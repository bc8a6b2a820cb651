//! Measures a 50-node loopback mesh (issue 4): publish → findable by id through Kademlia on
//! every node and → present in every replica; then find-by-id latency (first verified hit via
//! Kademlia + Discover) and Kademlia requests per find, beside a bare Kademlia `get_providers`
//! for the same key from the same node in the same run. Prints a report; asserts nothing.
//!
//! `cargo run --release -p capmesh-testkit --example measure -- [NODES] [SEARCHERS] [CAPS]`

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use capmesh_mesh::{FindEvent, Source, kad_key};
use capmesh_net::ProviderEvent;
use capmesh_testkit::{NodeOpts, Testnet, wait_for};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let n = args.first().copied().unwrap_or(50);
    let searchers = args.get(1).copied().unwrap_or(10).min(n / 2);
    let caps = args.get(2).copied().unwrap_or(10);
    // Deterministic topology: node i bootstraps from i-1 and from (i * 7) % i.
    let mut net = Testnet::default();
    let started = Instant::now();
    for i in 0..n {
        let mut boot = Vec::new();
        if i > 0 {
            boot.push(i - 1);
            let other = (i * 7) % i;
            if other != i - 1 {
                boot.push(other);
            }
        }
        // The last `searchers` nodes neither gossip nor sync: they can only find by Kademlia.
        let searcher = i >= n - searchers;
        let opts = NodeOpts::new().bootstrap(&boot).gossip(!searcher).sync(!searcher);
        net.add(opts).await?;
    }
    println!("started {n} nodes in {:?}", started.elapsed());
    wait_for("routing tables filled", Duration::from_secs(60), || async {
        let mut thin = 0;
        for node in net.nodes() {
            if node.node.net.info().await.unwrap().routing_table_peers < 3 {
                thin += 1;
            }
        }
        if thin == 0 { Ok(()) } else { Err(thin) }
    })
    .await;

    // 1. Publish on node 0: time to findable-by-id (Kademlia lookup finds node 0) on every
    //    other node, and to present in every gossiping replica.
    let provider = net.node(0);
    let t0 = Instant::now();
    let cap = provider.publish_contract("measure-propagation").await?;
    // One poller per node and measure, all concurrent.
    let mut kad_tasks = tokio::task::JoinSet::new();
    let mut rep_tasks = tokio::task::JoinSet::new();
    let provider_id = provider.peer_id();
    for i in 1..n {
        let handle = net.node(i).node.net.clone();
        kad_tasks.spawn(async move {
            while t0.elapsed() < Duration::from_secs(120) {
                let mut rx = handle.get_providers(kad_key(&cap)).await.ok()?;
                while let Some(ev) = rx.recv().await {
                    match ev {
                        ProviderEvent::Found { providers, .. } => {
                            if providers.iter().any(|(p, _)| *p == provider_id) {
                                return Some(t0.elapsed().as_secs_f64() * 1e3);
                            }
                        }
                        ProviderEvent::Done { .. } => break,
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None
        });
        if i < n - searchers {
            let store = net.node(i).node.store.clone();
            rep_tasks.spawn(async move {
                let q = capmesh_store::Query { capability: Some(cap), ..Default::default() };
                while t0.elapsed() < Duration::from_secs(120) {
                    if store.query(&q, capmesh::now_ms()).is_ok_and(|p| !p.hits.is_empty()) {
                        return Some(t0.elapsed().as_secs_f64() * 1e3);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                None
            });
        }
    }
    let kad_times: Vec<f64> = kad_tasks.join_all().await.into_iter().flatten().collect();
    let replica_times: Vec<f64> = rep_tasks.join_all().await.into_iter().flatten().collect();
    let (mut kad_times, mut replica_times) = (kad_times, replica_times);
    println!(
        "publish -> findable by id (Kademlia) on {}/{} nodes: max {:.0} ms (p50 {:.0} ms)",
        kad_times.len(),
        n - 1,
        pct(&mut kad_times.clone(), 1.0),
        pct(&mut kad_times, 0.5)
    );
    println!(
        "publish -> present in {}/{} gossiping replicas: max {:.0} ms (p50 {:.0} ms)",
        replica_times.len(),
        n - 1 - searchers,
        pct(&mut replica_times.clone(), 1.0),
        pct(&mut replica_times, 0.5)
    );

    // 2. Find-by-id latency from the searchers (no gossip, no sync: Kademlia + Discover),
    //    beside a bare get_providers for the same key from the same node, alternating order.
    let mut cap_ids = Vec::new();
    for c in 0..caps {
        let p = 1 + (c * 3) % (n - searchers - 1);
        cap_ids.push((p, net.node(p).publish_contract(&format!("measure-{c}")).await?));
    }
    // Let provider records land (a lookup from another node proves it).
    for (_, cap) in &cap_ids {
        wait_for("provider record", Duration::from_secs(30), || async {
            let mut rx = net.node(n - 1).node.net.get_providers(kad_key(cap)).await.unwrap();
            while let Some(ev) = rx.recv().await {
                if let ProviderEvent::Found { .. } = ev {
                    return Ok(());
                }
                if let ProviderEvent::Done { .. } = ev {
                    break;
                }
            }
            Err(())
        })
        .await;
    }
    let (mut find_ms, mut bare_ms, mut find_reqs, mut bare_reqs) = (vec![], vec![], vec![], vec![]);
    let mut sources_kad = 0;
    for (k, (_, cap)) in cap_ids.iter().enumerate() {
        for s in (n - searchers)..n {
            let node = net.node(s);
            let bare_first = (k + s) % 2 == 0;
            for round in 0..2 {
                if (round == 0) == bare_first {
                    let t = Instant::now();
                    let mut rx = node.node.net.get_providers(kad_key(cap)).await?;
                    while let Some(ev) = rx.recv().await {
                        if let ProviderEvent::Found { requests, .. } = ev {
                            bare_ms.push(t.elapsed().as_secs_f64() * 1e3);
                            bare_reqs.push(f64::from(requests));
                            break;
                        }
                        if let ProviderEvent::Done { .. } = ev {
                            break;
                        }
                    }
                } else {
                    let t = Instant::now();
                    let mut rx = node.node.mesh.find(*cap, 1, Some(Duration::from_secs(20)));
                    while let Some(ev) = rx.recv().await {
                        match ev {
                            FindEvent::Found(f) => {
                                find_ms.push(t.elapsed().as_secs_f64() * 1e3);
                                find_reqs.push(f64::from(f.kad_requests));
                                sources_kad += usize::from(f.source == Source::Kademlia);
                            }
                            FindEvent::Done { .. } => break,
                        }
                    }
                }
            }
        }
    }
    let total = caps * searchers;
    let (f50, f99) = (pct(&mut find_ms.clone(), 0.5), pct(&mut find_ms.clone(), 0.99));
    let (b50, b99) = (pct(&mut bare_ms.clone(), 0.5), pct(&mut bare_ms.clone(), 0.99));
    println!("find by id: {}/{total} found ({sources_kad} via Kademlia)", find_ms.len());
    println!(
        "  capmesh find (lookup + Discover + verify + store): p50 {f50:.2} ms  p99 {f99:.2} ms  kad requests p50 {:.0} max {:.0}",
        pct(&mut find_reqs.clone(), 0.5),
        pct(&mut find_reqs, 1.0)
    );
    println!(
        "  bare Kademlia get_providers (first provider):      p50 {b50:.2} ms  p99 {b99:.2} ms  kad requests p50 {:.0} max {:.0}",
        pct(&mut bare_reqs.clone(), 0.5),
        pct(&mut bare_reqs, 1.0)
    );
    println!("  ratio find / bare: p50 {:.2}x  p99 {:.2}x", f50 / b50, f99 / b99);
    net.shutdown().await?;
    Ok(())
}
