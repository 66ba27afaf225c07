//! QUIC connection IDs that name the node that issued them.
//!
//! Behind a UDP load balancer, a client whose address changes (a NAT rebinding, Wi-Fi
//! to cellular) keeps its QUIC connection only if its packets still reach the node that
//! holds it. The balancer cannot use the address (it changed); it can use the
//! destination connection ID, which the node chose. Every ID a node issues starts with
//! its two-byte node number, followed by eight random bytes (QUIC-LB's "plaintext"
//! scheme: an observer learns which node, not which connection). A balancer routes on
//! bytes 1–2 of the short header's connection ID (docs/operations.md, "Cluster").
//!
//! Packets with a connection ID no node knows are answered with a stateless reset;
//! since every node derives its reset key from the same secret, the client of a node
//! that died gets a reset it trusts from whichever node receives its next packet, and
//! reconnects at once.

use std::time::Duration;

use quinn_proto::ConnectionIdGenerator;
use quinn_proto::{ConnectionId, InvalidCid};
use rand::RngCore;

/// Length of the connection IDs: 2 bytes of node number, 8 random.
pub const CID_LEN: usize = 10;

/// Issues connection IDs that start with the node number.
#[derive(Debug, Clone, Copy)]
pub struct NodeCidGenerator {
    node: u16,
}

impl NodeCidGenerator {
    /// IDs for node `node`.
    pub fn new(node: u16) -> Self {
        NodeCidGenerator { node }
    }
}

/// The node number a connection ID issued by [`NodeCidGenerator`] carries.
pub fn node_of(cid: &[u8]) -> Option<u16> {
    (cid.len() == CID_LEN).then(|| u16::from_be_bytes([cid[0], cid[1]]))
}

impl ConnectionIdGenerator for NodeCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        bytes[..2].copy_from_slice(&self.node.to_be_bytes());
        rand::rng().fill_bytes(&mut bytes[2..]);
        ConnectionId::new(&bytes)
    }

    // Another node's IDs are valid too: a packet for a connection no node holds is
    // answered with a stateless reset, whichever node it reaches.
    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if cid.len() == CID_LEN {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_node_number_and_differ() {
        let mut g = NodeCidGenerator::new(0x0203);
        let (a, b) = (g.generate_cid(), g.generate_cid());
        assert_eq!(a.len(), CID_LEN);
        assert_eq!(node_of(&a), Some(0x0203));
        assert_eq!(node_of(&b), Some(0x0203));
        assert_ne!(a, b);
        assert!(g.validate(&a).is_ok());
        assert_eq!(node_of(&[1, 2, 3]), None);
    }
}
