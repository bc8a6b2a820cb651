//! Choosing among offers: a weighted score over price, expected latency and the caller's own
//! record of each provider (DESIGN §5 step 3, `select.optimize`).

use std::{collections::HashMap, str::FromStr};

use capmesh_types::PeerId;
use capmesh_wire::Offer;

/// `select.optimize` weights. Each is ≥ 0; they need not sum to 1 (only their ratios matter).
/// Default: price 0.4, latency 0.4, reputation 0.2.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub price: f64,
    pub latency: f64,
    pub reputation: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self { price: 0.4, latency: 0.4, reputation: 0.2 }
    }
}

/// A malformed `--optimize` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad weights {input:?}: {reason} (expected e.g. price=0.5,latency=0.3,reputation=0.2)")]
pub struct WeightsError {
    input: String,
    reason: String,
}

impl FromStr for Weights {
    type Err = WeightsError;

    /// `price=0.5,latency=0.5`: named weights; those not named are 0.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| WeightsError { input: s.to_string(), reason };
        let mut w = Weights { price: 0.0, latency: 0.0, reputation: 0.0 };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) =
                part.split_once('=').ok_or_else(|| bad(format!("{part:?} is not name=value")))?;
            let value: f64 =
                value.trim().parse().map_err(|_| bad(format!("{value:?} is not a number")))?;
            if !value.is_finite() || value < 0.0 {
                return Err(bad(format!("{name} must be a finite number ≥ 0")));
            }
            match name.trim() {
                "price" => w.price = value,
                "latency" => w.latency = value,
                "reputation" => w.reputation = value,
                other => return Err(bad(format!("unknown weight {other:?}"))),
            }
        }
        if w.price + w.latency + w.reputation == 0.0 {
            return Err(bad("at least one weight must be above 0".into()));
        }
        Ok(w)
    }
}

/// What the caller's own receipts say about a provider: calls that ended well and badly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record {
    pub ok: u32,
    pub bad: u32,
}

impl Record {
    /// Laplace-smoothed success rate: 0.5 for a stranger.
    pub fn rate(&self) -> f64 {
        (f64::from(self.ok) + 1.0) / (f64::from(self.ok) + f64::from(self.bad) + 2.0)
    }
}

/// Orders `offers` best first. Price and latency are normalised by the largest among the
/// offers (per price unit, since units do not compare), reputation enters as 1 − rate; the
/// weighted sum is a cost. Ties go to the lower price, then the lower latency, then the
/// smaller PeerId, so the order is deterministic.
pub(crate) fn rank<T>(
    offers: &mut [T],
    weights: &Weights,
    reputation: &HashMap<PeerId, Record>,
    view: impl Fn(&T) -> (&PeerId, &Offer),
) {
    let mut max_price: HashMap<String, u64> = HashMap::new();
    let mut max_latency = 0u64;
    for o in offers.iter() {
        let (_, offer) = view(o);
        let m = max_price.entry(offer.price.unit.clone()).or_default();
        *m = (*m).max(offer.price.amount);
        max_latency = max_latency.max(offer.latency_ms);
    }
    let cost = |peer: &PeerId, offer: &Offer| -> f64 {
        let top = max_price.get(&offer.price.unit).copied().unwrap_or(0);
        let price = if top == 0 { 0.0 } else { offer.price.amount as f64 / top as f64 };
        let latency =
            if max_latency == 0 { 0.0 } else { offer.latency_ms as f64 / max_latency as f64 };
        let rep = 1.0 - reputation.get(peer).copied().unwrap_or_default().rate();
        weights.price * price + weights.latency * latency + weights.reputation * rep
    };
    offers.sort_by(|a, b| {
        let (pa, oa) = view(a);
        let (pb, ob) = view(b);
        cost(pa, oa)
            .total_cmp(&cost(pb, ob))
            .then(oa.price.amount.cmp(&ob.price.amount))
            .then(oa.latency_ms.cmp(&ob.latency_ms))
            .then(pa.cmp(pb))
    });
}

#[cfg(test)]
mod tests {
    use capmesh_types::{Cid, Codec, NodeKey};
    use capmesh_wire::Price;

    use super::*;

    fn offer(amount: u64, latency_ms: u64) -> Offer {
        Offer {
            capability: Cid::of(Codec::Raw, b"cap"),
            price: Price { amount, unit: "credit".into() },
            latency_ms,
            calls: 1,
            expires: 0,
        }
    }

    fn peer(seed: u8) -> PeerId {
        NodeKey::from_seed([seed; 32]).peer_id()
    }

    #[test]
    fn weights_decide_between_cheap_and_fast() {
        let (cheap, fast) = (peer(1), peer(2));
        let base = vec![(cheap, offer(1, 2000)), (fast, offer(10, 100))];
        let rep = HashMap::new();
        let mut by_price = base.clone();
        rank(&mut by_price, &"price=1".parse().unwrap(), &rep, |(p, o)| (p, o));
        assert_eq!(by_price[0].0, cheap);
        let mut by_latency = base.clone();
        rank(&mut by_latency, &"latency=1".parse().unwrap(), &rep, |(p, o)| (p, o));
        assert_eq!(by_latency[0].0, fast);
    }

    #[test]
    fn reputation_breaks_an_even_race() {
        let (good, bad) = (peer(1), peer(2));
        let mut offers = vec![(bad, offer(5, 100)), (good, offer(5, 100))];
        let rep =
            HashMap::from([(good, Record { ok: 9, bad: 0 }), (bad, Record { ok: 1, bad: 8 })]);
        rank(&mut offers, &Weights::default(), &rep, |(p, o)| (p, o));
        assert_eq!(offers[0].0, good);
    }

    #[test]
    fn weights_parse_and_refuse() {
        let w: Weights = "price=0.5, latency=0.5".parse().unwrap();
        assert_eq!(w, Weights { price: 0.5, latency: 0.5, reputation: 0.0 });
        assert!("price=-1".parse::<Weights>().is_err());
        assert!("speed=1".parse::<Weights>().is_err());
        assert!("price=0".parse::<Weights>().is_err());
        assert!("price".parse::<Weights>().is_err());
    }
}
