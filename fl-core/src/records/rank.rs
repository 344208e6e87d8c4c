//! Who aggregates a round: the eligible peers ordered by hash(previous record's CID || round ||
//! peer id). Every node computes the same order from what the chain holds, so nobody has to
//! be asked, and nobody can choose their place.

use libp2p_identity::PeerId;
use sha2::{Digest, Sha256};

use crate::content::Cid;

/// The key that orders `peer` for `round` after `prev` (the previous manifest's CID, or the
/// task's for round 1); lowest first.
pub fn rank_key(prev: &Cid, round: u32, peer: &PeerId) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev.to_bytes());
    hasher.update(round.to_be_bytes());
    hasher.update(peer.to_bytes());
    hasher.finalize().into()
}

/// `peers` in aggregator order for `round` after `prev` (duplicates removed): the first is
/// rank 0, the one that takes over when it fails rank 1, and so on.
pub fn ranking(prev: &Cid, round: u32, peers: impl IntoIterator<Item = PeerId>) -> Vec<PeerId> {
    let mut keyed: Vec<([u8; 32], PeerId)> = peers
        .into_iter()
        .map(|p| (rank_key(prev, round, &p), p))
        .collect();
    keyed.sort();
    keyed.dedup_by(|a, b| a.1 == b.1);
    keyed.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{Block, DAG_CBOR};

    #[test]
    fn the_order_is_the_same_for_any_input_order_and_changes_with_the_round() {
        let prev = *Block::hashed(DAG_CBOR, b"task".to_vec()).cid();
        let peers: Vec<PeerId> = (0..20).map(|_| PeerId::random()).collect();
        let a = ranking(&prev, 3, peers.clone());
        let mut reversed = peers.clone();
        reversed.reverse();
        reversed.push(peers[0]);
        assert_eq!(a, ranking(&prev, 3, reversed));
        assert_eq!(a.len(), 20);
        assert_ne!(
            a,
            ranking(&prev, 4, peers.clone()),
            "the round must reshuffle"
        );
        let other = *Block::hashed(DAG_CBOR, b"other".to_vec()).cid();
        assert_ne!(a, ranking(&other, 3, peers));
    }
}
