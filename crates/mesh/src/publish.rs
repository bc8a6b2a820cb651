//! This node's own capabilities: publish (sign an advert, store it, gossip `AdvertiseCapability`,
//! announce a provider record), refresh well before expiry, and retire.

use std::time::Duration;

use capmesh_store::{Item, Outcome, Query};
use capmesh_types::Cid;
use capmesh_wire::{
    Advert, AdvertiseCapability, Body, CallLimits, Contract, Envelope, Filter, Price, Retire,
    Retirement, Signed,
};

use crate::{Mesh, MeshError, kad_key, lock, now_ms};

/// The terms this node publishes a capability on.
#[derive(Debug, Clone)]
pub(crate) struct Own {
    contract: Contract,
    price: Price,
    limits: CallLimits,
    ttl: Duration,
    seq: u64,
}

/// A published advert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub capability: Cid,
    pub advert_id: Cid,
    pub seq: u64,
    pub expires: u64,
}

/// A stored and gossiped retirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    pub capability: Cid,
    pub retirement_id: Cid,
    pub seq: u64,
}

/// Defaults of an advert published without terms.
pub fn default_limits() -> CallLimits {
    CallLimits { timeout_ms: 30_000, max_input_bytes: 1 << 20, concurrency: 8 }
}

impl Mesh {
    /// Publishes `contract` on these terms (defaults: free, [`default_limits`], the configured
    /// advert lifetime). Returns once the advert is in this node's replica and handed to gossip;
    /// the provider record is announced in the background.
    pub async fn publish(
        &self,
        contract: Contract,
        price: Option<Price>,
        limits: Option<CallLimits>,
        ttl: Option<Duration>,
    ) -> Result<Published, MeshError> {
        let capability = capmesh_contract::check(&contract)?;
        let own = Own {
            contract,
            price: price.unwrap_or(Price { amount: 0, unit: "free".into() }),
            limits: limits.unwrap_or_else(default_limits),
            ttl: ttl.unwrap_or(self.inner.config.advert_ttl).min(Duration::from_secs(30 * 86400)),
            seq: 0,
        };
        self.advertise(capability, own).await
    }

    /// Signs and spreads a new advert (seq above any earlier one) for `capability`.
    async fn advertise(&self, capability: Cid, mut own: Own) -> Result<Published, MeshError> {
        let now = now_ms();
        own.seq = self.next_seq(&capability, own.seq);
        let addrs = self.announced_addrs().await;
        let advert = Advert {
            capability,
            provider: self.inner.me,
            addrs,
            price: own.price.clone(),
            limits: own.limits.clone(),
            attestations: Vec::new(),
            seq: own.seq,
            issued: now,
            expires: now + own.ttl.as_millis() as u64,
        };
        let signed = Signed::sign(&self.inner.key, &advert)?;
        let advert_id = signed.id();
        let item = Item::Advert { advert: signed.clone(), contract: own.contract.clone() };
        match self.insert(item).await? {
            Outcome::Stored { .. } | Outcome::Duplicate { .. } => {}
        }
        let body = AdvertiseCapability { advert: signed, contract: own.contract.clone() };
        self.gossip(body).await?;
        let published = Published { capability, advert_id, seq: own.seq, expires: advert.expires };
        lock(&self.inner.published).insert(capability, own);
        let net = self.inner.net.clone();
        self.spawn_owned(async move {
            // "Sent to n peers" is not proof of storage; finds from other nodes are.
            match net.start_providing(kad_key(&capability)).await {
                Ok(n) => tracing::debug!(%capability, peers = n, "provider record sent"),
                Err(e) => tracing::warn!(%capability, error = %e, "provider record not announced"),
            }
        });
        Ok(published)
    }

    /// Retires `capability`: a signed Retirement (seq above the advert's) stored, gossiped, and
    /// the provider record no longer announced.
    pub async fn retire(&self, capability: Cid) -> Result<Retired, MeshError> {
        let own = lock(&self.inner.published).remove(&capability);
        let Some(own) = own else { return Err(MeshError::NotPublished(capability)) };
        let seq = self.next_seq(&capability, own.seq);
        let retirement = Retirement { provider: self.inner.me, capability, seq, issued: now_ms() };
        let signed = Signed::sign(&self.inner.key, &retirement)?;
        let retirement_id = signed.id();
        if let Err(e) = self.insert(Item::Retirement(signed.clone())).await {
            lock(&self.inner.published).insert(capability, own);
            return Err(e.into());
        }
        self.gossip(Retire { retirement: signed }).await?;
        self.inner.net.stop_providing(kad_key(&capability)).await?;
        Ok(Retired { capability, retirement_id, seq })
    }

    /// Capabilities this node currently publishes.
    pub fn published(&self) -> Vec<Cid> {
        let mut caps: Vec<Cid> = lock(&self.inner.published).keys().copied().collect();
        caps.sort();
        caps
    }

    pub(crate) async fn gossip(&self, body: impl Into<Body>) -> Result<(), MeshError> {
        let envelope = Envelope::builder(body)
            .ttl_ms(self.inner.config.envelope_ttl_ms)
            .sign(&self.inner.key, now_ms())?;
        self.inner.net.publish(envelope.to_bytes()).await?;
        Ok(())
    }

    /// Sequence numbers are unix ms, kept above the last one used: monotonic across restarts
    /// without storing a counter (a clock set back is covered by `max`).
    fn next_seq(&self, _cap: &Cid, last: u64) -> u64 {
        now_ms().max(last + 1)
    }

    /// Addresses put in adverts: confirmed external addresses, else listen addresses.
    async fn announced_addrs(&self) -> Vec<String> {
        match self.inner.net.info().await {
            Ok(info) => {
                let addrs = if info.external_addrs.is_empty() {
                    info.listen_addrs
                } else {
                    info.external_addrs
                };
                addrs.iter().take(8).map(|a| a.to_string()).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Picks up adverts this node signed before a restart that are still live, so they keep
    /// being refreshed (the replica is where published capabilities persist).
    pub(crate) fn resume_published(&self) -> Result<(), MeshError> {
        let store = &self.inner.store;
        let limits = self.inner.config.rules.limits;
        let mut cursor = None;
        loop {
            let q = Query {
                filter: Filter { provider: Some(self.inner.me), ..Filter::default() },
                limit: 1000,
                cursor,
                ..Query::default()
            };
            let page = store.query(&q, now_ms())?;
            for hit in &page.hits {
                let Some((_, bytes)) = store.record(&hit.id)? else { continue };
                let Ok(advert) =
                    Signed::<Advert>::from_bytes(&bytes, limits).and_then(|s| s.decode(limits))
                else {
                    continue;
                };
                let Some(contract) = store.contract(&advert.capability)? else { continue };
                let ttl = Duration::from_millis(advert.expires.saturating_sub(advert.issued));
                lock(&self.inner.published).insert(
                    advert.capability,
                    Own {
                        contract,
                        price: advert.price,
                        limits: advert.limits,
                        ttl,
                        seq: advert.seq,
                    },
                );
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// Re-advertises every published capability now (new seq and expiry, gossip, provider
    /// record). Used by the refresh loop and after the node's addresses change.
    pub async fn republish(&self) -> usize {
        let own: Vec<(Cid, Own)> =
            lock(&self.inner.published).iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut done = 0;
        for (cap, own) in own {
            match self.advertise(cap, own).await {
                Ok(_) => done += 1,
                Err(e) => tracing::warn!(capability = %cap, error = %e, "refresh failed"),
            }
        }
        done
    }
}

/// How long the node's addresses must stay unchanged before its adverts are republished with
/// them (a relay reservation confirms one address, then more may follow).
const ADDRS_SETTLE: Duration = Duration::from_secs(1);

pub(crate) async fn refresh_loop(mesh: Mesh) {
    let every = mesh.inner.config.republish_every.max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    // Adverts name the node's addresses: when they change (a relay reservation, a confirmed
    // external address), callers must learn the new ones before the next refresh.
    let mut addrs = mesh.net().external_addrs();
    addrs.borrow_and_update();
    loop {
        tokio::select! {
            _ = mesh.inner.cancel.cancelled() => return,
            _ = tick.tick() => {
                let n = mesh.republish().await;
                tracing::debug!(refreshed = n, "adverts refreshed");
            }
            Ok(()) = addrs.changed() => {
                loop {
                    tokio::select! {
                        _ = mesh.inner.cancel.cancelled() => return,
                        changed = tokio::time::timeout(ADDRS_SETTLE, addrs.changed()) => {
                            if !matches!(changed, Ok(Ok(()))) {
                                break; // settled (or the network service stopped)
                            }
                        }
                    }
                }
                let n = mesh.republish().await;
                tracing::debug!(republished = n, "the node's addresses changed: adverts republished");
                tick.reset();
            }
        }
    }
}
