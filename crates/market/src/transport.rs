//! The caller's seam to the network: exactly what [`crate::Market::call`] uses of the mesh —
//! a find, signed requests and their answers, whether a peer is connected. The node's market
//! goes through its [`Mesh`]; the caller's tests plug in scripted peers instead, so every
//! state of a call is driven without a swarm (`caller/scripted.rs`). The provider side keeps
//! using the mesh directly.

use std::time::Duration;

use capmesh_mesh::{BoxFuture, Exchange, FindEvent, Mesh, MeshError, Multiaddr, Thread};
use capmesh_types::{Cid, PeerId};
use capmesh_wire::{Body, Envelope};
use tokio::sync::mpsc;

/// What the caller sends and asks through. Object-safe: one boxed future per request.
pub(crate) trait CallTransport: Send + Sync + std::fmt::Debug + 'static {
    /// Providers of `cap`, reported as they are verified, then one [`FindEvent::Done`]
    /// ([`Mesh::find`]). Dropping the receiver stops the search.
    fn find(&self, cap: Cid, limit: u32, timeout: Option<Duration>) -> mpsc::Receiver<FindEvent>;

    /// The signed request envelope, for callers that need its id before the answer
    /// ([`Mesh::sign_request`]).
    fn sign_request(&self, peer: PeerId, body: Body, thread: Thread)
    -> Result<Envelope, MeshError>;

    /// Sends a signed request and opens the answer ([`Mesh::send`]): an `Error` answer is
    /// [`MeshError::Remote`]. Cancel-safe: dropping it abandons the request.
    fn send(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Envelope,
    ) -> BoxFuture<Result<Exchange, MeshError>>;

    /// Whether a connection to `peer` is open now ([`Mesh::connected`]).
    fn connected(&self, peer: PeerId) -> BoxFuture<bool>;

    /// Signs `body` and sends it ([`Mesh::request`]).
    fn request(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        body: Body,
        thread: Thread,
    ) -> BoxFuture<Result<Exchange, MeshError>> {
        match self.sign_request(peer, body, thread) {
            Ok(envelope) => self.send(peer, addrs, envelope),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

impl CallTransport for Mesh {
    fn find(&self, cap: Cid, limit: u32, timeout: Option<Duration>) -> mpsc::Receiver<FindEvent> {
        Mesh::find(self, cap, limit, timeout)
    }

    fn sign_request(
        &self,
        peer: PeerId,
        body: Body,
        thread: Thread,
    ) -> Result<Envelope, MeshError> {
        Mesh::sign_request(self, peer, body, thread)
    }

    fn send(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Envelope,
    ) -> BoxFuture<Result<Exchange, MeshError>> {
        let mesh = self.clone();
        Box::pin(async move { mesh.send(peer, addrs, request).await })
    }

    fn connected(&self, peer: PeerId) -> BoxFuture<bool> {
        let mesh = self.clone();
        Box::pin(async move { mesh.connected(peer).await })
    }
}
