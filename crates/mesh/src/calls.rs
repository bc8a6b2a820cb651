//! The seam between the registry protocol and calls: the mesh opens every rpc request (recipient,
//! replay, signer = connected peer) and hands the call kinds to a [`Calls`] service plugged in
//! by the node (capmesh-market), so the market never sees unverified bytes and the mesh knows
//! nothing of offers or runtimes.

use std::{future::Future, pin::Pin, sync::Arc};

use capmesh_net::Multiaddr;
use capmesh_types::{Cid, PeerId};
use capmesh_wire::{
    Attest, Attestation, Body, Envelope, ErrorBody, Kind, Opened, Signed, Subject, TraceId,
};

use crate::{Mesh, MeshError, now_ms};

/// What a [`Calls`] service answers to a request.
#[derive(Debug)]
pub enum Served {
    /// An answer envelope carrying this body (addressed to the requester, `re` its id).
    Answer(Body),
    /// An answer the service signed itself (with [`Mesh::answer_to`]) because it needs the
    /// envelope's id: an `Offer`'s id is the offer id.
    Signed(Envelope),
    /// A zero-length acknowledgement (kinds without an answer kind, protocol.md §10.1).
    Ack,
}

/// A boxed future, for a trait the mesh holds as an object.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The call kinds' service (protocol.md §8.5): `Intent`, `Negotiate`, `TaskStart`,
/// `TaskProgress`, `TaskDone` (sent as a request), `TaskCancel` and `Receipt`. The request has
/// passed the envelope checks and its signer is `peer`. An `Err` is sent as an `Error` envelope.
pub trait Calls: Send + Sync + std::fmt::Debug + 'static {
    fn serve(&self, peer: PeerId, request: Opened) -> BoxFuture<Result<Served, ErrorBody>>;
}

/// Where an envelope sits in a conversation: the trace it belongs to and what it answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Thread {
    pub trace: Option<TraceId>,
    pub re: Option<Cid>,
}

/// A sent request and what came back.
#[derive(Debug)]
pub struct Exchange {
    /// Id of the request envelope.
    pub id: Cid,
    /// The answer, or `None` for an acknowledgement.
    pub answer: Option<Opened>,
}

/// Kinds a node only ever receives as answers; as requests they are `InvalidObject`.
pub(crate) fn answer_only(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::DiscoverResult | Kind::SyncResult | Kind::Offer | Kind::TaskAccepted | Kind::Error
    )
}

pub(crate) fn call_kind(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Intent
            | Kind::Negotiate
            | Kind::TaskStart
            | Kind::TaskProgress
            | Kind::TaskDone
            | Kind::TaskCancel
            | Kind::Receipt
    )
}

impl Mesh {
    /// Plugs in the call service; a second call is ignored (returns false). The mesh keeps
    /// it weakly, since the service holds the mesh: whoever runs the node keeps the `Arc`
    /// (dropping it turns call kinds away as `NotFound`).
    pub fn set_calls(&self, calls: &Arc<dyn Calls>) -> bool {
        self.inner.calls.set(Arc::downgrade(calls)).is_ok()
    }

    pub(crate) fn calls(&self) -> Option<Arc<dyn Calls>> {
        self.inner.calls.get().and_then(std::sync::Weak::upgrade)
    }

    /// Signs `body` to `peer` (in `thread`), sends it and opens the answer: recipient, replay,
    /// signer = `peer`, `re` = the request's id. An `Error` answer is [`MeshError::Remote`] with
    /// its code, retryability and retry-after. Cancel-safe: dropping it abandons the request.
    pub async fn request(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        body: impl Into<Body>,
        thread: Thread,
    ) -> Result<Exchange, MeshError> {
        let envelope = self.sign_request(peer, body, thread)?;
        self.send(peer, addrs, envelope).await
    }

    /// The envelope [`Mesh::request`] would send, for callers that need its id first (to
    /// refer to it with `re` before its answer arrives).
    pub fn sign_request(
        &self,
        peer: PeerId,
        body: impl Into<Body>,
        thread: Thread,
    ) -> Result<Envelope, MeshError> {
        let mut builder =
            Envelope::builder(body).to(peer).ttl_ms(self.inner.config.envelope_ttl_ms);
        if let Some(trace) = thread.trace {
            builder = builder.trace(trace);
        }
        if let Some(re) = thread.re {
            builder = builder.re(re);
        }
        Ok(builder.sign(&self.inner.key, now_ms())?)
    }

    /// Sends a signed request and opens the answer, as [`Mesh::request`] does.
    pub async fn send(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Envelope,
    ) -> Result<Exchange, MeshError> {
        let id = request.id();
        let bytes = self.inner.net.request(peer, addrs, request.to_bytes()).await?;
        if bytes.is_empty() {
            return Ok(Exchange { id, answer: None });
        }
        let opened = self.accept(&bytes)?;
        if opened.payload.sender() != peer || opened.payload.re != Some(id) {
            return Err(MeshError::Unexpected("an answer to another request".into(), peer));
        }
        if let Body::Error(e) = &opened.payload.body {
            return Err(MeshError::remote(peer, e));
        }
        Ok(Exchange { id, answer: Some(opened) })
    }

    /// Whether a connection to `peer` is open now.
    pub async fn connected(&self, peer: PeerId) -> bool {
        match self.inner.net.peers().await {
            Ok(peers) => peers.iter().any(|p| p.peer == peer && p.connected),
            Err(_) => false,
        }
    }

    /// Issues a signed attestation about `subject`, stores it in the replica and gossips it.
    pub async fn attest(
        &self,
        subject: Subject,
        claim: String,
        expires: u64,
    ) -> Result<Signed<Attestation>, MeshError> {
        let attestation =
            Attestation { issuer: self.inner.me, subject, claim, issued: now_ms(), expires };
        let signed = Signed::sign(&self.inner.key, &attestation)?;
        self.insert(capmesh_store::Item::Attestation(signed.clone())).await?;
        self.gossip(Attest { attestation: signed.clone() }).await?;
        Ok(signed)
    }
}
