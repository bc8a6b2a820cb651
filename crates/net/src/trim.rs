//! Connection trimming. Gossipsub keeps a stream open to every subscribed peer, and an open
//! stream keeps a libp2p connection alive past the idle timeout: without trimming, every peer a
//! Kademlia lookup ever dialed stays connected (a 100-node testnet ends all-to-all, each
//! connection holding ~250 KB of Noise and Yamux buffers). Above `high` connected peers, the
//! least recently active ones that are not protected (gossip mesh, requests in flight) and
//! were quiet for the grace period are disconnected, down to `low`.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use libp2p::PeerId;

/// When each connected peer last did something: connected, sent or answered an rpc, forwarded
/// a gossip message.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    last: HashMap<PeerId, Instant>,
}

impl Activity {
    pub(crate) fn touch(&mut self, peer: PeerId, now: Instant) {
        self.last.insert(peer, now);
    }

    /// The peer has no connection left (bounds the map by the connected peers).
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.last.remove(peer);
    }

    /// The peers to disconnect: none while at most `high` are connected; else the least
    /// recently active unprotected ones quiet for `grace`, until `low` would remain.
    pub(crate) fn victims(
        &self,
        connected: &[PeerId],
        protected: &HashSet<PeerId>,
        (low, high): (usize, usize),
        grace: Duration,
        now: Instant,
    ) -> Vec<PeerId> {
        if connected.len() <= high {
            return Vec::new();
        }
        let mut quiet: Vec<(Instant, PeerId)> = connected
            .iter()
            .filter(|p| !protected.contains(p))
            .map(|p| (self.last.get(p).copied().unwrap_or(now), *p))
            .filter(|(last, _)| now.saturating_duration_since(*last) >= grace)
            .collect();
        quiet.sort();
        quiet.into_iter().take(connected.len() - low).map(|(_, p)| p).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quietest_unprotected_peers_go_down_to_low() {
        let t0 = Instant::now();
        let peers: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        let mut a = Activity::default();
        for (i, p) in peers.iter().enumerate() {
            a.touch(*p, t0 + Duration::from_secs(i as u64));
        }
        let now = t0 + Duration::from_secs(100);
        let grace = Duration::from_secs(10);
        // At or under high: nothing.
        assert!(a.victims(&peers, &HashSet::new(), (2, 6), grace, now).is_empty());
        // Over high: the four oldest, down to low.
        let v = a.victims(&peers, &HashSet::new(), (2, 4), grace, now);
        assert_eq!(v, peers[..4]);
        // Protected peers stay, whatever their age: the next quietest go instead.
        let protected: HashSet<PeerId> = [peers[0], peers[1]].into();
        let v = a.victims(&peers, &protected, (2, 4), grace, now);
        assert_eq!(v, peers[2..6]);
        // Peers active within the grace period stay too.
        a.touch(peers[2], now - Duration::from_secs(1));
        let v = a.victims(&peers, &protected, (2, 4), grace, now);
        assert_eq!(v, [peers[3], peers[4], peers[5]]);
    }
}
