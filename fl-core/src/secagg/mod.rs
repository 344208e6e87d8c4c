//! Secure aggregation: a round reveals only the sum of its members' updates, and anyone can
//! check that sum from public material alone.
//!
//! This is SecAgg (Bonawitz et al., CCS 2017, <https://eprint.iacr.org/2017/281>) over the
//! complete graph of a round's members, with the consistency rules of its malicious
//! variant. SecAgg+ (Bell et al., CCS 2020) replaces the complete graph by a sparse random
//! one to cut the `O(n)` key agreements per member to `O(log n)`; at the sizes a lab
//! federation runs (at most 255 members a round here, the limit of GF(256) Shamir shares)
//! the complete graph costs a few milliseconds of key agreement and a few KiB a member,
//! so SecAgg is used, and its stronger dropout bound kept.
//!
//! A round runs in four steps, each a public, signed message in the round layer:
//!
//! 1. **Keys** ([`Advert`]): each member publishes two X25519 public keys (one to agree
//!    pairwise masks, one to seal shares) and a commitment to a fresh self-mask seed.
//! 2. **Shares** ([`Dealing`]): each member splits its mask key and its seed into Shamir
//!    shares, `threshold` of `members` needed, seals each holder's pair with
//!    ChaCha20-Poly1305 under a key only that holder can agree, and commits to every
//!    share with a hash, so a revealed share can be checked by anyone.
//! 3. **Masked update** ([`MaskedInput`]): each member quantises its update to the ring
//!    `Z/2^k` ([`Quantiser`]) and adds its self-mask and, for every other member that
//!    dealt, a pairwise mask with opposite signs at the two ends, so pairwise masks cancel
//!    in the sum. Alone it is uniformly random: indistinguishable from the masks alone.
//! 4. **Unmasking** ([`Survivors`], [`Reveal`], [`SecureSum`]): the aggregator names the
//!    members whose masked update it sums; every member answers one such list a round,
//!    revealing its share of each survivor's seed and of each dropped member's mask key,
//!    never both for one member. From `threshold` valid shares the aggregator recovers
//!    those secrets, removes the masks, and publishes the sum with the secrets it used,
//!    which [`verify`] checks against the members' commitments and recomputes.
//!
//! What it guarantees, with `t` the threshold and `n` the members:
//! - **Only the sum.** A single curious member, the aggregator included, learns nothing of
//!   another member's update beyond the sum: each update stays under at least one pairwise
//!   mask it cannot remove. Privacy holds against any `c` colluding members, the
//!   aggregator among them, while `t > (n + c) / 2`; [`Params::default_threshold`] picks
//!   `⌊2n/3⌋ + 1`, which tolerates `c < n/3`.
//! - **Dropouts.** Up to `n - t` members may vanish at any point after dealing; with fewer
//!   than `t` survivors no member answers and the round refuses to unmask.
//! - **Verifiable.** The published sum is a function of public records (adverts, dealings,
//!   masked updates, the survivor list and the revealed secrets): [`verify`] recomputes it
//!   and refuses a sum off by one unit in one coordinate.
//! - **What it cannot check.** A member's input is hidden, so its range, weight and clip
//!   norm are not verified: a member may send any value of the ring. Quantisation bounds
//!   every honest input to `[-range, range]` per coordinate, and the sum is exact for
//!   honest inputs; a lying member can move the mean by at most `2^k / survivors` ring units
//!   a coordinate. Robust rules that need individual updates (median, trimmed mean, Krum)
//!   cannot run on a masked round; FedAvg with equal weights can.
//!
//! | module | what |
//! | --- | --- |
//! | [`ring`] | quantisation of float updates to `Z/2^k` with a stated bound, ring vectors |
//! | [`keys`] | key pairs, key agreement, mask expansion, commitments |
//! | [`shares`] | Shamir shares of the mask key and seed, sealed to their holder |
//! | [`member`] | one member's side of a round, step by step |
//! | [`unmask`] | the aggregator's unmasking and the public verification of its sum |

pub mod keys;
pub mod member;
pub mod ring;
pub mod shares;
pub mod unmask;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use keys::Advert;
pub use member::{MaskedInput, Member};
pub use ring::Quantiser;
pub use shares::{Dealing, Kind};
pub use unmask::{
    Collector, Public, Reveal, Revealed, SecureSum, Survivor, Survivors, Unmasked, survivors_among,
    unmask, verify,
};

/// A SHA-256 digest: of a commitment, of a masked update, of a survivor list.
pub type Digest = [u8; 32];

/// A member's place in a round's sorted member list (0-based): its Shamir x is `slot + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Slot(pub u8);

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "member {}", self.0)
    }
}

/// What binds every key, mask and share of a round to that round: a hash of the task and
/// the round, so nothing from one round can be replayed in another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Session(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl Session {
    /// The session of round `round` of the task whose record has these bytes (its CID's).
    pub fn new(task: &[u8], round: u32) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"fl-secagg/session/v1");
        hash.update((task.len() as u64).to_be_bytes());
        hash.update(task);
        hash.update(round.to_be_bytes());
        Self(hash.finalize().into())
    }
}

/// Hashes labelled parts into a [`Digest`], each part length-prefixed so no two part lists collide.
pub(crate) fn digest(label: &str, session: &Session, parts: &[&[u8]]) -> Digest {
    let mut hash = Sha256::new();
    hash.update(b"fl-secagg/");
    hash.update((label.len() as u64).to_be_bytes());
    hash.update(label.as_bytes());
    hash.update(session.0);
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// Most members a round may have: GF(256) Shamir shares have 255 non-zero x values.
pub const MAX_MEMBERS: u16 = 255;

/// Largest quantisation range: far beyond any update, and small enough that `2·range`
/// and the quantisation scale stay finite.
pub const MAX_RANGE: f64 = 1e12;

/// Most quantisation bits a member's input may have.
pub const MAX_BITS: u8 = 24;

/// The settings every member of a secure round must share.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Members of the round (those who may deal).
    pub members: u16,
    /// Shares needed to recover a secret: also the fewest survivors a round unmasks.
    pub threshold: u16,
    /// Each coordinate of an update is clamped to `[-range, range]` before quantising.
    pub range: f64,
    /// Quantisation bits of one member's input, `1..=24`.
    pub bits: u8,
}

impl Params {
    /// Checked settings.
    pub fn new(members: u16, threshold: u16, range: f64, bits: u8) -> Result<Self, SecAggError> {
        let params = Self {
            members,
            threshold,
            range,
            bits,
        };
        params.check()?;
        Ok(params)
    }

    /// `⌊2n/3⌋ + 1`: private against fewer than `n/3` colluding members, and tolerant of
    /// `n - t` dropouts.
    pub fn default_threshold(members: u16) -> u16 {
        (members * 2 / 3 + 1).min(members)
    }

    /// Refuses settings under which the protocol cannot keep its guarantees.
    pub fn check(&self) -> Result<(), SecAggError> {
        if !(2..=MAX_MEMBERS).contains(&self.members) {
            return Err(SecAggError::Members {
                members: self.members,
            });
        }
        if self.threshold > self.members || self.threshold * 2 <= self.members {
            return Err(SecAggError::Threshold {
                threshold: self.threshold,
                members: self.members,
            });
        }
        if !(self.range.is_finite() && self.range > 0.0 && self.range <= MAX_RANGE) {
            return Err(SecAggError::Range { range: self.range });
        }
        if !(1..=MAX_BITS).contains(&self.bits) || self.ring_bits() > 32 {
            return Err(SecAggError::Bits {
                bits: self.bits,
                ring_bits: self.ring_bits(),
            });
        }
        Ok(())
    }

    /// Bits `k` of the ring `Z/2^k`: the input bits plus `⌈log2 members⌉`, so a sum of
    /// every member's input never wraps.
    pub fn ring_bits(&self) -> u32 {
        let members = u32::from(self.members.max(1));
        u32::from(self.bits) + (u32::BITS - (members - 1).leading_zeros())
    }

    /// Members that may vanish after dealing with the round still unmasking.
    pub fn tolerated_dropouts(&self) -> u16 {
        self.members - self.threshold
    }

    /// The quantiser of these settings.
    pub fn quantiser(&self) -> Quantiser {
        Quantiser::new(self)
    }

    /// Checks that a slot belongs to the round.
    pub(crate) fn slot(&self, slot: Slot) -> Result<Slot, SecAggError> {
        if u16::from(slot.0) < self.members {
            Ok(slot)
        } else {
            Err(SecAggError::UnknownMember {
                member: slot,
                members: self.members,
            })
        }
    }
}

/// Why a step of secure aggregation refused its input. Each names the member at fault
/// where there is one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecAggError {
    /// Too few or too many members.
    #[error("a secure round needs 2 to {MAX_MEMBERS} members, not {members}")]
    Members {
        /// Members asked for.
        members: u16,
    },
    /// A threshold above the members, or at most half of them.
    #[error(
        "threshold {threshold} of {members} members: it must be more than half of them (an aggregator that shows two survivor lists must not recover both secrets of a member) and at most all"
    )]
    Threshold {
        /// Threshold asked for.
        threshold: u16,
        /// Members.
        members: u16,
    },
    /// A range that is not a positive finite number.
    #[error("quantisation range {range} must be positive and at most {MAX_RANGE:e}")]
    Range {
        /// Range asked for.
        range: f64,
    },
    /// Too many bits for a 32-bit ring.
    #[error(
        "{bits} quantisation bits need a ring of {ring_bits} bits: at most {MAX_BITS} bits, and a ring of at most 32"
    )]
    Bits {
        /// Bits asked for.
        bits: u8,
        /// Ring bits they need.
        ring_bits: u32,
    },
    /// A slot outside the round.
    #[error("{member} is not one of the round's {members} members")]
    UnknownMember {
        /// The slot.
        member: Slot,
        /// Members of the round.
        members: u16,
    },
    /// Two messages of one kind from one member.
    #[error("{member} sent two {what}")]
    Duplicate {
        /// The member.
        member: Slot,
        /// What it sent twice.
        what: &'static str,
    },
    /// A member sent two different masked updates in one round.
    #[error("{member} sent two different masked updates this round: it is left out of the sum")]
    Equivocation {
        /// The member.
        member: Slot,
        /// The digest of the first one seen.
        first: Digest,
        /// The digest of the other.
        second: Digest,
    },
    /// A value of an update is NaN or infinite.
    #[error("update value {index} is {value}: only finite updates can be quantised")]
    NonFinite {
        /// Its position.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A vector of the wrong length.
    #[error("{member}: a vector of {got} values where the round has {expected}")]
    Length {
        /// Whose vector.
        member: Slot,
        /// The round's length.
        expected: usize,
        /// The length received.
        got: usize,
    },
    /// A ring element at or above `2^k`.
    #[error("{member}: value {index} is {value}, outside the ring of {ring_bits} bits")]
    OutOfRange {
        /// Whose vector.
        member: Slot,
        /// The position.
        index: usize,
        /// The value.
        value: u32,
        /// Bits of the ring.
        ring_bits: u32,
    },
    /// A public key whose agreement gives a non-contributory (low-order) secret.
    #[error("{member}'s public key is of low order: an agreement with it is not secret")]
    LowOrderKey {
        /// Whose key.
        member: Slot,
    },
    /// A dealing of the wrong shape.
    #[error("{dealer}'s dealing is malformed: {reason}")]
    Dealing {
        /// The dealer.
        dealer: Slot,
        /// What is wrong (for people; nothing compares it).
        reason: &'static str,
    },
    /// A sealed share that does not open with the holder's key.
    #[error("{dealer}'s sealed shares for {holder} do not open")]
    Sealed {
        /// The dealer.
        dealer: Slot,
        /// The holder.
        holder: Slot,
    },
    /// A share that does not match the dealer's commitment to it.
    #[error("{holder}'s {kind} share of {dealer} does not match {dealer}'s commitment to it")]
    ShareMismatch {
        /// The dealer whose secret it is a share of.
        dealer: Slot,
        /// The member who holds (or revealed) it.
        holder: Slot,
        /// Which secret.
        kind: Kind,
    },
    /// Too few valid shares to recover a secret.
    #[error("{valid} valid {kind} shares of {dealer}, {threshold} needed: the round cannot unmask")]
    TooFewShares {
        /// Whose secret.
        dealer: Slot,
        /// Which secret.
        kind: Kind,
        /// Valid shares at hand.
        valid: usize,
        /// Shares needed.
        threshold: u16,
    },
    /// Shares that recover a secret other than the one committed to: the dealer dealt
    /// inconsistent shares.
    #[error("{dealer}'s {kind} shares recover a secret that is not the one it committed to")]
    Inconsistent {
        /// The dealer.
        dealer: Slot,
        /// Which secret.
        kind: Kind,
    },
    /// Fewer survivors than the threshold: nobody answers, nothing is revealed.
    #[error(
        "{survivors} survivors, {threshold} needed: the round refuses to unmask (answering would let fewer than the threshold reveal a member's masks)"
    )]
    TooFewSurvivors {
        /// Survivors listed.
        survivors: usize,
        /// The threshold.
        threshold: u16,
    },
    /// A survivor list that breaks the protocol's rules.
    #[error("the survivor list is malformed: {reason}")]
    Survivors {
        /// What is wrong (for people; nothing compares it).
        reason: &'static str,
    },
    /// A member asked to answer a second, different survivor list in one round.
    #[error(
        "already answered another survivor list this round: answering a second could reveal both secrets of a member"
    )]
    SecondSurvivorList,
    /// Fewer than the threshold of members took part in a step (advertised keys, or dealt
    /// shares that opened).
    #[error("{present} members took part in the {step}, {threshold} needed")]
    TooFewMembers {
        /// The step.
        step: &'static str,
        /// Members that took part.
        present: usize,
        /// The threshold.
        threshold: u16,
    },
    /// A step taken out of order.
    #[error("{0}")]
    Order(&'static str),
    /// The revealed secrets do not cover the survivor list exactly.
    #[error("{member}'s {kind} is {problem} in the published sum")]
    Secrets {
        /// The member.
        member: Slot,
        /// Which secret.
        kind: Kind,
        /// `missing` or `not expected`.
        problem: &'static str,
    },
    /// A file or record that does not decode.
    #[error("the {what} does not decode: {reason}")]
    Decode {
        /// What it is.
        what: &'static str,
        /// Why not (for people; nothing compares it).
        reason: String,
    },
    /// A published sum of the wrong length.
    #[error("the published sum has {got} values, the round's updates {expected}")]
    SumLength {
        /// The updates' length.
        expected: usize,
        /// The sum's length.
        got: usize,
    },
    /// A published sum that the public material does not give.
    #[error(
        "the published sum is {published} at coordinate {index}, the masked updates and revealed secrets give {recomputed}"
    )]
    SumMismatch {
        /// The first coordinate that differs.
        index: usize,
        /// The published value.
        published: u32,
        /// The recomputed value.
        recomputed: u32,
    },
}
