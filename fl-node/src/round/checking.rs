//! How often a node recomputes a manifest from its updates before it adopts it: every one,
//! none (its claims only), or each with a probability, drawn by the node alone so that no
//! aggregator knows ahead which nodes will fetch its round's updates and recompute it.
//!
//! Recomputing means fetching every update of the round: with every node recomputing every
//! manifest, each sends and receives N updates a round where the round needs one model and
//! one update. Sampled checking spends a chosen fraction of that and states what it buys
//! ([`detection`]): a wrong manifest (one wrong value is enough: the model's CID changes) is
//! refuted by each honest node that recomputes it, and each does so on its own draw.

use cid::Cid;
use sha2::{Digest, Sha256};

/// How often this node recomputes a manifest before adopting it.
#[derive(Clone)]
pub enum Checking {
    /// Every manifest: `fl node run`'s default.
    Every,
    /// Each manifest with `probability`, drawn from a secret this node never shares and the
    /// manifest's CID (the same manifest gets the same draw however often it is looked at);
    /// the others have their claims checked only.
    Sampled {
        /// The chance of recomputing any one manifest, in (0, 1].
        probability: f64,
        /// This node's secret (random, drawn when the node starts).
        secret: [u8; 32],
    },
    /// None: claims only (signatures, entitlement, rank, what it lists, a loadable model).
    /// For simulations whose nodes one party runs, where a few of them check for everyone.
    Claims,
}

impl std::fmt::Debug for Checking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Checking::Every => f.write_str("Every"),
            Checking::Sampled { probability, .. } => f
                .debug_struct("Sampled")
                .field("probability", probability)
                .finish_non_exhaustive(),
            Checking::Claims => f.write_str("Claims"),
        }
    }
}

/// A check probability outside (0, 1].
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("a check probability must be in (0, 1], not {0}")]
pub struct BadProbability(pub f64);

impl Checking {
    /// Recomputes each manifest with `probability`, drawn from a fresh secret.
    pub fn sampled(probability: f64) -> Result<Checking, BadProbability> {
        if !(probability > 0.0 && probability <= 1.0) {
            return Err(BadProbability(probability));
        }
        if probability == 1.0 {
            return Ok(Checking::Every);
        }
        Ok(Checking::Sampled {
            probability,
            secret: rand::random(),
        })
    }

    /// Whether this node recomputes the manifest `manifest`.
    pub fn recomputes(&self, manifest: &Cid) -> bool {
        match self {
            Checking::Every => true,
            Checking::Claims => false,
            Checking::Sampled {
                probability,
                secret,
            } => draw(secret, manifest) < *probability,
        }
    }

    /// The chance that this node recomputes any one manifest.
    pub fn probability(&self) -> f64 {
        match self {
            Checking::Every => 1.0,
            Checking::Sampled { probability, .. } => *probability,
            Checking::Claims => 0.0,
        }
    }
}

/// A uniform number in [0, 1) from the secret and the manifest: SHA-256 of both, its first
/// 53 bits.
fn draw(secret: &[u8; 32], manifest: &Cid) -> f64 {
    let mut hash = Sha256::new();
    hash.update(b"fl/check/1:");
    hash.update(secret);
    hash.update(manifest.to_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The chance that a wrong manifest is recomputed (and so refuted) by at least one of the
/// honest nodes whose check probabilities are given: 1 - prod(1 - p). The aggregator that
/// made it is not among them.
pub fn detection(honest: impl IntoIterator<Item = f64>) -> f64 {
    1.0 - honest
        .into_iter()
        .map(|p| 1.0 - p.clamp(0.0, 1.0))
        .product::<f64>()
}

/// The probability each of `nodes` nodes checks with so that `rate` of them recompute each
/// manifest on average (at most 1).
pub fn probability_for_rate(rate: f64, nodes: usize) -> f64 {
    (rate / nodes.max(1) as f64).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fl_core::content::{Block, DAG_CBOR};

    fn manifest(i: u32) -> Cid {
        *Block::hashed(DAG_CBOR, i.to_be_bytes().to_vec()).cid()
    }

    #[test]
    fn probabilities_outside_zero_to_one_are_refused_and_one_is_every() {
        for p in [0.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(Checking::sampled(p).is_err(), "{p}");
        }
        assert!(matches!(Checking::sampled(1.0), Ok(Checking::Every)));
        assert_eq!(
            BadProbability(2.0).to_string(),
            "a check probability must be in (0, 1], not 2"
        );
    }

    #[test]
    fn a_manifest_gets_one_draw_per_node_and_nodes_draw_apart() {
        let a = Checking::sampled(0.5).unwrap();
        let b = Checking::sampled(0.5).unwrap();
        let (mut same, mut differ) = (0, 0);
        for i in 0..2000 {
            let m = manifest(i);
            // Looked at again, the same answer.
            assert_eq!(a.recomputes(&m), a.recomputes(&m));
            if a.recomputes(&m) == b.recomputes(&m) {
                same += 1;
            } else {
                differ += 1;
            }
        }
        // Independent draws agree half the time: 1000 +- 5 sigma (sigma 22.4).
        assert!((888..=1112).contains(&same), "{same} same, {differ} differ");
    }

    #[test]
    fn a_node_recomputes_at_its_probability() {
        for p in [0.05, 0.3, 0.9] {
            let c = Checking::sampled(p).unwrap();
            let n = 20_000;
            let hits = (0..n).filter(|i| c.recomputes(&manifest(*i))).count() as f64;
            let sigma = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (hits - n as f64 * p).abs() < 5.0 * sigma,
                "p {p}: {hits} of {n}"
            );
        }
        assert!(Checking::Every.recomputes(&manifest(1)));
        assert!(!Checking::Claims.recomputes(&manifest(1)));
    }

    #[test]
    fn detection_composes_independent_checks() {
        assert_eq!(detection([]), 0.0);
        assert_eq!(detection([1.0, 0.0]), 1.0);
        assert!((detection([0.5, 0.5]) - 0.75).abs() < 1e-12);
        let p = probability_for_rate(0.4, 8);
        assert!((p - 0.05).abs() < 1e-12);
        // Seven honest nodes at 0.05 each.
        assert!((detection([p; 7]) - (1.0 - 0.95f64.powi(7))).abs() < 1e-12);
        assert_eq!(probability_for_rate(10.0, 4), 1.0);
    }
}
