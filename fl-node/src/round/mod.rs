//! Federated rounds over the network: a node joins a task by its CID, trains and announces
//! its update each round, and follows (or, when its rank says so, makes) the round's signed
//! manifest. Every manifest is checked by recomputing it from the updates it names.
//!
//! | module | what |
//! | --- | --- |
//! | [`compute`] | a round's aggregation as a function of published bytes, and its check |
//! | [`machine`] | the round's decisions (turn, waiting, fork choice, rechecks) as pure functions |
//! | [`participant`] | the round loop of one node |
//! | [`inbox`] | announcements and manifests arriving over gossip, verified and sorted by round |
//! | [`republish`] | a node's latest records sent again, at pauses that grow, for peers that missed them |
//! | [`store`] | what a node remembers across restarts |

pub mod compute;
pub mod inbox;
pub mod machine;
pub mod participant;
pub mod republish;
pub mod store;

use cid::Cid;

pub use participant::{Event, Limits, Participant, ParticipantConfig};
pub use store::{RoundStore, RoundStoreError};

/// Why a round could not be followed, made or checked.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    /// The task record is unusable.
    #[error("task: {0}")]
    Task(String),
    /// This node is not among the task's members.
    #[error("this node ({0}) is not a member of the task")]
    NotMember(libp2p::PeerId),
    /// A file could not be loaded from the repo.
    #[error("loading {what} {cid}: {source}")]
    Load {
        /// What it is.
        what: &'static str,
        /// Its CID.
        cid: Cid,
        /// Why not.
        source: fl_core::tensors::StoredError,
    },
    /// A file could not be stored.
    #[error("storing the {what}: {source}")]
    Store {
        /// What it is.
        what: &'static str,
        /// Why not.
        source: fl_core::tensors::StoredError,
    },
    /// Something could not be fetched from the network.
    #[error("fetching {what}: {source}")]
    Fetch {
        /// What it is.
        what: String,
        /// Why not.
        source: crate::net::NetFetchError,
    },
    /// Aggregation failed.
    #[error("aggregating: {0}")]
    Aggregate(String),
    /// Too few of the announced updates could be used to close the round yet.
    #[error("only {usable} of the announced updates can be used; the task needs {needed}")]
    TooFew {
        /// Updates fetched and valid.
        usable: usize,
        /// The task's minimum.
        needed: usize,
    },
    /// Local training failed.
    #[error("training: {0}")]
    Train(String),
    /// The training data is unusable.
    #[error("data: {0}")]
    Data(String),
    /// Sample-level DP: training this round would take this node's data past the task's
    /// epsilon budget, so the node stops contributing.
    #[error(
        "privacy budget spent: round {round} would take this node's epsilon to {epsilon:.4}, past the task's budget of {budget}; this node stops contributing"
    )]
    BudgetSpent {
        /// The round it would have trained.
        round: u32,
        /// The epsilon after that round.
        epsilon: f64,
        /// The task's budget.
        budget: f64,
    },
    /// A manifest does not hold up to recomputation.
    #[error("manifest refuted: {0}")]
    Refuted(String),
    /// A record is malformed or its signature fails.
    #[error(transparent)]
    Record(#[from] fl_core::records::SignedError),
    /// A record could not be filed in the inbox.
    #[error("filing a record: {0}")]
    Filed(#[from] inbox::FileError),
    /// The repo failed.
    #[error(transparent)]
    Repo(#[from] fl_core::content::RepoError),
    /// The round database failed.
    #[error(transparent)]
    RoundStore(#[from] RoundStoreError),
    /// The network node failed.
    #[error(transparent)]
    Node(#[from] crate::net::NodeError),
}
