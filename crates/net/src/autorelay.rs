//! Automatic relay reservations. rust-libp2p has no AutoRelay: this is the node's own. A pure
//! state machine — inputs are what the swarm reported, [`AutoRelay::poll`] returns what to do —
//! so unit tests drive it without a network; the service feeds it and carries out its
//! [`Action`]s.
//!
//! While the node is private (AutoNAT says so, or `ReachabilityMode::Private` forces it), it
//! holds up to `want` reservations: relays are chosen among directly connected peers whose
//! identify lists the circuit-relay v2 hop protocol, in the order they were found, each
//! reserved by listening on `<relay addr>/p2p/<relay>/p2p-circuit`. A reservation that is lost
//! (its listener closed, the relay disconnected) is replaced by another candidate; the relay it
//! was on waits [`RETRY_AFTER`] before it can be chosen again. Circuit listeners the node opened itself (configured
//! `network.relays`) count toward `want` and their relays are never chosen a second time. When
//! the node becomes public, the reservations this machine made are released (configured ones
//! stay).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use libp2p::{Multiaddr, PeerId, core::transport::ListenerId, multiaddr::Protocol};

use crate::{Reachability, ReachabilityMode};

/// Most relay candidates remembered (relays among the connected peers).
pub(crate) const MAX_CANDIDATES: usize = 32;
/// Addresses remembered per candidate.
const ADDRS_PER_CANDIDATE: usize = 4;
/// How long a relay whose reservation failed or was lost is passed over.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(30);

/// What the service should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Listen on `<addr>/p2p/<relay>/p2p-circuit`, then report [`AutoRelay::listening`] or
    /// [`AutoRelay::reserve_failed`].
    Reserve { relay: PeerId, addr: Multiaddr },
    /// Stop listening (a reservation made here, no longer needed).
    Release { listener: ListenerId },
}

#[derive(Debug)]
struct Candidate {
    addrs: Vec<Multiaddr>,
    /// Order of discovery: earlier candidates are chosen first.
    order: u64,
}

#[derive(Debug)]
struct Reservation {
    relay: PeerId,
    /// Made by this machine (false: a circuit listener the node opened itself).
    auto: bool,
    /// The circuit addresses once the relay accepted (empty while pending).
    addrs: Vec<Multiaddr>,
}

/// The auto-relay state. Bounded: candidates at most [`MAX_CANDIDATES`], reservations at most
/// `want` of its own plus the node's own circuit listeners, the retry list by the candidates.
#[derive(Debug)]
pub(crate) struct AutoRelay {
    mode: ReachabilityMode,
    nat: Reachability,
    want: usize,
    candidates: HashMap<PeerId, Candidate>,
    next_order: u64,
    reservations: HashMap<ListenerId, Reservation>,
    retry: HashMap<PeerId, Instant>,
}

impl AutoRelay {
    pub(crate) fn new(mode: ReachabilityMode, want: usize) -> Self {
        Self {
            mode,
            nat: Reachability::Unknown,
            want,
            candidates: HashMap::new(),
            next_order: 0,
            reservations: HashMap::new(),
            retry: HashMap::new(),
        }
    }

    /// Whether the node is reachable from outside, as configured or as AutoNAT says.
    pub(crate) fn reachability(&self) -> Reachability {
        match self.mode {
            ReachabilityMode::Auto => self.nat,
            ReachabilityMode::Public => Reachability::Public,
            ReachabilityMode::Private => Reachability::Private,
        }
    }

    /// AutoNAT's verdict changed.
    pub(crate) fn nat_status(&mut self, status: Reachability) {
        self.nat = status;
    }

    /// A directly connected peer supports the hop protocol; `addrs` are where it is reached
    /// (the address dialed first). Ignored without an address, and beyond [`MAX_CANDIDATES`].
    pub(crate) fn relay_found(&mut self, relay: PeerId, addrs: Vec<Multiaddr>) {
        let addrs: Vec<Multiaddr> = addrs
            .into_iter()
            .filter(|a| !is_circuit(a))
            .map(|mut a| {
                if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
                    a.pop();
                }
                a
            })
            .fold(Vec::new(), |mut v, a| {
                if !v.contains(&a) && v.len() < ADDRS_PER_CANDIDATE {
                    v.push(a);
                }
                v
            });
        if addrs.is_empty() {
            return;
        }
        if let Some(c) = self.candidates.get_mut(&relay) {
            c.addrs = addrs;
            return;
        }
        if self.candidates.len() >= MAX_CANDIDATES {
            return;
        }
        self.candidates.insert(relay, Candidate { addrs, order: self.next_order });
        self.next_order += 1;
    }

    /// The node has no direct connection to `relay` any more: it is no candidate, and its
    /// reservations are gone (their listeners are released, if still open).
    pub(crate) fn relay_gone(&mut self, relay: &PeerId, now: Instant) -> Vec<Action> {
        self.candidates.remove(relay);
        let lost: Vec<ListenerId> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.relay == *relay)
            .map(|(id, _)| *id)
            .collect();
        let mut actions = Vec::new();
        for listener in lost {
            if let Some(r) = self.reservations.remove(&listener) {
                self.cool_down(r.relay, now);
                actions.push(Action::Release { listener });
            }
        }
        actions
    }

    /// The service listens on the circuit [`Action::Reserve`] asked for.
    pub(crate) fn listening(&mut self, relay: PeerId, listener: ListenerId) {
        self.reservations.insert(listener, Reservation { relay, auto: true, addrs: Vec::new() });
    }

    /// The node itself opened a circuit listener on `relay` (configured relays).
    pub(crate) fn own_listener(&mut self, relay: PeerId, listener: ListenerId) {
        self.reservations.insert(listener, Reservation { relay, auto: false, addrs: Vec::new() });
    }

    /// Listening on the circuit failed at once.
    pub(crate) fn reserve_failed(&mut self, relay: PeerId, now: Instant) {
        self.cool_down(relay, now);
    }

    /// A listener got an address; a circuit address means the relay accepted the reservation.
    pub(crate) fn listen_addr(&mut self, listener: ListenerId, addr: &Multiaddr) {
        if !is_circuit(addr) {
            return;
        }
        match self.reservations.get_mut(&listener) {
            Some(r) => {
                if !r.addrs.contains(addr) {
                    r.addrs.push(addr.clone());
                }
            }
            // A circuit listener opened before the service saw it (only through commands,
            // which report it first; kept for safety).
            None => {
                if let Some(relay) = relay_of(addr) {
                    self.reservations.insert(
                        listener,
                        Reservation { relay, auto: false, addrs: vec![addr.clone()] },
                    );
                }
            }
        }
    }

    /// A listener closed (the reservation was refused, expired or its connection ended).
    pub(crate) fn listener_closed(&mut self, listener: ListenerId, now: Instant) {
        if let Some(r) = self.reservations.remove(&listener) {
            self.cool_down(r.relay, now);
        }
    }

    /// The circuit addresses of the reservations the relays accepted.
    pub(crate) fn reserved_addrs(&self) -> Vec<Multiaddr> {
        let mut addrs: Vec<Multiaddr> =
            self.reservations.values().flat_map(|r| r.addrs.iter().cloned()).collect();
        addrs.sort();
        addrs
    }

    /// What to do now: reserve on candidates while private and short of `want`; release this
    /// machine's reservations once public.
    pub(crate) fn poll(&mut self, now: Instant) -> Vec<Action> {
        self.retry.retain(|_, until| *until > now);
        match self.reachability() {
            Reachability::Public => {
                let ours: Vec<ListenerId> =
                    self.reservations.iter().filter(|(_, r)| r.auto).map(|(id, _)| *id).collect();
                ours.into_iter()
                    .filter_map(|listener| {
                        self.reservations.remove(&listener).map(|_| Action::Release { listener })
                    })
                    .collect()
            }
            Reachability::Unknown => Vec::new(),
            Reachability::Private => {
                let held = self.reservations.len();
                if held >= self.want {
                    return Vec::new();
                }
                let used: HashSet<PeerId> = self.reservations.values().map(|r| r.relay).collect();
                let mut free: Vec<(&PeerId, &Candidate)> = self
                    .candidates
                    .iter()
                    .filter(|(p, _)| !used.contains(p) && !self.retry.contains_key(p))
                    .collect();
                free.sort_by_key(|(_, c)| c.order);
                free.into_iter()
                    .take(self.want - held)
                    .filter_map(|(relay, c)| {
                        Some(Action::Reserve { relay: *relay, addr: c.addrs.first()?.clone() })
                    })
                    .collect()
            }
        }
    }

    fn cool_down(&mut self, relay: PeerId, now: Instant) {
        if self.retry.len() >= MAX_CANDIDATES
            && !self.retry.contains_key(&relay)
            && let Some(oldest) = self.retry.iter().min_by_key(|(_, t)| **t).map(|(p, _)| *p)
        {
            self.retry.remove(&oldest);
        }
        self.retry.insert(relay, now + RETRY_AFTER);
    }
}

/// Whether `addr` goes through a relay.
pub(crate) fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// The relay of a circuit address: the `/p2p/<id>` before `/p2p-circuit`.
pub(crate) fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut relay = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(id) => relay = Some(id),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    fn circuit(relay_addr: &Multiaddr, relay: PeerId, me: PeerId) -> Multiaddr {
        relay_addr
            .clone()
            .with(Protocol::P2p(relay))
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(me))
    }

    fn reserves(actions: &[Action]) -> Vec<PeerId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Reserve { relay, .. } => Some(*relay),
                Action::Release { .. } => None,
            })
            .collect()
    }

    /// Carries out the reserve actions as the service would; returns the listeners.
    fn apply(ar: &mut AutoRelay, actions: &[Action]) -> Vec<(PeerId, ListenerId)> {
        let mut out = Vec::new();
        for a in actions {
            if let Action::Reserve { relay, .. } = a {
                let id = ListenerId::next();
                ar.listening(*relay, id);
                out.push((*relay, id));
            }
        }
        out
    }

    #[test]
    fn a_private_node_reserves_on_the_first_relays_found_up_to_the_cap() {
        let now = Instant::now();
        let mut ar = AutoRelay::new(ReachabilityMode::Private, 2);
        let relays: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        for (i, r) in relays.iter().enumerate() {
            ar.relay_found(*r, vec![addr(1000 + i as u16).with(Protocol::P2p(*r))]);
        }
        let actions = ar.poll(now);
        assert_eq!(reserves(&actions), relays[..2]);
        // The relay's address without its /p2p suffix: the service appends /p2p/<relay>.
        assert_eq!(actions[0], Action::Reserve { relay: relays[0], addr: addr(1000) });
        let held = apply(&mut ar, &actions);
        // At the cap: nothing more, also once the relays accepted.
        assert!(ar.poll(now).is_empty());
        let me = PeerId::random();
        let c = circuit(&addr(1000), relays[0], me);
        ar.listen_addr(held[0].1, &c);
        assert_eq!(ar.reserved_addrs(), vec![c]);
        assert!(ar.poll(now).is_empty());
    }

    #[test]
    fn a_lost_reservation_is_replaced_by_another_candidate() {
        let now = Instant::now();
        let mut ar = AutoRelay::new(ReachabilityMode::Private, 1);
        let (r1, r2) = (PeerId::random(), PeerId::random());
        ar.relay_found(r1, vec![addr(1)]);
        ar.relay_found(r2, vec![addr(2)]);
        let actions = ar.poll(now);
        let held = apply(&mut ar, &actions);
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].0, r1);
        // The listener closes (refused, expired): R2 replaces R1, which waits.
        ar.listener_closed(held[0].1, now);
        let actions = ar.poll(now);
        assert_eq!(reserves(&actions), vec![r2]);
        let held = apply(&mut ar, &actions);
        // R2 disconnects: its listener is released, and R1 is passed over until its wait ends.
        let actions = ar.relay_gone(&r2, now);
        assert_eq!(actions, vec![Action::Release { listener: held[0].1 }]);
        assert!(ar.poll(now).is_empty());
        assert_eq!(reserves(&ar.poll(now + RETRY_AFTER)), vec![r1]);
    }

    #[test]
    fn no_candidates_no_reservations_and_relays_need_an_address() {
        let now = Instant::now();
        let mut ar = AutoRelay::new(ReachabilityMode::Private, 2);
        assert!(ar.poll(now).is_empty());
        // Only a circuit address: not usable as a relay address.
        let r = PeerId::random();
        ar.relay_found(r, vec![circuit(&addr(1), PeerId::random(), r)]);
        assert!(ar.poll(now).is_empty());
        // The candidate set is capped.
        for i in 0..(MAX_CANDIDATES + 10) {
            ar.relay_found(PeerId::random(), vec![addr(i as u16)]);
        }
        assert_eq!(ar.candidates.len(), MAX_CANDIDATES);
    }

    #[test]
    fn public_or_unknown_nodes_do_not_reserve_and_public_releases_its_own() {
        let now = Instant::now();
        let r = PeerId::random();
        let mut public = AutoRelay::new(ReachabilityMode::Public, 2);
        public.relay_found(r, vec![addr(1)]);
        assert!(public.poll(now).is_empty());
        assert_eq!(public.reachability(), Reachability::Public);

        let mut auto = AutoRelay::new(ReachabilityMode::Auto, 2);
        auto.relay_found(r, vec![addr(1)]);
        assert_eq!(auto.reachability(), Reachability::Unknown);
        assert!(auto.poll(now).is_empty());
        auto.nat_status(Reachability::Private);
        let actions = auto.poll(now);
        let held = apply(&mut auto, &actions);
        // A configured relay's listener counts toward the cap and stays when public.
        let own = ListenerId::next();
        auto.own_listener(PeerId::random(), own);
        auto.nat_status(Reachability::Public);
        assert_eq!(auto.poll(now), vec![Action::Release { listener: held[0].1 }]);
        assert!(auto.reservations.contains_key(&own));
    }

    #[test]
    fn configured_relays_count_and_are_not_chosen_twice() {
        let now = Instant::now();
        let mut ar = AutoRelay::new(ReachabilityMode::Private, 2);
        let (r1, r2) = (PeerId::random(), PeerId::random());
        ar.own_listener(r1, ListenerId::next());
        ar.relay_found(r1, vec![addr(1)]);
        ar.relay_found(r2, vec![addr(2)]);
        assert_eq!(reserves(&ar.poll(now)), vec![r2]);
        assert_eq!(relay_of(&circuit(&addr(1), r1, r2)), Some(r1));
        assert_eq!(relay_of(&addr(1)), None);
    }
}
