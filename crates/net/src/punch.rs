//! DCUtR with the addresses peers really observed.
//!
//! DCUtR tells the other side of a relayed connection where to punch: our address candidates,
//! which come from identify. identify 0.48 rewrites an observed address whose port is not our
//! listen port to carry the listen port instead, on the guess that the peer saw the ephemeral
//! port of a dial made without port reuse. capmesh always dials from its listen port, so a
//! different observed port means a NAT gave that port another public port, and the rewritten
//! address is wrong: behind a NAT shared by several hosts on the default port, it names
//! whichever host got the listen port first. [`Behaviour`] is DCUtR plus the raw observation:
//! the service hands each identify observation to [`Behaviour::observed`], which adds it to
//! DCUtR's candidates only (AutoNAT and the swarm never see it), bounded by DCUtR's own cache of
//! 20 candidates, most recent first. Only while we listen on the observation's transport: a
//! node without a TCP listener dials TCP from ephemeral ports, whose observations name nothing
//! that listens. And, as identify does, not an address already confirmed external: peers dial
//! that one directly. The NAT lab's test (a) puts a second host behind the
//! caller's NAT so that the punch depends on it.

use std::task::{Context, Poll};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    dcutr,
    multiaddr::Protocol,
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NewExternalAddrCandidate,
        THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
    },
};

/// [`dcutr::Behaviour`], fed the raw addresses peers observed (module docs).
pub(crate) struct Behaviour {
    inner: dcutr::Behaviour,
    /// Our listen addresses (one per listener and interface: few).
    listening: Vec<Multiaddr>,
    /// Our confirmed external addresses (the swarm bounds them).
    external: Vec<Multiaddr>,
}

/// The transport of an address, as far as ports go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Quic,
}

fn transport(addr: &Multiaddr) -> Option<Transport> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2pCircuit => return None,
            Protocol::Tcp(_) => last = Some(Transport::Tcp),
            Protocol::QuicV1 => last = Some(Transport::Quic),
            Protocol::Udp(_) => last = None,
            _ => {}
        }
    }
    last
}

impl Behaviour {
    pub(crate) fn new(local: PeerId) -> Self {
        Self { inner: dcutr::Behaviour::new(local), listening: Vec::new(), external: Vec::new() }
    }

    /// An address a peer observed us at, on a direct connection (module docs).
    pub(crate) fn observed(&mut self, addr: &Multiaddr) {
        let Some(t) = transport(addr) else { return };
        if !self.listening.iter().any(|l| transport(l) == Some(t)) || self.external.contains(addr) {
            return;
        }
        self.inner
            .on_swarm_event(FromSwarm::NewExternalAddrCandidate(NewExternalAddrCandidate { addr }));
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = <dcutr::Behaviour as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = dcutr::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner.handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match &event {
            FromSwarm::NewListenAddr(l) => self.listening.push(l.addr.clone()),
            FromSwarm::ExpiredListenAddr(l) => self.listening.retain(|a| a != l.addr),
            FromSwarm::ExternalAddrConfirmed(e) => self.external.push(e.addr.clone()),
            FromSwarm::ExternalAddrExpired(e) => self.external.retain(|a| a != e.addr),
            _ => {}
        }
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, connection_id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_are_told_apart_and_circuits_have_none() {
        let t = |s: &str| transport(&s.parse().unwrap_or_else(|e| panic!("{s}: {e}")));
        assert_eq!(t("/ip4/198.18.0.100/tcp/4702"), Some(Transport::Tcp));
        assert_eq!(t("/ip4/198.18.0.100/udp/4702/quic-v1"), Some(Transport::Quic));
        assert_eq!(t("/ip6/::1/udp/4702"), None);
        assert_eq!(
            t(
                "/ip4/198.18.0.10/tcp/4701/p2p/12D3KooWPUYWuDHQoxL7UTnC9j3jZ5PrF9tz5HhEwTueBPMaNVzP/p2p-circuit"
            ),
            None
        );
    }
}
