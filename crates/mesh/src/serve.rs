//! What this node answers: gossip verdicts and the rpc requests of the registry protocol.

use capmesh_net::{Handler, Verdict};
use capmesh_store::{Item, Outcome, StoreError};
use capmesh_types::PeerId;
use capmesh_wire::{Body, Carrier, Code, Envelope, Opened, VerifyError};

use crate::{Mesh, error_body, now_ms};

impl Handler for Mesh {
    async fn request(&self, peer: PeerId, request: Vec<u8>) -> Option<Vec<u8>> {
        let opened = self.accept(&request);
        let opened = match opened {
            Ok(o) if o.payload.sender() == peer => o,
            Ok(o) => {
                // The connection's peer must be the signer: no relaying of others' requests.
                self.bump(|s| s.refused_requests += 1);
                let body = error_body(
                    Code::Misaddressed,
                    "the envelope's signer is not the connected peer",
                    false,
                );
                return self.answer(&o, body);
            }
            Err(e) => {
                self.bump(|s| s.refused_requests += 1);
                tracing::debug!(%peer, error = %e, "rpc request refused");
                // Refused but still addressable (expired, replayed, misaddressed …): answer
                // with the code. Without a verified sender there is nobody to address an Error
                // envelope to: reset the stream (protocol.md §7.2, §8.7).
                let sender = addressable(&request, self.inner.config.rules.limits)?;
                if sender.payload.sender() != peer {
                    return None;
                }
                return self.answer(
                    &sender,
                    error_body(Code::parse(e.code()), e.to_string(), e.retryable()),
                );
            }
        };
        let answer = match &opened.payload.body {
            // Replica reads (up to thousands of records for a Sync) stay off the async workers.
            Body::Discover(d) => {
                self.bump(|s| s.discover_served += 1);
                let (mesh, d) = (self.clone(), d.clone());
                blocking(move || mesh.serve_discover(&d).map(Body::from)).await
            }
            Body::Sync(s) => {
                self.bump(|st| st.sync_served += 1);
                let (mesh, s) = (self.clone(), s.clone());
                blocking(move || mesh.serve_sync(&s).map(Body::from)).await
            }
            Body::AdvertiseCapability(_) | Body::Retire(_) | Body::Attest(_) => {
                let item = item_of(&opened.payload.body).expect("a gossip kind");
                return match self.insert(item).await {
                    Ok(_) => Some(Vec::new()),
                    Err(e) => self
                        .answer(&opened, error_body(Code::parse(e.code()), e.to_string(), false)),
                };
            }
            other if crate::calls::answer_only(other.kind()) => Err(error_body(
                Code::InvalidObject,
                format!("{:?} is an answer, not a request", other.kind()),
                false,
            )),
            other => match self.calls() {
                Some(calls) if crate::calls::call_kind(other.kind()) => {
                    match calls.serve(peer, opened.clone()).await {
                        Ok(crate::Served::Ack) => return Some(Vec::new()),
                        Ok(crate::Served::Signed(envelope)) => return Some(envelope.to_bytes()),
                        Ok(crate::Served::Answer(body)) => Ok(body),
                        Err(e) => Err(e),
                    }
                }
                _ => Err(error_body(
                    Code::NotFound,
                    format!("this node does not serve {:?} requests", other.kind()),
                    false,
                )),
            },
        };
        match answer {
            Ok(body) => self.answer(&opened, body),
            Err(error) => self.answer(&opened, error),
        }
    }

    async fn gossip(&self, source: PeerId, data: Vec<u8>) -> Verdict {
        let now = now_ms();
        let opened = Envelope::from_bytes(&data, self.inner.config.rules.limits)
            .and_then(|e| e.open(now, &self.inner.config.rules));
        let opened = match opened {
            Ok(o) => o,
            Err(e) => return verdict_of_verify(&e, &source),
        };
        if opened.payload.to.is_some() || opened.payload.kind().carrier() != Carrier::Gossip {
            tracing::debug!(%source, kind = ?opened.payload.kind(), "not a gossip message");
            return Verdict::Reject;
        }
        let Some(item) = item_of(&opened.payload.body) else { return Verdict::Reject };
        match self.insert(item).await {
            Ok(Outcome::Stored { .. }) => Verdict::Accept,
            // Already here: forwarding it again helps nobody.
            Ok(Outcome::Duplicate { .. }) => Verdict::Ignore,
            Err(e) => {
                tracing::debug!(%source, error = %e, "gossip refused");
                match e {
                    StoreError::Verify(v) => verdict_of_verify(&v, &source),
                    StoreError::Stale { .. }
                    | StoreError::SignerCap { .. }
                    | StoreError::TotalCap { .. } => Verdict::Ignore,
                    StoreError::Contract(_) => Verdict::Reject,
                    // Our own trouble (disk, shutdown): not the sender's fault.
                    _ => Verdict::Ignore,
                }
            }
        }
    }

    fn connected(&self, peer: PeerId) {
        if self.inner.config.sync && self.inner.sync_tx.try_send(peer).is_err() {
            self.bump(|s| s.sync_dropped += 1);
        }
    }
}

/// Runs replica work on the blocking pool; a panic there is an `Internal` error.
async fn blocking(
    f: impl FnOnce() -> Result<Body, capmesh_wire::ErrorBody> + Send + 'static,
) -> Result<Body, capmesh_wire::ErrorBody> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(error_body(Code::Internal, e.to_string(), true)))
}

/// The request as far as it can be trusted after a refusal: decoded, and signed by its `from`.
fn addressable(bytes: &[u8], limits: capmesh_wire::cbor::Limits) -> Option<Opened> {
    let envelope = Envelope::from_bytes(bytes, limits).ok()?;
    // The payload's shape without the body rules (protocol.md §8.8): a body that breaks one
    // still names who asked, and is answered with its error rather than a reset stream.
    let payload: capmesh_wire::EnvelopePayload =
        capmesh_wire::cbor::from_slice(envelope.payload(), limits, "EnvelopePayload").ok()?;
    let sig: capmesh_types::Signature = *envelope.sig();
    payload
        .from
        .verify(capmesh_wire::domain::ENVELOPE.as_bytes(), envelope.payload(), &sig)
        .ok()?;
    Some(Opened { id: envelope.id(), payload })
}

/// Time-related refusals are ignored (a slow path, a skewed clock), anything else rejected
/// (protocol.md §10.3).
fn verdict_of_verify(e: &VerifyError, source: &PeerId) -> Verdict {
    tracing::debug!(%source, error = %e, "gossip refused");
    match Code::parse(e.code()) {
        Code::Replay | Code::Expired | Code::FutureDated | Code::ReplayCacheFull => Verdict::Ignore,
        _ => Verdict::Reject,
    }
}

/// The replica item a gossip kind carries.
pub(crate) fn item_of(body: &Body) -> Option<Item> {
    Some(match body {
        Body::AdvertiseCapability(a) => {
            Item::Advert { advert: a.advert.clone(), contract: a.contract.clone() }
        }
        Body::Retire(r) => Item::Retirement(r.retirement.clone()),
        Body::Attest(a) => Item::Attestation(a.attestation.clone()),
        _ => return None,
    })
}

impl Mesh {
    /// Verifies and stores one record off the async threads (the store acknowledges after its
    /// group commit's flush).
    pub(crate) async fn insert(&self, item: Item) -> Result<Outcome, StoreError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.insert(item, now_ms()))
            .await
            .unwrap_or(Err(StoreError::Closed))
    }

    pub(crate) async fn insert_many(&self, items: Vec<Item>) -> Vec<Result<Outcome, StoreError>> {
        let store = self.inner.store.clone();
        let n = items.len();
        tokio::task::spawn_blocking(move || store.insert_many(items, now_ms()))
            .await
            .unwrap_or_else(|_| (0..n).map(|_| Err(StoreError::Closed)).collect())
    }
}
