//! How each connected peer is connected: directly, through a relay circuit, or directly after
//! a DCUtR hole punch replaced a relayed connection. Kept from connection-established
//! endpoints (a relayed connection's address holds `/p2p-circuit`) and DCUtR's results.
//!
//! A relayed connection is retired once its peer has a direct one beside it: request-response
//! spreads a peer's requests over all its connections (by request id), so a relayed connection
//! left open would carry half the calls on the slow path, and hold a circuit on the relay. It
//! is closed as soon as it carries nothing: no inbound request on it awaits our response, and no
//! request of ours to the peer is in flight (which connection one went out on is not known).

use std::collections::{HashMap, HashSet, VecDeque};

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
    /// Inbound requests awaiting our response, by connection (entries > 0 only).
    inbound: HashMap<ConnectionId, usize>,
    /// Relayed connections being closed: asked once.
    closing: HashSet<ConnectionId>,
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
        self.inbound.remove(&id);
        self.closing.remove(&id);
        if let Some(conns) = self.peers.get_mut(peer) {
            conns.retain(|(c, _)| *c != id);
            if conns.is_empty() {
                self.peers.remove(peer);
            }
        }
    }

    /// An inbound request arrived on `id`.
    pub(crate) fn inbound_started(&mut self, id: ConnectionId) {
        *self.inbound.entry(id).or_default() += 1;
    }

    /// The response to an inbound request on `id` was sent, or failed.
    pub(crate) fn inbound_finished(&mut self, id: ConnectionId) {
        if let Some(n) = self.inbound.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.inbound.remove(&id);
            }
        }
    }

    /// Relayed connections to close now (module docs): their peer has a direct connection, no
    /// inbound request on them awaits a response, and `busy` says no request to the peer is in
    /// flight. Each is returned once.
    pub(crate) fn relayed_to_retire(
        &mut self,
        busy: impl Fn(&PeerId) -> bool,
    ) -> Vec<(PeerId, ConnectionId)> {
        let mut retire = Vec::new();
        for (peer, conns) in &self.peers {
            if !conns.iter().any(|(_, k)| *k != ConnectionKind::Relayed) {
                continue;
            }
            let idle =
                |id: &ConnectionId| !self.inbound.contains_key(id) && !self.closing.contains(id);
            let relayed = conns
                .iter()
                .filter(|(id, k)| *k == ConnectionKind::Relayed && idle(id))
                .map(|(id, _)| *id);
            let mut relayed = relayed.peekable();
            if relayed.peek().is_some() && !busy(peer) {
                retire.extend(relayed.map(|id| (*peer, id)));
            }
        }
        self.closing.extend(retire.iter().map(|(_, id)| *id));
        retire
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

    #[test]
    fn a_relayed_connection_is_retired_once_a_direct_one_exists_and_it_is_idle() {
        let mut c = Connections::default();
        let (p, q) = (PeerId::random(), PeerId::random());
        let id = ConnectionId::new_unchecked;
        let never_busy = |_: &PeerId| false;
        c.established(p, id(1), true);
        c.established(q, id(2), true);
        // Relayed only: the relay is the only path, nothing to retire.
        assert!(c.relayed_to_retire(never_busy).is_empty());
        c.established(p, id(3), false);
        // An inbound request on the relayed connection holds it until answered.
        c.inbound_started(id(1));
        c.inbound_started(id(1));
        assert!(c.relayed_to_retire(never_busy).is_empty());
        c.inbound_finished(id(1));
        assert!(c.relayed_to_retire(never_busy).is_empty());
        c.inbound_finished(id(1));
        // A request of ours to p in flight may be on it.
        assert!(c.relayed_to_retire(|peer| *peer == p).is_empty());
        assert_eq!(c.relayed_to_retire(never_busy), vec![(p, id(1))]);
        // Asked once; q (relayed only) untouched.
        assert!(c.relayed_to_retire(never_busy).is_empty());
        c.closed(&p, id(1));
        assert_eq!(c.kind(&p), Some(ConnectionKind::HolePunched));
        assert!(c.inbound.is_empty() && c.closing.is_empty());
        // A relayed connection that comes while a direct one is open goes too.
        c.established(p, id(4), true);
        c.inbound_started(id(4));
        c.closed(&p, id(4));
        assert!(c.inbound.is_empty());
        c.established(p, id(5), true);
        assert_eq!(c.relayed_to_retire(never_busy), vec![(p, id(5))]);
    }
}
