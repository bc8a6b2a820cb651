//! Listen addresses checked before the swarm binds them.
//!
//! libp2p's TCP transport binds its listeners with `SO_REUSEPORT`, so that dials can leave
//! from the listen port (TCP hole punching needs that). On Linux two processes of one user may
//! then bind the same port without an error and share its incoming connections. So each TCP
//! or UDP listen address with a fixed port is first bound plainly, without `SO_REUSEPORT`, and
//! released at once: a port another process holds is refused here, by name, before the swarm
//! listens. Port 0 is never a conflict.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
};

use libp2p::{Multiaddr, multiaddr::Protocol};

use crate::NetError;

/// A socket a listen address binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Socket {
    Tcp(SocketAddr),
    Udp(SocketAddr),
}

impl Socket {
    fn addr(self) -> SocketAddr {
        match self {
            Socket::Tcp(a) | Socket::Udp(a) => a,
        }
    }

    fn with_ip(self, ip: IpAddr) -> Socket {
        match self {
            Socket::Tcp(a) => Socket::Tcp(SocketAddr::new(ip, a.port())),
            Socket::Udp(a) => Socket::Udp(SocketAddr::new(ip, a.port())),
        }
    }

    /// Whether both bind one port of one protocol and family on a common address (equal, or
    /// one of them the wildcard).
    fn overlaps(self, other: Socket) -> bool {
        let (a, b) = (self.addr(), other.addr());
        let same_kind = matches!(
            (self, other),
            (Socket::Tcp(_), Socket::Tcp(_)) | (Socket::Udp(_), Socket::Udp(_))
        );
        same_kind
            && a.port() == b.port()
            && a.is_ipv4() == b.is_ipv4()
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    }

    /// Binds the socket plainly and releases it. Rust's `TcpListener` sets `SO_REUSEADDR` on
    /// Unix as libp2p does, so connections of an earlier run still in `TIME_WAIT` on the port
    /// do not count; a socket listening there does.
    fn probe(self) -> io::Result<()> {
        match self {
            Socket::Tcp(a) => TcpListener::bind(a).map(drop),
            Socket::Udp(a) => UdpSocket::bind(a).map(drop),
        }
    }

    /// Whether another socket holds this one's port. Errors other than "in use" (an address
    /// not on this machine, a privileged port) are left to the swarm's own listen, which meets
    /// and reports them the same way.
    fn in_use(self) -> bool {
        let taken = |r: io::Result<()>| matches!(r, Err(e) if e.kind() == io::ErrorKind::AddrInUse);
        if !taken(self.probe()) {
            return false;
        }
        match self.addr().ip() {
            // The standard library cannot make a socket IPv6-only before binding it, so a probe
            // of `[::]` is dual-stack and also fails when only the IPv4 wildcard is taken;
            // libp2p's listeners are IPv6-only. When the IPv4 port is free the conflict is on
            // IPv6; when it is taken too, which side conflicts cannot be told: the swarm tries.
            IpAddr::V6(ip) if ip.is_unspecified() => {
                !taken(self.with_ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)).probe())
            }
            _ => true,
        }
    }
}

/// The socket `addr` binds when it is a TCP or UDP (QUIC) address with a fixed port; `None`
/// for port 0, relay circuits and names.
fn fixed_socket(addr: &Multiaddr) -> Option<Socket> {
    if addr.iter().any(|p| p == Protocol::P2pCircuit) {
        return None;
    }
    let mut protocols = addr.iter();
    let ip: IpAddr = match protocols.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    match protocols.next()? {
        Protocol::Tcp(port) if port != 0 => Some(Socket::Tcp(SocketAddr::new(ip, port))),
        Protocol::Udp(port) if port != 0 => Some(Socket::Udp(SocketAddr::new(ip, port))),
        _ => None,
    }
}

/// Refuses listen addresses that would share a port: two of `addrs` on one socket
/// ([`NetError::ListenTwice`]), or a fixed port another process holds
/// ([`NetError::AddrInUse`]). Binds each fixed port for an instant; never port 0.
pub(crate) fn check_listen_addrs(addrs: &[Multiaddr]) -> Result<(), NetError> {
    let fixed: Vec<(&Multiaddr, Socket)> =
        addrs.iter().filter_map(|a| Some((a, fixed_socket(a)?))).collect();
    for (i, (addr, socket)) in fixed.iter().enumerate() {
        if let Some((first, _)) = fixed[..i].iter().find(|(_, s)| s.overlaps(*socket)) {
            return Err(NetError::ListenTwice {
                first: first.to_string(),
                second: addr.to_string(),
            });
        }
    }
    for (addr, socket) in fixed {
        if socket.in_use() {
            return Err(NetError::AddrInUse { addr: addr.to_string() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().expect("multiaddr")
    }

    #[test]
    fn a_tcp_port_held_by_another_listener_is_refused_by_name() {
        let held = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("local addr").port();
        let addr = format!("/ip4/127.0.0.1/tcp/{port}");
        let err = check_listen_addrs(&[ma(&addr)]).expect_err("the port is taken");
        assert_eq!(err, NetError::AddrInUse { addr: addr.clone() });
        let msg = err.to_string();
        assert!(msg.contains(&addr) && msg.contains("in use"), "{msg}");
        assert!(msg.contains("--listen") && msg.contains("network.listen"), "{msg}");
        // The wildcard covers 127.0.0.1: taken too.
        let wildcard = format!("/ip4/0.0.0.0/tcp/{port}");
        assert!(matches!(check_listen_addrs(&[ma(&wildcard)]), Err(NetError::AddrInUse { .. })));
        // Released: free again.
        drop(held);
        check_listen_addrs(&[ma(&addr)]).expect("free once released");
    }

    #[test]
    fn connections_of_an_earlier_run_left_on_the_port_are_not_a_conflict() {
        use std::io::Read;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        drop(listener);
        // The port's side closes first, so its socket is left in TIME_WAIT.
        drop(server);
        assert_eq!(client.read(&mut [0; 1]).expect("end of stream"), 0);
        drop(client);
        check_listen_addrs(&[ma(&format!("/ip4/127.0.0.1/tcp/{port}"))])
            .expect("no listener left on the port");
    }

    #[test]
    fn a_udp_port_held_by_another_socket_is_refused() {
        let held = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("local addr").port();
        let addr = format!("/ip4/127.0.0.1/udp/{port}/quic-v1");
        let err = check_listen_addrs(&[ma(&addr)]).expect_err("the port is taken");
        assert_eq!(err, NetError::AddrInUse { addr });
        // Same number, other protocol: no conflict.
        let tcp = format!("/ip4/127.0.0.1/tcp/{port}");
        let tcp_free = TcpListener::bind(("127.0.0.1", port)).is_ok();
        if tcp_free {
            check_listen_addrs(&[ma(&tcp)]).expect("TCP on the UDP port's number");
        }
    }

    #[test]
    fn port_zero_circuits_and_names_are_never_a_conflict() {
        let held = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("local addr").port();
        let never = [
            "/ip4/127.0.0.1/tcp/0",
            "/ip4/127.0.0.1/tcp/0",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "/ip6/::1/tcp/0",
        ]
        .map(ma)
        .to_vec();
        check_listen_addrs(&never).expect("port 0 twice is fine");
        let relay =
            crate::convert::to_libp2p(&capmesh_types::NodeKey::from_seed([1; 32]).peer_id());
        let circuit = ma(&format!("/ip4/127.0.0.1/tcp/{port}"))
            .with(Protocol::P2p(relay))
            .with(Protocol::P2pCircuit);
        let name = ma(&format!("/dns4/localhost/tcp/{port}"));
        check_listen_addrs(&[circuit, name]).expect("a relay's port or a name is not ours");
    }

    #[test]
    fn one_socket_twice_in_the_list_is_refused() {
        // Port 1 is never probed: the duplicate is found first.
        let twice = [ma("/ip4/127.0.0.1/tcp/1"), ma("/ip4/127.0.0.1/tcp/1")];
        let err = check_listen_addrs(&twice).expect_err("listed twice");
        assert_eq!(
            err,
            NetError::ListenTwice {
                first: "/ip4/127.0.0.1/tcp/1".into(),
                second: "/ip4/127.0.0.1/tcp/1".into()
            }
        );
        assert!(err.to_string().contains("network.listen"), "{err}");
        let overlap = [ma("/ip4/0.0.0.0/udp/1/quic-v1"), ma("/ip4/127.0.0.1/udp/1/quic-v1")];
        assert!(matches!(check_listen_addrs(&overlap), Err(NetError::ListenTwice { .. })));
        // TCP and UDP on one number, or IPv4 and IPv6, are different sockets.
        for pair in [
            ["/ip4/0.0.0.0/tcp/1", "/ip4/0.0.0.0/udp/1/quic-v1"],
            ["/ip4/0.0.0.0/tcp/1", "/ip6/::/tcp/1"],
            ["/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.2/tcp/1"],
        ] {
            let [a, b] = pair.map(ma);
            let (a, b) = (fixed_socket(&a).expect("fixed"), fixed_socket(&b).expect("fixed"));
            assert!(!a.overlaps(b), "{pair:?}");
        }
    }
}
