//! The one place where capmesh identities become libp2p identities and back (DESIGN §1).

use capmesh_types::NodeKey;
use libp2p::identity;

/// The libp2p keypair of a node key (same ed25519 secret, so the same PeerId).
pub fn keypair(key: &NodeKey) -> identity::Keypair {
    let mut seed = key.seed();
    identity::Keypair::ed25519_from_bytes(&mut seed[..])
        .expect("a 32-byte seed is always a valid ed25519 secret key")
}

/// capmesh PeerId → libp2p PeerId (both the identity multihash of the ed25519 key).
pub fn to_libp2p(peer: &capmesh_types::PeerId) -> libp2p::PeerId {
    libp2p::PeerId::from_bytes(&peer.to_bytes())
        .expect("a capmesh PeerId is a valid identity multihash")
}

/// libp2p PeerId → capmesh PeerId; `None` for keys other than ed25519 (capmesh has no others).
pub fn from_libp2p(peer: &libp2p::PeerId) -> Option<capmesh_types::PeerId> {
    capmesh_types::PeerId::from_bytes(&peer.to_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_key_and_libp2p_keypair_share_the_peer_id() {
        let key = NodeKey::from_seed([3; 32]);
        let kp = keypair(&key);
        let lp = kp.public().to_peer_id();
        assert_eq!(lp, to_libp2p(&key.peer_id()));
        assert_eq!(from_libp2p(&lp), Some(key.peer_id()));
        assert_eq!(lp.to_string(), key.peer_id().to_string());
    }
}
