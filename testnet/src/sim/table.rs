//! Routing tables as a converged network holds them, built without traffic (`Join::Table`).

use libp2p::{PeerId, kad::KBucketKey};

use super::Rng;

/// For every node of `peers`, up to `k` peers per bucket, drawn at random among all the nodes
/// at that distance from it (a bucket of libp2p's table holds the peers whose XOR distance has
/// the same highest set bit).
pub(crate) fn converged(peers: &[PeerId], k: usize, rng: &mut Rng) -> Vec<Vec<PeerId>> {
    let keys: Vec<KBucketKey<PeerId>> = peers.iter().map(|p| KBucketKey::from(*p)).collect();
    keys.iter().map(|local| table(local, &keys, k, rng)).collect()
}

fn table(
    local: &KBucketKey<PeerId>,
    keys: &[KBucketKey<PeerId>],
    k: usize,
    rng: &mut Rng,
) -> Vec<PeerId> {
    let mut buckets: Vec<Vec<PeerId>> = vec![Vec::new(); 256];
    for key in keys {
        if let Some(bucket) = local.distance(key).ilog2() {
            buckets[bucket as usize].push(*key.preimage());
        }
    }
    buckets
        .into_iter()
        .flat_map(|bucket| {
            let picked: Vec<usize> = rng.choose_below(bucket.len(), k);
            picked.into_iter().map(move |i| bucket[i])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn buckets_hold_k_peers_at_their_distance_and_repeat_with_the_seed() {
        let peers: Vec<PeerId> = (0..300).map(|_| PeerId::random()).collect();
        let tables = converged(&peers, 20, &mut Rng::new(4));
        assert_eq!(tables, converged(&peers, 20, &mut Rng::new(4)));
        for (local, table) in peers.iter().zip(&tables) {
            let local = KBucketKey::from(*local);
            let mut per_bucket: HashMap<u32, usize> = HashMap::new();
            for p in table {
                let bucket = local.distance(&KBucketKey::from(*p)).ilog2();
                *per_bucket.entry(bucket.expect("never the node itself")).or_default() += 1;
            }
            assert!(per_bucket.values().all(|&n| n <= 20));
            // The farthest bucket holds half the network: it is full.
            assert_eq!(per_bucket.get(&255), Some(&20));
        }
    }
}
