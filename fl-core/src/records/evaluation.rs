//! A round's model scored on the task's test set by the round's aggregator: signed apart from
//! the manifest and published right after it, so the next round does not wait for the test
//! pass.

use serde::{Deserialize, Serialize};

use super::manifest::Metrics;
use super::signed::Record;
use crate::content::Cid;

/// "Manifest `manifest` of round `round` gives model `model`, which scores `metrics`."
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The task.
    pub task: Cid,
    /// The round.
    pub round: u32,
    /// The round's manifest (signed by the same peer).
    pub manifest: Cid,
    /// The model scored.
    pub model: Cid,
    /// Its test accuracy and loss.
    pub metrics: Metrics,
}

impl Record for Evaluation {
    const DOMAIN: &'static str = "fl/evaluation/1:";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{Block, DAG_CBOR};
    use crate::records::{Keypair, Signed};

    fn evaluation() -> Evaluation {
        let cid = |s: &[u8]| *Block::hashed(DAG_CBOR, s.to_vec()).cid();
        Evaluation {
            task: cid(b"task"),
            round: 3,
            manifest: cid(b"manifest"),
            model: cid(b"model"),
            metrics: Metrics {
                test_accuracy: 0.25,
                test_loss: 2.1,
            },
        }
    }

    #[test]
    fn a_signed_evaluation_round_trips_and_an_altered_one_does_not_verify() {
        let key = Keypair::generate_ed25519();
        let signed = Signed::sign(evaluation(), &key).expect("signing");
        let block = signed.to_block().expect("encoding");
        let back = Signed::<Evaluation>::from_bytes(block.cid(), block.data()).expect("decoding");
        assert_eq!(back, signed);
        let mut altered = signed.clone();
        altered.body.metrics.test_accuracy = 0.99;
        let block = altered.to_block().expect("encoding");
        assert!(Signed::<Evaluation>::from_bytes(block.cid(), block.data()).is_err());
    }
}
