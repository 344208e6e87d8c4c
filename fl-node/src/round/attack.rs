//! Deviations from the protocol a node can be told to make, so that what honest nodes
//! withstand is run, tested and measured (`fl simulate --attack`) as failures are. An honest
//! node makes none; nothing here changes how a node judges others.

use std::fmt;
use std::str::FromStr;

use fl_core::tensors::Bundle;

/// How a dishonest member departs from the protocol.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attack {
    /// Claims this many times its true sample count: a larger FedAvg weight and more
    /// credits, if nodes believed it.
    InflateSamples(u64),
    /// Sends its update times this factor (`sign-flip` is -1): model poisoning that robust
    /// rules must hold against.
    Scale(f32),
    /// Announces as its own the update another member announced first in the round: credit
    /// for others' work.
    CopyUpdate,
    /// Aggregates as soon as the minimum is in, counting only itself and the announcers
    /// ranked behind it, so that it claims rank 0 among what it lists: the round's model and
    /// credits without the members ahead of it.
    Censor,
    /// Announces, in place of its update, a DAG of three small blocks that names 256 GB
    /// (one leaf linked a thousand times, that node a thousand times): memory and work for
    /// whoever fetches or reads it.
    DagBomb,
    /// After announcing, sends each peer a flood of Bitswap HAVE wants (1,024 a message) for
    /// the blocks of the round's model, which the peer holds: reads and hashing, had it
    /// answered them from the blocks.
    HaveFlood,
    /// Serves its blocks at a trickle ([`SLOW_SERVE_BYTES_PER_SECOND`] to each peer), never
    /// refusing and never quite stopping, so that only an overall deadline ends a fetch of
    /// its update: a round held hostage, were there none.
    SlowServe,
    /// After announcing, signs and gossips near-2 MiB manifests for this round and every
    /// round after it ([`FLOOD_MANIFESTS_PER_ROUND`] a round, more than a signer may have
    /// kept): inboxes that grow, were they not bounded.
    ManifestFlood,
    /// In a task with a population: trains and announces, every round, a client it hosts
    /// that the round did not sample: a say in rounds its client was not drawn for.
    UnsampledClient,
    /// In a secure task: sends its keys, shares and masked update, then never answers a
    /// survivor list, as a member that vanishes after masking: the dropouts a round's
    /// threshold must tolerate.
    Mute,
}

/// Bytes a second a `slow-serve` node sends each peer: a 256 KiB block a minute, far below
/// the slowest rate an update fetch allows, so that its update is not whole within a round
/// even when its peers pool what each was sent.
pub const SLOW_SERVE_BYTES_PER_SECOND: usize = 4 << 10;
/// Messages of HAVE wants a `have-flood` node sends each peer per round.
pub const FLOOD_MESSAGES_PER_PEER: usize = 200;
/// Manifests a `manifest-flood` node signs for each round it floods.
pub const FLOOD_MANIFESTS_PER_ROUND: usize = 6;

impl Attack {
    /// The sample count the attack announces for `samples` trained on.
    pub fn claimed_samples(&self, samples: u64) -> u64 {
        match self {
            Attack::InflateSamples(factor) => samples.saturating_mul(*factor),
            _ => samples,
        }
    }

    /// The update the attack sends in place of `update`.
    pub fn update(&self, update: Bundle) -> Bundle {
        let Attack::Scale(factor) = self else {
            return update;
        };
        let scaled: Vec<f32> = update.flatten().iter().map(|x| x * factor).collect();
        // Same layout: it cannot fail, but an attack must never stop the node.
        update.with_flat(&scaled).unwrap_or(update)
    }
}

/// Why an attack could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown attack {0:?}: expected inflate-samples[:FACTOR], scale:FACTOR, sign-flip, copy-update, censor, \
     dag-bomb, have-flood, slow-serve, manifest-flood, unsampled-client or mute"
)]
pub struct UnknownAttack(String);

impl FromStr for Attack {
    type Err = UnknownAttack;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || UnknownAttack(s.to_string());
        let (kind, arg) = match s.split_once(':') {
            Some((kind, arg)) => (kind, Some(arg)),
            None => (s, None),
        };
        match (kind, arg) {
            ("inflate-samples", None) => Ok(Attack::InflateSamples(1000)),
            ("inflate-samples", Some(f)) => match f.parse() {
                Ok(f) if f >= 1 => Ok(Attack::InflateSamples(f)),
                _ => Err(bad()),
            },
            ("scale", Some(f)) => match f.parse::<f32>() {
                Ok(f) if f.is_finite() => Ok(Attack::Scale(f)),
                _ => Err(bad()),
            },
            ("sign-flip", None) => Ok(Attack::Scale(-1.0)),
            ("copy-update", None) => Ok(Attack::CopyUpdate),
            ("censor", None) => Ok(Attack::Censor),
            ("dag-bomb", None) => Ok(Attack::DagBomb),
            ("have-flood", None) => Ok(Attack::HaveFlood),
            ("slow-serve", None) => Ok(Attack::SlowServe),
            ("manifest-flood", None) => Ok(Attack::ManifestFlood),
            ("mute", None) => Ok(Attack::Mute),
            ("unsampled-client", None) => Ok(Attack::UnsampledClient),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Attack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attack::InflateSamples(factor) => write!(f, "inflate-samples:{factor}"),
            Attack::Scale(factor) if *factor == -1.0 => write!(f, "sign-flip"),
            Attack::Scale(factor) => write!(f, "scale:{factor}"),
            Attack::CopyUpdate => write!(f, "copy-update"),
            Attack::Censor => write!(f, "censor"),
            Attack::DagBomb => write!(f, "dag-bomb"),
            Attack::HaveFlood => write!(f, "have-flood"),
            Attack::SlowServe => write!(f, "slow-serve"),
            Attack::ManifestFlood => write!(f, "manifest-flood"),
            Attack::UnsampledClient => write!(f, "unsampled-client"),
            Attack::Mute => write!(f, "mute"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacks_read_as_written_and_do_what_they_say() {
        for text in [
            "inflate-samples:1000",
            "scale:100",
            "sign-flip",
            "copy-update",
            "scale:-10",
            "censor",
            "dag-bomb",
            "have-flood",
            "slow-serve",
            "manifest-flood",
            "unsampled-client",
            "mute",
        ] {
            let attack: Attack = text.parse().unwrap();
            assert_eq!(attack.to_string(), text);
        }
        assert_eq!("inflate-samples".parse(), Ok(Attack::InflateSamples(1000)));
        for bad in [
            "scale",
            "scale:nan",
            "inflate-samples:0",
            "censor:1",
            "sign-flip:2",
            "dag-bomb:3",
            "flood",
        ] {
            assert!(bad.parse::<Attack>().is_err(), "{bad}");
        }
        assert_eq!(
            Attack::InflateSamples(1000).claimed_samples(u64::MAX),
            u64::MAX
        );
        let mut b = Bundle::new();
        b.insert("w", vec![2], vec![1.0, -2.0]).unwrap();
        assert_eq!(Attack::Scale(-3.0).update(b.clone()).flatten(), [-3.0, 6.0]);
        assert_eq!(Attack::CopyUpdate.update(b.clone()), b);
    }
}
