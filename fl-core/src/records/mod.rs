//! The records of a federated training task, as DAG-CBOR blocks that `ipfs dag get` shows:
//! the task itself (genesis), each node's signed update announcement, each round's signed
//! manifest, hash-linked to the one before, and its aggregator's evaluation of the model. Also who aggregates a round
//! ([`rank`]) and how contributions are credited.

pub mod announcement;
pub mod evaluation;
pub mod manifest;
pub mod population;
pub mod rank;
pub mod secure;
pub mod signed;
pub mod task;

pub use announcement::Announcement;
pub use evaluation::Evaluation;
pub use libp2p_identity::{Keypair, PeerId, PublicKey};
pub use manifest::{Contribution, Manifest, Metrics, RejectReason, Rejected};
pub use population::{ClientId, Population, PopulationError, Sample, Sampling};
pub use rank::{rank_key, ranking};
pub use secure::{
    SecureAggregation, SecureMembers, SecureRecord, SecureStep, SecureStepError, Step,
};
pub use signed::{Record, Signed, SignedError};
pub use task::{
    DataSource, DpLevel, DpParams, Load, Neighbours, RoundSchedule, Task, TaskError, TrainParams,
};

/// Serde for peer ids as their bytes (a multihash), so records carry them compactly.
pub(crate) mod peer_bytes {
    use libp2p_identity::PeerId;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(peer: &PeerId, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::serialize(&peer.to_bytes(), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PeerId, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        PeerId::from_bytes(&bytes).map_err(D::Error::custom)
    }
}

/// Serde for lists of peer ids as bytes.
pub(crate) mod peers_bytes {
    use libp2p_identity::PeerId;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(peers: &Option<Vec<PeerId>>, s: S) -> Result<S::Ok, S::Error> {
        match peers {
            None => s.serialize_none(),
            Some(peers) => {
                let mut seq = s.serialize_seq(Some(peers.len()))?;
                for p in peers {
                    seq.serialize_element(serde_bytes::Bytes::new(&p.to_bytes()))?;
                }
                seq.end()
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<PeerId>>, D::Error> {
        let raw: Option<Vec<serde_bytes::ByteBuf>> = Deserialize::deserialize(d)?;
        raw.map(|list| {
            list.iter()
                .map(|b| PeerId::from_bytes(b).map_err(D::Error::custom))
                .collect()
        })
        .transpose()
    }
}
