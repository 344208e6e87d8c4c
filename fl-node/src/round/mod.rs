//! Federated rounds over the network: a node joins a task by its CID, trains and announces
//! its update each round, and follows (or, when its rank says so, makes) the round's signed
//! manifest. Every manifest is checked by recomputing it from the updates it names.
//!
//! | module | what |
//! | --- | --- |
//! | [`claim`] | what an announcement may claim (samples in bounds; sampled clients its author hosts), pure |
//! | [`attack`] | deviations a node can be told to make (`fl simulate --attack`), to test what honest nodes withstand |
//! | [`compute`] | a round's aggregation as a function of published bytes, and its check |
//! | [`machine`] | the round's decisions (turn, waiting, fork choice, rechecks) as pure functions |
//! | [`inclusion`] | whether a manifest counts the updates a member had in time (fair inclusion), pure |
//! | [`participant`] | the round loop of one node |
//! | [`inputs`] | where a round's blocks and files come from: the repo, then the network, each DAG bounded |
//! | [`verify`] | checking a manifest: its inputs gathered, its claims checked, it recomputed (node and `fl verify`) |
//! | [`refutation`] | why a manifest does not hold up, as data |
//! | [`inbox`] | announcements and manifests arriving over gossip, verified and sorted by round |
//! | [`republish`] | a node's latest records sent again, at pauses that grow, for peers that missed them |
//! | [`secure`] | a secure round's aggregation as a function of its masked updates and its secure record |
//! | [`store`] | what a node remembers across restarts |
//! | [`terms`] | a task record decoded and checked once, its rule and architecture typed |

pub mod attack;
pub mod checking;
pub mod claim;
pub mod compute;
pub mod inbox;
pub mod inclusion;
pub mod inputs;
pub mod machine;
pub mod participant;
pub mod refutation;
pub mod republish;
pub mod secure;
pub mod store;
pub mod terms;
pub mod verify;

use cid::Cid;

pub use checking::Checking;
pub use inputs::Inputs;
pub use participant::{Event, Limits, Participant, ParticipantConfig};
pub use refutation::Refutation;
pub use store::{RoundStore, RoundStoreError};
pub use terms::{Terms, TermsError};

/// Why a round could not be followed, made or checked.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    /// The task record cannot be run.
    #[error(transparent)]
    Terms(#[from] TermsError),
    /// This node is not among the task's members.
    #[error("this node ({0}) is not a member of the task")]
    NotMember(libp2p::PeerId),
    /// A file could not be loaded from the repo.
    #[error("loading the {what} {cid}")]
    Load {
        /// What it is.
        what: &'static str,
        /// Its CID.
        cid: Cid,
        /// Why not.
        #[source]
        source: fl_core::tensors::StoredError,
    },
    /// A model is not one of the task's architecture.
    #[error("model {cid}")]
    Architecture {
        /// The model.
        cid: Cid,
        /// Why not.
        #[source]
        source: fl_core::model::ModelError,
    },
    /// A file could not be stored.
    #[error("storing the {what}")]
    Store {
        /// What it is.
        what: &'static str,
        /// Why not.
        #[source]
        source: fl_core::tensors::StoredError,
    },
    /// A record could not be stored.
    #[error("storing the {what}")]
    StoreRecord {
        /// What it is.
        what: &'static str,
        /// Why not.
        #[source]
        source: fl_core::content::StoreError,
    },
    /// The repo lacks something and there is no network to fetch it from.
    #[error("{what} {cid} is not in the repo")]
    Missing {
        /// What it is.
        what: &'static str,
        /// Its CID.
        cid: Cid,
    },
    /// Something could not be fetched from the network.
    #[error("fetching {what} {cid}")]
    Fetch {
        /// What it is.
        what: &'static str,
        /// Its CID.
        cid: Cid,
        /// Why not.
        #[source]
        source: crate::net::NetFetchError,
    },
    /// A bounded DAG (an update) did not arrive in full within its deadline
    /// ([`inputs::fetch_deadline`]): its sender is too slow, or trickles it on purpose.
    #[error("{what} {cid} did not arrive within {deadline:?}")]
    TooSlow {
        /// What it is.
        what: &'static str,
        /// Its CID.
        cid: Cid,
        /// The deadline it missed.
        deadline: std::time::Duration,
    },
    /// A DAG holds more than its place allows (an update larger than the round's model).
    #[error("{what} {cid} holds more than {limit} bytes")]
    TooLarge {
        /// What it is.
        what: &'static str,
        /// Its CID.
        cid: Cid,
        /// The most it may hold.
        limit: u64,
    },
    /// A block's links could not be read.
    #[error("reading the links of {cid}")]
    Links {
        /// The block.
        cid: Cid,
        /// Why not.
        #[source]
        source: fl_core::content::links::LinksError,
    },
    /// Aggregation failed.
    #[error("aggregating")]
    Aggregate(#[source] aggregator::AggregateError),
    /// Too few of the announced updates could be used to close the round yet.
    #[error("only {usable} of the announced updates can be used; the task needs {needed}")]
    TooFew {
        /// Updates fetched and valid.
        usable: usize,
        /// The task's minimum.
        needed: usize,
    },
    /// Local training failed.
    #[error("training")]
    Train(#[from] fl_core::model::TrainError),
    /// The task's data shards could not be read.
    #[error("the task's data")]
    Shards(#[from] datasets::shard::ShardError),
    /// The task has a population and its clients were not dealt the pool (a bug: joining
    /// deals them).
    #[error("the task's clients were not dealt their data")]
    NoPool,
    /// A client this node was to train is not one of the population's (a bug: only
    /// registered clients are sampled).
    #[error("{0} is not one of the task's clients")]
    NoSuchClient(fl_core::records::ClientId),
    /// The task's data is sharded and this node was given no shard.
    #[error("the task's data is sharded: this node needs a shard index (--shard I)")]
    NoShard,
    /// The node's shard index is not one of the dataset's.
    #[error("shard {index} does not exist: the dataset has {shards} shards")]
    NoSuchShard {
        /// The index given.
        index: usize,
        /// Shards the dataset has.
        shards: usize,
    },
    /// The task brings its own data and this node was given none.
    #[error("the task brings its own data: this node needs a CIFAR-10 directory (--data DIR)")]
    NoData,
    /// The node's own data could not be read.
    #[error("reading {dir}")]
    OwnData {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why not.
        #[source]
        source: datasets::cifar10::ReadError,
    },
    /// Sample-level DP cannot be planned for this node's data (delta too large for it).
    #[error("sample-level privacy")]
    Plan(#[from] fl_core::privacy::plan::PlanError),
    /// The privacy spent could not be accounted.
    #[error("privacy accounting")]
    Accounting(#[from] fl_core::privacy::accountant::AccountantError),
    /// Client-level DP: the update could not be clipped and noised.
    #[error("clipping and noising the update")]
    Noise(#[from] fl_core::privacy::NoiseError),
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
    /// A step of secure aggregation failed.
    #[error("secure aggregation")]
    Secure(#[from] fl_core::secagg::SecAggError),
    /// A manifest does not hold up.
    #[error("manifest refuted")]
    Refuted(#[from] Refutation),
    /// A switch to a chain with no manifest was asked for (a bug, not a peer's doing).
    #[error("switching to an empty chain")]
    EmptyChain,
    /// A blocking worker (training, aggregation) panicked or was cancelled.
    #[error("a worker thread")]
    Worker(#[from] tokio::task::JoinError),
    /// The limits on heavy work were closed: the node is shutting down.
    #[error("the node's work limits closed")]
    Limits(#[from] tokio::sync::AcquireError),
    /// A record is malformed or its signature fails.
    #[error(transparent)]
    Record(#[from] fl_core::records::SignedError),
    /// A record could not be filed in the inbox.
    #[error("filing a record")]
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
