//! How each connected peer is connected: directly, through a relay circuit, or directly after
//! a DCUtR hole punch replaced a relayed connection. Kept from connection-established
//! endpoints (a relayed connection's address holds `/p2p-circuit`) and DCUtR's results.

use std::collections::{HashMap, VecDeque};

use libp2p::{PeerId, swarm::ConnectionId};

use crate::ConnectionKind;

/// DCUtR successes remembered until their connection is reported established (the two events
/// come in either order).
const EARLY_PUNCHES: usize = 16;

/// The open connections of each peer and their kind. Bounded by the connection limit: an
/// entry lives from established to closed.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    peers: HashMap<PeerId, Vec<(ConnectionId, ConnectionKind)>>,
    early: VecDeque<ConnectionId>,
}

impl Connections {
    pub(crate) fn established(&mut self, peer: PeerId, id: ConnectionId, relayed: bool) {
        // A direct connection that comes while a relayed one is open is DCUtR's upgrade: only
        // one side gets DCUtR's event, the other sees the new connection only.
        let upgrades = |peers: &HashMap<PeerId, Vec<(ConnectionId, ConnectionKind)>>| {
            peers.get(&peer).is_some_and(|c| c.iter().any(|(_, k)| *k == ConnectionKind::Relayed))
        };
        let kind = if relayed {
            ConnectionKind::Relayed
        } else if let Some(i) = self.early.iter().position(|c| *c == id) {
            self.early.remove(i);
            ConnectionKind::HolePunched
        } else if upgrades(&self.peers) {
            ConnectionKind::HolePunched
        } else {
            ConnectionKind::Direct
        };
        self.peers.entry(peer).or_default().push((id, kind));
    }

    pub(crate) fn closed(&mut self, peer: &PeerId, id: ConnectionId) {
        if let Some(conns) = self.peers.get_mut(peer) {
            conns.retain(|(c, _)| *c != id);
            if conns.is_empty() {
                self.peers.remove(peer);
            }
        }
    }

    /// DCUtR made the direct connection `id` to `peer`.
    pub(crate) fn punched(&mut self, peer: &PeerId, id: ConnectionId) {
        if let Some(entry) =
            self.peers.get_mut(peer).and_then(|c| c.iter_mut().find(|(c, _)| *c == id))
        {
            entry.1 = ConnectionKind::HolePunched;
            return;
        }
        if self.early.len() >= EARLY_PUNCHES {
            self.early.pop_front();
        }
        self.early.push_back(id);
    }

    /// The peer's best connection: hole-punched, else direct, else relayed; `None` when not
    /// connected.
    pub(crate) fn kind(&self, peer: &PeerId) -> Option<ConnectionKind> {
        self.peers.get(peer)?.iter().map(|(_, k)| *k).max_by_key(|k| match k {
            ConnectionKind::Relayed => 0,
            ConnectionKind::Direct => 1,
            ConnectionKind::HolePunched => 2,
        })
    }

    /// Whether the connection `id` to `peer` is direct (not through a relay).
    pub(crate) fn is_direct(&self, peer: &PeerId, id: ConnectionId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|c| c.iter().any(|(c, k)| *c == id && *k != ConnectionKind::Relayed))
    }

    /// Whether `peer` has a direct connection left.
    pub(crate) fn has_direct(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|c| c.iter().any(|(_, k)| *k != ConnectionKind::Relayed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_endpoints_and_dcutr_in_either_order() {
        let mut c = Connections::default();
        let p = PeerId::random();
        let (relayed, punched, later) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
            ConnectionId::new_unchecked(3),
        );
        assert_eq!(c.kind(&p), None);
        c.established(p, relayed, true);
        assert_eq!(c.kind(&p), Some(ConnectionKind::Relayed));
        assert!(!c.has_direct(&p));
        // DCUtR's success reported before the connection: applied when it is established.
        c.punched(&p, punched);
        c.established(p, punched, false);
        assert_eq!(c.kind(&p), Some(ConnectionKind::HolePunched));
        assert!(c.is_direct(&p, punched) && !c.is_direct(&p, relayed));
        c.closed(&p, relayed);
        assert_eq!(c.kind(&p), Some(ConnectionKind::HolePunched));
        c.closed(&p, punched);
        // The other side of a punch: no DCUtR event, a direct connection beside a relayed one.
        let (relayed2, upgraded) = (ConnectionId::new_unchecked(4), ConnectionId::new_unchecked(5));
        c.established(p, relayed2, true);
        c.established(p, upgraded, false);
        assert_eq!(c.kind(&p), Some(ConnectionKind::HolePunched));
        c.closed(&p, relayed2);
        c.closed(&p, upgraded);
        // Reported after: the entry changes.
        c.established(p, later, false);
        assert_eq!(c.kind(&p), Some(ConnectionKind::Direct));
        c.punched(&p, later);
        assert_eq!(c.kind(&p), Some(ConnectionKind::HolePunched));
        c.closed(&p, later);
        assert_eq!(c.kind(&p), None);
        assert!(c.peers.is_empty());
    }
}
