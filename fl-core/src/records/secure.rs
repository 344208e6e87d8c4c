//! The messages of a secure round ([`crate::secagg`]) as signed records: small enough to
//! gossip whole, bound to their task and round, and checked against the signer's place in
//! the round's member list before anything in them is used.

use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use super::signed::{Record, Signed};
use super::task::{DpLevel, Task, TaskError, invalid};
use crate::content::Cid;
use crate::secagg::{
    Advert, Dealing, Params, Reveal, SecAggError, SecureSum, Session, Slot, Survivors,
};

/// A task's secure-aggregation settings (the task's `secure` field).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureAggregation {
    /// Shares needed to unmask, and the fewest survivors a round closes with.
    pub threshold: u16,
    /// Each coordinate of an update is clamped to `[-range, range]` before quantising.
    pub range: f64,
    /// Quantisation bits of one coordinate of one member's update.
    pub bits: u8,
}

impl SecureAggregation {
    /// The protocol's settings for a round of `members`.
    pub fn params(&self, members: usize) -> Result<Params, SecAggError> {
        let members =
            u16::try_from(members).map_err(|_| SecAggError::Members { members: u16::MAX })?;
        Params::new(members, self.threshold, self.range, self.bits)
    }
}

impl Task {
    /// Secure aggregation needs a fixed list of members (their slots), sums that nothing
    /// else has to see apart (no population hosts, no int8 files), and under client-level
    /// DP a range that holds each member's noised update.
    pub(super) fn validate_secure(&self, secure: &SecureAggregation) -> Result<(), TaskError> {
        let Some(members) = self.members.as_ref() else {
            return Err(invalid(
                "secure",
                "on",
                "members mask against each other by their places in a fixed list: name them (--members)",
            ));
        };
        secure.params(members.len())?;
        if self.population.is_some() {
            return Err(invalid(
                "secure",
                "on",
                "a host's update averages its sampled clients by their samples, which a masked sum cannot weigh: not built for populations",
            ));
        }
        if !self.update_encoding.is_f32() {
            return Err(invalid(
                "update_encoding",
                self.update_encoding,
                "secure aggregation quantises updates itself: set its bits (8 for int8's precision)",
            ));
        }
        if let Some(dp) = self.dp.as_ref().filter(|dp| dp.level() == DpLevel::Client) {
            // Each member adds its share of the noise, z·C/√t: the range must hold a
            // clipped update plus four of those standard deviations (a coordinate in
            // 16,000 clamped), or clamping biases the sum.
            let share = dp.noise_multiplier * dp.clip_norm / f64::from(secure.threshold).sqrt();
            if secure.range < dp.clip_norm + 4.0 * share {
                return Err(invalid(
                    "secure.range",
                    secure.range,
                    "must hold the clip norm plus 4 standard deviations of a member's share of the noise (C + 4·z·C/√threshold)",
                ));
            }
        }
        Ok(())
    }
}

/// What a secure round publishes beside its manifest: the sum with the secrets that unmask
/// it, and every member's signed keys, so the sum can be checked from this file and the
/// masked updates alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecureRecord {
    /// The survivor list, the revealed secrets and the sum.
    pub sum: SecureSum,
    /// The members' signed keys (steps `Keys`), in slot order.
    pub keys: Vec<Signed<SecureStep>>,
}

/// One step of a secure round, from one member (or, for the survivor list, the round's
/// aggregator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecureStep {
    /// The task.
    pub task: Cid,
    /// The round (1-based).
    pub round: u32,
    /// The message.
    pub step: Step,
}

/// The messages of a secure round, in protocol order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// A member's public keys and seed commitment.
    Keys(Advert),
    /// A member's sealed shares for the others.
    Shares(Dealing),
    /// The aggregator's list of the masked updates it sums.
    Survivors(Survivors),
    /// A member's answer to a survivor list.
    Answer(Reveal),
}

impl Record for SecureStep {
    const DOMAIN: &'static str = "fl/secure-step/1:";
}

/// Why a signed secure step cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecureStepError {
    /// The signer is not a member of the round.
    #[error("{signer} is not a member of this secure round")]
    NotMember {
        /// The signer.
        signer: PeerId,
    },
    /// The step names a slot other than the signer's.
    #[error("{signer} holds {actual} but signed a step for {claimed}")]
    WrongSlot {
        /// The signer.
        signer: PeerId,
        /// The slot the step names.
        claimed: Slot,
        /// The signer's slot.
        actual: Slot,
    },
    /// The step is for another task or round.
    #[error("a step of round {round} of task {task}, not of this round")]
    OtherRound {
        /// Its task.
        task: Cid,
        /// Its round.
        round: u32,
    },
    /// The step itself is malformed.
    #[error(transparent)]
    Protocol(#[from] crate::secagg::SecAggError),
}

/// A round's members, in slot order: the sorted peer ids of those who may deal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureMembers(Vec<PeerId>);

impl SecureMembers {
    /// The members of a round, sorted and deduplicated; at most 255.
    pub fn new(mut peers: Vec<PeerId>) -> Result<Self, crate::secagg::SecAggError> {
        peers.sort();
        peers.dedup();
        if peers.len() > usize::from(crate::secagg::MAX_MEMBERS) || peers.len() < 2 {
            return Err(crate::secagg::SecAggError::Members {
                members: peers.len().min(usize::from(u16::MAX)) as u16,
            });
        }
        Ok(Self(peers))
    }

    /// A peer's slot.
    pub fn slot(&self, peer: &PeerId) -> Option<Slot> {
        self.0.binary_search(peer).ok().map(|i| Slot(i as u8))
    }

    /// The peer at a slot.
    pub fn peer(&self, slot: Slot) -> Option<&PeerId> {
        self.0.get(usize::from(slot.0))
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a round has at least two members.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl SecureRecord {
    /// The record as its file's bytes (DAG-CBOR).
    pub fn to_bytes(&self) -> Result<Vec<u8>, SecAggError> {
        serde_ipld_dagcbor::to_vec(self).map_err(|e| SecAggError::Decode {
            what: "secure record",
            reason: e.to_string(),
        })
    }

    /// Reads a record from its file's bytes (bounded by the caller).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecAggError> {
        serde_ipld_dagcbor::from_slice(bytes).map_err(|e| SecAggError::Decode {
            what: "secure record",
            reason: e.to_string(),
        })
    }
}

impl SecureStep {
    /// The session its keys and masks are bound to.
    pub fn session(task: &Cid, round: u32) -> Session {
        Session::new(&task.to_bytes(), round)
    }

    /// Checks a step verified as signed by `signer` against the round: its task and round,
    /// the signer's membership and slot, and the step's shape. Whether the signer of a
    /// survivor list is the round's aggregator is the round's rule, not checked here.
    pub fn check(
        &self,
        signer: &PeerId,
        task: &Cid,
        round: u32,
        members: &SecureMembers,
        params: &Params,
    ) -> Result<(), SecureStepError> {
        if self.task != *task || self.round != round {
            return Err(SecureStepError::OtherRound {
                task: self.task,
                round: self.round,
            });
        }
        let actual = members
            .slot(signer)
            .ok_or(SecureStepError::NotMember { signer: *signer })?;
        let claimed = match &self.step {
            Step::Keys(advert) => Some(advert.member),
            Step::Shares(dealing) => {
                dealing.check(params)?;
                Some(dealing.dealer)
            }
            Step::Answer(reveal) => {
                if reveal.seeds.len() + reveal.mask_keys.len() > usize::from(params.members) {
                    return Err(crate::secagg::SecAggError::Survivors {
                        reason: "an answer with more shares than members",
                    }
                    .into());
                }
                Some(reveal.responder)
            }
            Step::Survivors(survivors) => {
                survivors.check(params)?;
                None
            }
        };
        match claimed {
            Some(claimed) if claimed != actual => Err(SecureStepError::WrongSlot {
                signer: *signer,
                claimed,
                actual,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::task::tests::task as task_record;
    use crate::records::{DpParams, RoundSchedule};
    use crate::records::{Keypair, Signed};
    use crate::secagg::Member;
    use crate::tensors::Encoding;
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    fn task() -> Cid {
        crate::content::dagcbor::encode(&"task")
            .unwrap()
            .cid()
            .to_owned()
    }

    #[test]
    fn secure_aggregation_is_left_out_when_off_and_needs_members_and_room_for_the_noise() {
        let plain = task_record(RoundSchedule::Constant);
        assert!(
            !plain
                .to_block()
                .expect("encodes")
                .data()
                .windows(6)
                .any(|w| w == b"secure")
        );
        let members: Vec<PeerId> = (0..10).map(|_| PeerId::random()).collect();
        let secure = Task {
            members: Some(members),
            secure: Some(SecureAggregation {
                threshold: 7,
                range: 1.0,
                bits: 20,
            }),
            ..plain.clone()
        };
        let back = Task::from_block(&secure.to_block().expect("encodes")).expect("decodes");
        assert_eq!(back, secure);
        let field = |t: &Task| match t.validate() {
            Err(TaskError::Invalid { field, .. }) => Some(field),
            Err(TaskError::Secure(_)) => Some("secure settings"),
            _ => None,
        };
        let open = Task {
            members: None,
            ..secure.clone()
        };
        assert_eq!(field(&open), Some("secure"));
        let int8 = Task {
            update_encoding: Encoding::Int8,
            ..secure.clone()
        };
        assert_eq!(field(&int8), Some("update_encoding"));
        let low = Task {
            secure: Some(SecureAggregation {
                threshold: 5,
                range: 1.0,
                bits: 20,
            }),
            ..secure.clone()
        };
        assert_eq!(field(&low), Some("secure settings"));
        // Client-level DP: each of at least 7 members adds z·C/√7; C = 1, z = 1 needs a
        // range of 1 + 4/√7 = 2.51 at least.
        let dp = DpParams {
            clip_norm: 1.0,
            noise_multiplier: 1.0,
            delta: 1e-5,
            level: Some(DpLevel::Client),
            neighbours: None,
            epsilon_budget: None,
        };
        let narrow = Task {
            dp: Some(dp.clone()),
            ..secure.clone()
        };
        assert_eq!(field(&narrow), Some("secure.range"));
        let wide = Task {
            dp: Some(dp),
            secure: Some(SecureAggregation {
                threshold: 7,
                range: 2.6,
                bits: 20,
            }),
            ..secure
        };
        assert_eq!(field(&wide), None);
    }

    #[test]
    fn a_signed_step_is_checked_against_the_signers_slot_task_and_round() {
        let keys: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
        let members =
            SecureMembers::new(keys.iter().map(|k| k.public().to_peer_id()).collect()).unwrap();
        let params = Params::new(4, 3, 1.0, 16).unwrap();
        let task = task();
        let session = SecureStep::session(&task, 2);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let key = &keys[1];
        let peer = key.public().to_peer_id();
        let slot = members.slot(&peer).unwrap();
        let (_, advert) = Member::new(params, session, slot, &mut rng).unwrap();
        let step = SecureStep {
            task,
            round: 2,
            step: Step::Keys(advert.clone()),
        };
        let signed = Signed::sign(step.clone(), key).unwrap();
        let block = signed.to_block().unwrap();
        let back = Signed::<SecureStep>::from_block(&block).unwrap();
        assert_eq!(back.body, step);
        back.body
            .check(&back.signer, &task, 2, &members, &params)
            .unwrap();
        assert!(matches!(
            back.body.check(&back.signer, &task, 3, &members, &params),
            Err(SecureStepError::OtherRound { round: 2, .. })
        ));
        // Another member's keys under this signer: refused.
        let other = Slot((slot.0 + 1) % 4);
        let mut wrong = step.clone();
        wrong.step = Step::Keys(Advert {
            member: other,
            ..advert
        });
        assert!(matches!(
            wrong.check(&peer, &task, 2, &members, &params),
            Err(SecureStepError::WrongSlot { .. })
        ));
        let stranger = Keypair::generate_ed25519().public().to_peer_id();
        assert!(matches!(
            step.check(&stranger, &task, 2, &members, &params),
            Err(SecureStepError::NotMember { .. })
        ));
        // A forged signature does not verify.
        let mut forged = signed.clone();
        forged.body.round = 3;
        assert!(forged.verify().is_err());
    }
}
