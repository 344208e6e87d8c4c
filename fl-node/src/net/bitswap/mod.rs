//! Bitswap 1.2.0 (`/ipfs/bitswap/1.2.0`, also answering 1.1.0), client and server, on any
//! [`Blockstore`].
//!
//! No maintained Bitswap crate works with libp2p 0.57 (see docs/decisions.md), so this is a
//! compact one in rust-libp2p's shape. Like go-bitswap, every message travels on a stream the
//! sender opened, one length-prefixed protobuf after another, and answers go back on the
//! answerer's own stream; Kubo opens a stream per answer, so a connection reads many inbound
//! streams at once.
//!
//! - [`Behaviour`] (in the swarm, `behaviour.rs`) owns the protocol's state: the wants we wait
//!   on, each peer's ledger (`ledger.rs`: its queued wants, serving budget and outstanding
//!   bytes), and the store jobs (`jobs.rs`) that read, hash and write blocks on tokio's
//!   blocking pool, a bounded number at a time, never on the async workers.
//! - `Handler` (`handler.rs`, one per connection) reads inbound streams with the framing of
//!   `codec.rs` and writes our messages, in order, on one outbound stream of ours.
//! - [`Bitswap`] is the cloneable handle the rest of the node uses. It talks to the behaviour
//!   through its own bounded channel, which the behaviour polls in `poll`, so the node's
//!   command loop knows nothing of Bitswap; it keeps the per-fetch policy (which peer next,
//!   when to want again) in the fetching task, as plain async code, and the behaviour tells it
//!   what arrived. [`fetch_dag`] walks whole DAGs with it (`dag.rs`).
//!
//! Each received block is hashed under its CID prefix, and stored only if that CID is wanted.
//! A want lost with a connection that was replaced is sent again, less often each time; a
//! peer that cannot be reached, or says DONT_HAVE, hands the want to the next peer.
//!
//! Limits (the defaults of [`Config`], each a named constant below): frames up to
//! [`MAX_MESSAGE_BYTES`], read in chunks as bytes arrive, whole within
//! [`FRAME_TIMEOUT`] of their first byte; blocks up to [`MAX_BLOCK_BYTES`]; CIDs up to
//! [`MAX_CID_BYTES`]; at most [`MAX_WANTLIST_ENTRIES`] wants read from a message and
//! [`MAX_QUEUED_WANTS_PER_PEER`] queued per peer; [`MAX_INBOUND_STREAMS`] inbound streams read
//! at once per connection and [`MAX_WAITING_STREAMS`] more waiting, each closed after
//! [`IDLE_STREAM_TIMEOUT`] without a frame; [`MAX_OUTSTANDING_BYTES_PER_PEER`] of answers
//! queued per peer and [`MAX_SERVED_PER_SECOND`] served; a write that does not finish within
//! [`WRITE_TIMEOUT`] drops the peer's queue. A peer that sends a malformed or oversized frame
//! is reported ([`Event::PeerMisbehaved`]) and the node disconnects it.

mod behaviour;
mod codec;
mod dag;
mod handler;
mod jobs;
mod ledger;
pub mod message;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cid::Cid;
use fl_core::content::{Block, Blockstore, StoreError};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::mpsc;

pub use behaviour::Behaviour;
pub use codec::ReadError;
pub use dag::{DagError, fetch_dag, fetch_dag_at_most};
pub use jobs::{Store, lookup};
pub use message::{
    MAX_BLOCK_BYTES, MAX_CID_BYTES, MAX_MESSAGE_BYTES, MAX_WANTLIST_ENTRIES, Message,
};

use behaviour::{Arrival, Command};

/// The protocol we speak first.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/bitswap/1.2.0");
/// Older protocol we also answer (same messages, no HAVE / DONT_HAVE).
pub const PROTOCOL_1_1: StreamProtocol = StreamProtocol::new("/ipfs/bitswap/1.1.0");

/// Wants queued per peer; more are dropped (boxo's `MaxQueuedWantlistEntriesPerPeer`).
pub const MAX_QUEUED_WANTS_PER_PEER: usize = 1024;
/// Answer bytes queued for one peer before we read more blocks for it (a slow reader waits).
pub const MAX_OUTSTANDING_BYTES_PER_PEER: usize = 4 << 20;
/// Bytes of blocks served to one peer per second, on average (a token bucket of one second).
pub const MAX_SERVED_PER_SECOND: usize = 512 << 20;
/// Inbound streams read at once per connection (Kubo opens one per answer message).
pub const MAX_INBOUND_STREAMS: usize = 32;
/// Inbound streams waiting to be read per connection; past this they are refused.
pub const MAX_WAITING_STREAMS: usize = 128;
/// Our messages queued per connection; past this they are dropped (their wants fail over).
pub const MAX_QUEUED_MESSAGES: usize = 256;
/// How long an inbound stream may go without a frame before we close it.
pub const IDLE_STREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a frame may take once its first byte came (4 MiB at about 1 Mbit/s).
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long writing one message may take before the peer counts as not reading.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long our idle outbound stream stays open (so idle connections can close).
pub const OUTBOUND_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Store jobs (reading, hashing, writing blocks) running at once on the blocking pool.
pub const MAX_STORE_JOBS: usize = 8;
/// Bytes of received blocks waiting to be hashed; more are refused unhashed.
pub const MAX_UNVERIFIED_BYTES: usize = 64 << 20;
/// Bytes of blocks put in one answer message (Kubo's blocks are 256 KiB; ours up to 1 MiB).
pub const ANSWER_BYTES: usize = 1 << 20;
/// Commands queued from the handles to the behaviour before `fetch` waits.
const COMMAND_QUEUE: usize = 1024;
/// Arrivals queued for one fetch (it reads them as they come).
const ARRIVALS: usize = 32;
/// How long a want waits for an answer before it is sent again (then twice as long, ...):
/// long enough for a busy peer's queued answer to arrive, since a want sent again while its
/// answer is on the way is answered twice (at 1 s, 16 nodes on 2 cores sent a tenth of their
/// bytes twice). Wants lost with a replaced or closed connection are sent again at once
/// (`Behaviour::want_again`).
const REWANT_AFTER: Duration = Duration::from_secs(4);

/// Bitswap's limits; [`Config::default`] takes the constants above.
#[derive(Debug, Clone)]
pub struct Config {
    /// [`MAX_QUEUED_WANTS_PER_PEER`].
    pub max_queued_wants_per_peer: usize,
    /// [`MAX_OUTSTANDING_BYTES_PER_PEER`].
    pub max_outstanding_bytes_per_peer: usize,
    /// [`MAX_SERVED_PER_SECOND`].
    pub max_served_per_second: usize,
    /// [`MAX_INBOUND_STREAMS`].
    pub max_inbound_streams: usize,
    /// [`MAX_WAITING_STREAMS`].
    pub max_waiting_streams: usize,
    /// [`MAX_QUEUED_MESSAGES`].
    pub max_queued_messages: usize,
    /// [`IDLE_STREAM_TIMEOUT`].
    pub idle_stream_timeout: Duration,
    /// [`FRAME_TIMEOUT`].
    pub frame_timeout: Duration,
    /// [`WRITE_TIMEOUT`].
    pub write_timeout: Duration,
    /// [`OUTBOUND_IDLE_TIMEOUT`].
    pub outbound_idle_timeout: Duration,
    /// [`MAX_STORE_JOBS`].
    pub max_store_jobs: usize,
    /// [`MAX_UNVERIFIED_BYTES`].
    pub max_unverified_bytes: usize,
    /// [`ANSWER_BYTES`].
    pub answer_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_queued_wants_per_peer: MAX_QUEUED_WANTS_PER_PEER,
            max_outstanding_bytes_per_peer: MAX_OUTSTANDING_BYTES_PER_PEER,
            max_served_per_second: MAX_SERVED_PER_SECOND,
            max_inbound_streams: MAX_INBOUND_STREAMS,
            max_waiting_streams: MAX_WAITING_STREAMS,
            max_queued_messages: MAX_QUEUED_MESSAGES,
            idle_stream_timeout: IDLE_STREAM_TIMEOUT,
            frame_timeout: FRAME_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            outbound_idle_timeout: OUTBOUND_IDLE_TIMEOUT,
            max_store_jobs: MAX_STORE_JOBS,
            max_unverified_bytes: MAX_UNVERIFIED_BYTES,
            answer_bytes: ANSWER_BYTES,
        }
    }
}

/// What Bitswap tells the swarm's owner.
#[derive(Debug, Clone)]
pub enum Event {
    /// A wanted block arrived, was verified and stored.
    BlockReceived {
        /// The block.
        cid: Cid,
        /// Who sent it.
        from: PeerId,
    },
    /// A want of ours failed at one peer (the fetch goes on to the next).
    WantFailed {
        /// The block wanted.
        cid: Cid,
        /// The peer asked.
        peer: PeerId,
        /// Why.
        reason: WantFailure,
    },
    /// A peer broke the protocol; the node should disconnect it.
    PeerMisbehaved {
        /// The peer.
        peer: PeerId,
        /// What it did.
        violation: Violation,
    },
}

/// Why a want failed at a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WantFailure {
    /// The peer said DONT_HAVE.
    DontHave,
    /// The want could not be written to the peer (no connection, stream or reader).
    Unreachable,
}

/// A protocol violation by a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A frame's length prefix announced more than [`MAX_MESSAGE_BYTES`].
    #[error("frame of {len} bytes announced, over the {max}-byte limit")]
    Oversized {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A frame's length prefix was not a varint.
    #[error("malformed frame length prefix")]
    BadLengthPrefix,
    /// A frame was not a Bitswap message.
    #[error("{0}")]
    Malformed(String),
}

/// Why a block could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No peer had it within the time allowed.
    #[error("no peer sent {cid} (asked {asked} peers)")]
    NotFound {
        /// The block.
        cid: Cid,
        /// Peers asked.
        asked: usize,
    },
    /// No peers to ask.
    #[error("no peers to ask for {0}")]
    NoPeers(Cid),
    /// The local blockstore failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node (its swarm, or the runtime) has stopped.
    #[error("the node has stopped")]
    Stopped,
}

/// Counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blocks sent to peers.
    pub blocks_sent: u64,
    /// Bytes of the blocks sent.
    pub bytes_sent: u64,
    /// Wanted blocks received and stored.
    pub blocks_received: u64,
    /// Bytes of those blocks.
    pub bytes_received: u64,
    /// Blocks received that nobody wanted, or that were malformed.
    pub blocks_refused: u64,
    /// Frames refused as malformed or oversized.
    pub bad_frames: u64,
    /// Inbound streams refused over the per-connection limit.
    pub streams_refused: u64,
    /// Wants of peers dropped over the per-peer queue limit.
    pub wants_dropped: u64,
    /// Answers not delivered (the peer did not read, or its connection went).
    pub answers_dropped: u64,
}

/// Bitswap on a blockstore, as the rest of the node sees it: fetches what the store lacks.
#[derive(Clone)]
pub struct Bitswap {
    store: Store,
    commands: mpsc::Sender<Command>,
    stats: Arc<Mutex<Stats>>,
}

impl std::fmt::Debug for Bitswap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bitswap").finish_non_exhaustive()
    }
}

/// A behaviour for the swarm serving and filling `store` under `config`, and its handle.
pub fn new(store: Store, config: Config) -> (Behaviour, Bitswap) {
    let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
    let stats = Arc::new(Mutex::new(Stats::default()));
    let behaviour = Behaviour::new(config, store.clone(), rx, stats.clone());
    let handle = Bitswap {
        store,
        commands,
        stats,
    };
    (behaviour, handle)
}

impl Bitswap {
    /// Counters so far.
    pub fn stats(&self) -> Stats {
        *lock(&self.stats)
    }

    /// The blockstore served.
    pub fn store(&self) -> &(dyn Blockstore + Send + Sync) {
        &*self.store
    }

    /// The block `cid` names if the store holds it, read on the blocking pool.
    pub async fn held(&self, cid: Cid) -> Result<Option<Block>, FetchError> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || jobs::lookup(&*store, &cid)).await {
            Ok(result) => Ok(result?),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(FetchError::Stopped),
        }
    }

    /// Fetches `cid` from `peers`, one after the other starting at `first`, each given
    /// `per_peer` to answer; stores and returns the verified block.
    pub async fn fetch(
        &self,
        cid: Cid,
        peers: &[PeerId],
        first: usize,
        per_peer: Duration,
    ) -> Result<Block, FetchError> {
        if let Some(block) = self.held(cid).await? {
            return Ok(block);
        }
        if peers.is_empty() {
            return Err(FetchError::NoPeers(cid));
        }
        let (tx, mut rx) = mpsc::channel(ARRIVALS);
        for i in 0..peers.len() {
            let peer = peers[first.wrapping_add(i) % peers.len()];
            let last = i + 1 == peers.len();
            if let Some(block) = self.ask(cid, peer, last, per_peer, &tx, &mut rx).await? {
                return Ok(block);
            }
            self.command(Command::Cancel { cid, peer }).await?;
        }
        // A block whose notice found this fetch's queue full is in the store all the same.
        if let Some(block) = self.held(cid).await? {
            return Ok(block);
        }
        Err(FetchError::NotFound {
            cid,
            asked: peers.len(),
        })
    }

    /// Wants `cid` from `peer` until it comes, `per_peer` passes, or the peer says DONT_HAVE
    /// (or cannot be reached, unless it is the `last` one: that one keeps its time, and is
    /// asked again, dialled afresh, when the timer fires).
    async fn ask(
        &self,
        cid: Cid,
        peer: PeerId,
        last: bool,
        per_peer: Duration,
        tx: &mpsc::Sender<Arrival>,
        rx: &mut mpsc::Receiver<Arrival>,
    ) -> Result<Option<Block>, FetchError> {
        let want = || Command::Want {
            cid,
            peer,
            waiter: tx.clone(),
        };
        self.command(want()).await?;
        let now = tokio::time::Instant::now();
        // A caller's `Duration::MAX` means no deadline, not an overflow.
        let deadline = now
            .checked_add(per_peer)
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
        // A want the peer dropped (its queue full, our connection gone unnoticed) is sent
        // again, less often each time; one lost with a connection the behaviour sends again
        // at once.
        let mut resend = REWANT_AFTER;
        let mut next = tokio::time::Instant::now() + resend;
        loop {
            match tokio::time::timeout_at(deadline.min(next), rx.recv()).await {
                Ok(Some(Arrival::Block(block))) => return Ok(Some(block)),
                Ok(Some(Arrival::DontHave(from))) if from == peer => return Ok(None),
                Ok(Some(Arrival::Unreachable(from))) if from == peer && !last => return Ok(None),
                Ok(Some(Arrival::DontHave(_) | Arrival::Unreachable(_))) => continue,
                Ok(None) => return Ok(None),
                Err(_) if tokio::time::Instant::now() >= deadline => return Ok(None),
                Err(_) => {
                    tracing::debug!(%peer, %cid, "bitswap: no answer yet, wanting again");
                    self.command(want()).await?;
                    resend *= 2;
                    next = tokio::time::Instant::now() + resend;
                }
            }
        }
    }

    /// Sends `peer` a message as it is, outside any fetch, if it is connected: for
    /// deviating from the protocol on purpose (`fl simulate --attack have-flood`) and tests.
    pub async fn send_as_is(&self, peer: PeerId, message: Message) -> Result<(), FetchError> {
        self.command(Command::Send { peer, message }).await
    }

    async fn command(&self, command: Command) -> Result<(), FetchError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| FetchError::Stopped)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
