//! Offers on both sides: the provider's book of offers it issued (checked on `TaskStart`) and
//! the caller's standing offers (reused, so a warm call is one round trip). Both bounded.

use std::collections::HashMap;

use capmesh_mesh::Multiaddr;
use capmesh_types::{Cid, PeerId};
use capmesh_wire::{Offer, Price};

/// An offer this node issued.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub caller: PeerId,
    pub capability: Cid,
    pub price: Price,
    pub calls_left: u32,
    pub expires: u64,
}

/// Why an offer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OfferProblem {
    /// Unknown, or issued to someone else or for another capability (`NotFound`).
    Unknown,
    /// Expired or used up (`OfferExpired`).
    Spent,
}

/// The provider's issued offers, by offer id (the id of the envelope that carried it).
#[derive(Debug)]
pub(crate) struct Book {
    offers: HashMap<Cid, Issued>,
    cap: usize,
}

impl Book {
    pub(crate) fn new(cap: usize) -> Self {
        Self { offers: HashMap::new(), cap: cap.max(1) }
    }

    /// Records an offer; when full, expired and used-up offers go first, then the one that
    /// expires soonest. Returns how many were evicted.
    pub(crate) fn insert(&mut self, id: Cid, offer: Issued, now: u64) -> usize {
        let mut evicted = 0;
        if self.offers.len() >= self.cap {
            let before = self.offers.len();
            self.offers.retain(|_, o| o.expires >= now && o.calls_left > 0);
            evicted += before - self.offers.len();
        }
        if self.offers.len() >= self.cap
            && let Some(oldest) = self.offers.iter().min_by_key(|(_, o)| o.expires).map(|(k, _)| *k)
        {
            self.offers.remove(&oldest);
            evicted += 1;
        }
        self.offers.insert(id, offer);
        evicted
    }

    /// Takes one call from offer `id` for `caller` and `capability`; returns its price.
    pub(crate) fn take(
        &mut self,
        id: &Cid,
        caller: &PeerId,
        capability: &Cid,
        now: u64,
    ) -> Result<Price, OfferProblem> {
        let offer = self.offers.get_mut(id).ok_or(OfferProblem::Unknown)?;
        if offer.caller != *caller || offer.capability != *capability {
            return Err(OfferProblem::Unknown);
        }
        if offer.expires < now || offer.calls_left == 0 {
            self.offers.remove(id);
            return Err(OfferProblem::Spent);
        }
        offer.calls_left -= 1;
        Ok(offer.price.clone())
    }

    /// Gives back a call taken by [`Book::take`] for a start that was refused afterwards.
    pub(crate) fn give_back(&mut self, id: &Cid) {
        if let Some(o) = self.offers.get_mut(id) {
            o.calls_left = o.calls_left.saturating_add(1);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.offers.len()
    }

    /// Whether offer `id` was issued to `caller`.
    pub(crate) fn issued_to(&self, id: &Cid, caller: &PeerId) -> bool {
        self.offers.get(id).is_some_and(|o| o.caller == *caller)
    }
}

/// An offer the caller holds.
#[derive(Debug, Clone)]
pub(crate) struct Standing {
    pub provider: PeerId,
    pub addrs: Vec<Multiaddr>,
    pub offer_id: Cid,
    pub offer: Offer,
    pub calls_left: u32,
}

/// The caller's standing offers per capability.
#[derive(Debug)]
pub(crate) struct Held {
    by_cap: HashMap<Cid, Vec<Standing>>,
    len: usize,
    cap: usize,
}

impl Held {
    pub(crate) fn new(cap: usize) -> Self {
        Self { by_cap: HashMap::new(), len: 0, cap: cap.max(1) }
    }

    /// Usable offers for `capability` (unexpired, calls left), after dropping spent ones.
    pub(crate) fn usable(&mut self, capability: &Cid, now: u64) -> Vec<Standing> {
        let Some(list) = self.by_cap.get_mut(capability) else { return Vec::new() };
        let before = list.len();
        list.retain(|s| s.offer.expires > now && s.calls_left > 0);
        self.len -= before - list.len();
        let usable = list.clone();
        if usable.is_empty() {
            self.by_cap.remove(capability);
        }
        usable
    }

    /// Keeps `standing`, replacing an earlier offer from the same provider for the same
    /// capability. When full, a capability's list is dropped whole (its offers can be asked
    /// for again).
    pub(crate) fn keep(&mut self, standing: Standing) {
        let cap = standing.offer.capability;
        if self.len >= self.cap
            && !self.by_cap.contains_key(&cap)
            && let Some(victim) = self.by_cap.keys().next().copied()
            && let Some(list) = self.by_cap.remove(&victim)
        {
            self.len -= list.len();
        }
        let list = self.by_cap.entry(cap).or_default();
        if let Some(at) = list.iter().position(|s| s.provider == standing.provider) {
            list[at] = standing;
        } else {
            list.push(standing);
            self.len += 1;
        }
    }

    /// One call spent under `offer_id`.
    pub(crate) fn spend(&mut self, capability: &Cid, offer_id: &Cid) {
        if let Some(s) = self
            .by_cap
            .get_mut(capability)
            .and_then(|l| l.iter_mut().find(|s| s.offer_id == *offer_id))
        {
            s.calls_left = s.calls_left.saturating_sub(1);
        }
    }

    /// Forgets an offer the provider no longer honours.
    pub(crate) fn forget(&mut self, capability: &Cid, offer_id: &Cid) {
        if let Some(list) = self.by_cap.get_mut(capability) {
            let before = list.len();
            list.retain(|s| s.offer_id != *offer_id);
            self.len -= before - list.len();
            if list.is_empty() {
                self.by_cap.remove(capability);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use capmesh_types::{Codec, NodeKey};

    use super::*;

    fn cid(b: &[u8]) -> Cid {
        Cid::of(Codec::Raw, b)
    }

    fn issued(caller: PeerId, calls_left: u32, expires: u64) -> Issued {
        Issued {
            caller,
            capability: cid(b"cap"),
            price: Price { amount: 3, unit: "credit".into() },
            calls_left,
            expires,
        }
    }

    #[test]
    fn an_offer_serves_its_caller_its_calls_and_no_longer() {
        let me = NodeKey::from_seed([1; 32]).peer_id();
        let other = NodeKey::from_seed([2; 32]).peer_id();
        let mut book = Book::new(8);
        book.insert(cid(b"o1"), issued(me, 2, 100), 0);
        assert_eq!(book.take(&cid(b"o1"), &other, &cid(b"cap"), 0), Err(OfferProblem::Unknown));
        assert_eq!(book.take(&cid(b"o1"), &me, &cid(b"other"), 0), Err(OfferProblem::Unknown));
        assert!(book.take(&cid(b"o1"), &me, &cid(b"cap"), 0).is_ok());
        assert!(book.take(&cid(b"o1"), &me, &cid(b"cap"), 0).is_ok());
        assert_eq!(book.take(&cid(b"o1"), &me, &cid(b"cap"), 0), Err(OfferProblem::Spent));
        book.insert(cid(b"o2"), issued(me, 5, 100), 0);
        assert_eq!(book.take(&cid(b"o2"), &me, &cid(b"cap"), 101), Err(OfferProblem::Spent));
    }

    #[test]
    fn the_book_is_bounded_and_evicts_spent_offers_first() {
        let me = NodeKey::from_seed([1; 32]).peer_id();
        let mut book = Book::new(2);
        book.insert(cid(b"a"), issued(me, 0, 100), 0);
        book.insert(cid(b"b"), issued(me, 1, 50), 0);
        assert_eq!(book.insert(cid(b"c"), issued(me, 1, 100), 0), 1);
        assert!(book.take(&cid(b"b"), &me, &cid(b"cap"), 0).is_ok());
        assert_eq!(book.insert(cid(b"d"), issued(me, 1, 100), 0), 1);
        assert_eq!(book.len(), 2);
    }
}
