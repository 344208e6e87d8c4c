//! Gossipsub as this project runs it: signed messages, records up to 2 MiB, short queues,
//! and peer scoring in which an invalid record costs its sender far more than honest traffic
//! earns. Topics a caller validates ([`Node::subscribe_validated`](super::Node)) forward
//! nothing until the caller accepts it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::{PeerId, gossipsub};

pub use libp2p::gossipsub::MessageAcceptance;

/// Largest gossip message sent or taken: a 2 MiB record (a manifest of 10,000
/// contributions) and its envelope. Gossipsub's default, 64 KiB, held about 450.
pub const MAX_GOSSIP_BYTES: usize = (2 << 20) + (64 << 10);
/// Gossip messages queued for one peer before more are dropped. Gossipsub's default, 5000,
/// suits busy topics; ours carry a few records per peer and round, and 64 nodes in one
/// process with 5000 queued manifests per connection ran out of memory.
const GOSSIP_QUEUE: usize = 256;
/// Score lost per invalid record, squared by their count (gossipsub's P4): one invalid
/// record outweighs everything honest traffic earns (at most 2), three take a peer below
/// gossipsub's graylist threshold (-80), where everything it sends is ignored.
const INVALID_RECORD_WEIGHT: f64 = -10.0;
/// Heartbeats a message stays in gossipsub's cache: a validated message is forwarded only if
/// its validator reports on it within that time (10 s at 500 ms; gossipsub's default of 5
/// gave a busy node 2.5 s to verify and store a record).
const HISTORY_LENGTH: usize = 20;
/// How much of the invalid-record count is left after each second: it halves in about 70 s,
/// so a peer is forgiven within minutes once it stops.
const INVALID_RECORD_DECAY: f64 = 0.99;

/// A gossip message that passed signature checks.
#[derive(Debug, Clone)]
pub struct Gossip {
    /// The topic.
    pub topic: String,
    /// Its author (the signer).
    pub source: Option<PeerId>,
    /// Its bytes.
    pub data: Vec<u8>,
    /// Gossipsub's id of it, for [`Node::report`](super::Node::report).
    pub id: gossipsub::MessageId,
    /// The peer it came from (which need not be its author).
    pub via: PeerId,
}

/// The gossipsub behaviour of a node with `key`.
pub fn behaviour(
    key: &Keypair,
) -> Result<gossipsub::Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .heartbeat_interval(Duration::from_millis(500))
        .history_length(HISTORY_LENGTH)
        .max_transmit_size(MAX_GOSSIP_BYTES)
        .connection_handler_queue_len(GOSSIP_QUEUE)
        .build()?;
    let mut gossipsub =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config)?;
    gossipsub.with_peer_score(peer_score(), gossipsub::PeerScoreThresholds::default())?;
    Ok(gossipsub)
}

/// Gossipsub's peer scoring, with room for many nodes on one address: the default penalty
/// for more than 10 peers on one IP graylisted every peer of a 20-node federation on
/// loopback, and labs run several nodes behind one address. Loopback is exempt; elsewhere
/// the penalty starts past 64 peers on one address.
fn peer_score() -> gossipsub::PeerScoreParams {
    gossipsub::PeerScoreParams {
        ip_colocation_factor_threshold: 64.0,
        ip_colocation_factor_whitelist: [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]
        .into(),
        ..Default::default()
    }
}

/// Scoring on a validated topic. Invalid records weigh heavily ([`INVALID_RECORD_WEIGHT`]).
/// Sending few messages is no fault: a task's topics carry a few records per peer and round,
/// so the mesh-delivery penalties (P3, P3b), made for busy topics, are off. Time in the mesh
/// and first deliveries earn at most 1 each.
pub fn topic_score() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        first_message_deliveries_weight: 0.1,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: INVALID_RECORD_WEIGHT,
        invalid_message_deliveries_decay: INVALID_RECORD_DECAY,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topic_scoring_is_one_gossipsub_accepts() {
        assert_eq!(topic_score().validate(), Ok(()));
        assert_eq!(peer_score().validate(), Ok(()));
    }
}
