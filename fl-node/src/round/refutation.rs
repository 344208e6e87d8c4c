//! Why a manifest does not hold up: each reason a verifier can find, as data (what it names
//! and the figures that differ), so logs and tests read the fields, not the wording.

use cid::Cid;
use libp2p::PeerId;

/// Characters of a claimed name kept in a refutation: the signer chose the name, and it may
/// be megabytes long.
pub const CLAIM_CHARS: usize = 64;

/// What is wrong with a manifest.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refutation {
    /// It is not the round that follows the verifier's chain.
    #[error(
        "it is for task {task} round {round} after {prev:?}, expected round {expected_round} after {expected_prev:?}"
    )]
    OtherRound {
        /// Its task.
        task: Cid,
        /// Its round.
        round: u32,
        /// The manifest it follows.
        prev: Option<Cid>,
        /// The round the verifier's chain is at.
        expected_round: u32,
        /// The manifest that chain ends with.
        expected_prev: Option<Cid>,
    },
    /// It starts from another model than the chain's.
    #[error("it starts from model {claimed}, the chain says {chain}")]
    OtherBase {
        /// The model it names.
        claimed: Cid,
        /// The chain's.
        chain: Cid,
    },
    /// A secure round's sum does not hold up against the public material (the members'
    /// keys, the masked updates and the revealed secrets), or its survivor list is not
    /// the one the round's masked updates give.
    #[error("its secure sum does not hold up: {0}")]
    SecureSum(fl_core::secagg::SecAggError),
    /// It names a secure record in a task without secure aggregation, or none in one with.
    #[error(
        "a secure task's manifest names its secure record, and only a secure task's (named: {named})"
    )]
    SecureRecord {
        /// Whether it names one.
        named: bool,
    },
    /// Its rule is not the task's.
    #[error("its rule is {claimed}, the task's {task}")]
    OtherRule {
        /// The rule it names (its first [`CLAIM_CHARS`] characters: a signer chooses it).
        claimed: String,
        /// The task's.
        task: String,
    },
    /// It carries test metrics, which no recomputation can check (evaluations travel as
    /// records of their own): a signer could vary them to grind a lower manifest CID and win
    /// the fork choice.
    #[error("it carries metrics, outside what a recomputation checks")]
    Metrics,
    /// It lists more updates than one round may hold.
    #[error("it lists {listed} updates, more than a round may hold ({max})")]
    TooManyListed {
        /// Updates listed.
        listed: usize,
        /// The most a round holds.
        max: usize,
    },
    /// The announcements given do not match what it lists.
    #[error("it lists {listed} updates, {given} were given")]
    Count {
        /// Updates listed.
        listed: usize,
        /// Announcements given.
        given: usize,
    },
    /// It lists an announcement, or an author, twice.
    #[error("it lists {0} or its author twice")]
    Twice(Cid),
    /// Two announcements it lists name one update file (one author copied the other's).
    #[error("it lists two announcements of update {0}: an update has one author")]
    SharedUpdate(Cid),
    /// It lists an announcement made for another task, round or model.
    #[error("it lists announcement {0}, made for another task, round or model")]
    Foreign(Cid),
    /// It counts a peer the task does not admit.
    #[error("it counts {0}, not a member of the task")]
    NotMember(PeerId),
    /// An announcement it lists claims what the task does not allow (a sample count out of
    /// bounds, a client not sampled this round or not its author's).
    #[error("announcement {announcement}: {reason}")]
    Claim {
        /// The announcement.
        announcement: Cid,
        /// What is wrong with its claims.
        reason: super::claim::ClaimError,
    },
    /// It counts fewer updates than the task's minimum.
    #[error("it counts {counted} updates, the task's minimum is {min}")]
    TooFew {
        /// Updates counted.
        counted: usize,
        /// The task's minimum.
        min: u32,
    },
    /// Its signer announced nothing this round, so may not aggregate it.
    #[error("its signer {0} announced no update this round: not entitled to aggregate")]
    NotEntitled(PeerId),
    /// Its signer does not hold the rank it claims among the round's announcers.
    #[error(
        "its signer {signer} has rank {rank} among the round's announcers, the manifest claims {claimed}"
    )]
    WrongRank {
        /// The signer.
        signer: PeerId,
        /// Its rank.
        rank: usize,
        /// The rank claimed.
        claimed: u32,
    },
    /// It rejects an update for a reason this version has no code for.
    #[error(
        "format: it rejects {update} for {code:?}, which is not a reason code of this version (a manifest written before reasons were codes, or by a newer version): it cannot be recomputed here"
    )]
    UnknownReason {
        /// The update.
        update: Cid,
        /// The reason as written.
        code: String,
    },
    /// Its model is not what its inputs give.
    #[error("its model is {claimed}, but its inputs give {recomputed}")]
    Model {
        /// The model it names.
        claimed: Cid,
        /// The model recomputed.
        recomputed: Cid,
    },
    /// What it lists besides the model differs from a recomputation.
    #[error(
        "its contributions, rejections, server state or privacy figures differ from a recomputation"
    )]
    Listing,
    /// A manifest before it does not link one round back.
    #[error("manifest {manifest} is round {round}, linked from round {from}")]
    BrokenLink {
        /// The earlier manifest.
        manifest: Cid,
        /// Its round.
        round: u32,
        /// The round that links it.
        from: u32,
    },
    /// A manifest after round 1 names no manifest before it.
    #[error("round {0} names no previous manifest")]
    NoPrevious(u32),
    /// The manifest it follows is another task's.
    #[error("its previous manifest {manifest} is of task {task}")]
    ForeignPrevious {
        /// The previous manifest.
        manifest: Cid,
        /// Its task.
        task: Cid,
    },
}
