//! Bitswap 1.2.0 (`/ipfs/bitswap/1.2.0`, also answering 1.1.0), client and server, on the
//! node's blockstore.
//!
//! No maintained Bitswap crate works with libp2p 0.57 (see docs/decisions.md), so this is a
//! compact one on `libp2p-stream`: like go-bitswap, every message travels on a stream the
//! sender opened, one length-prefixed protobuf after another, and answers go back on the
//! answerer's own stream. Each received block is hashed under its CID prefix, and stored only
//! if that CID was wanted.
//!
//! Limits: frames up to [`MAX_MESSAGE_BYTES`], blocks up to [`MAX_BLOCK_BYTES`], at most
//! [`MAX_WANTLIST_ENTRIES`] wants per message, [`MAX_STREAMS_PER_PEER`] inbound streams per
//! peer, and [`MAX_SERVED_PER_SECOND`] bytes served per peer and second. A peer that sends a
//! malformed or oversized frame has its stream closed and is reported as misbehaving (the node
//! disconnects it); wants waiting on a peer that cannot be reached are failed over at once
//! to the next peer, and the last peer is asked again until its time is up.

pub mod message;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cid::Cid;
use fl_core::content::{Block, Blockstore, FsBlockstore, StoreError};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::mpsc;

pub use message::{MAX_BLOCK_BYTES, MAX_MESSAGE_BYTES, MAX_WANTLIST_ENTRIES, Message};
use message::{PresenceType, Want, WantType};

/// The protocol we speak first.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/bitswap/1.2.0");
/// Older protocol we also answer (same messages, no HAVE / DONT_HAVE).
pub const PROTOCOL_1_1: StreamProtocol = StreamProtocol::new("/ipfs/bitswap/1.1.0");
/// Inbound streams one peer may hold open at once.
pub const MAX_STREAMS_PER_PEER: usize = 8;
/// Bytes of blocks served to one peer per second, on average.
pub const MAX_SERVED_PER_SECOND: usize = 512 << 20;
/// Bytes of blocks put in one answer message.
const ANSWER_BYTES: usize = 1 << 20;
/// Messages queued for one peer before new ones are dropped.
const OUTBOX: usize = 64;
/// How long a want waits for an answer before it is sent again (then twice as long, ...).
const REWANT_AFTER: Duration = Duration::from_secs(1);

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
}

/// What arrived for a wanted block.
#[derive(Debug, Clone)]
enum Arrival {
    Block(Block),
    DontHave(PeerId),
    /// No stream could be opened to the peer.
    Unreachable(PeerId),
}

/// Bitswap on a blockstore: serves what the store holds, fetches what it lacks.
#[derive(Clone)]
pub struct Bitswap {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<FsBlockstore>,
    control: libp2p_stream::Control,
    /// Where peers that broke the protocol are reported.
    misbehaving: mpsc::Sender<PeerId>,
    /// Waiters for wanted blocks.
    wants: Mutex<HashMap<Cid, Vec<mpsc::Sender<Arrival>>>>,
    /// Per-peer queues of outgoing messages.
    outboxes: Mutex<HashMap<PeerId, mpsc::Sender<Message>>>,
    /// Inbound streams open per peer.
    streams: Mutex<HashMap<PeerId, usize>>,
    /// Per-peer serving budget: bytes left and when it was last refilled.
    budgets: Mutex<HashMap<PeerId, (f64, Instant)>>,
    stats: Mutex<Stats>,
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
    /// Inbound streams refused over the per-peer limit.
    pub streams_refused: u64,
}

impl std::fmt::Debug for Bitswap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bitswap").finish_non_exhaustive()
    }
}

impl Bitswap {
    /// Starts serving `store` on the streams of `control`, reporting peers that break the
    /// protocol to `misbehaving`; needs a tokio runtime.
    pub fn start(
        store: Arc<FsBlockstore>,
        mut control: libp2p_stream::Control,
        misbehaving: mpsc::Sender<PeerId>,
    ) -> Self {
        let incoming = [PROTOCOL, PROTOCOL_1_1].map(|p| control.accept(p));
        let bitswap = Bitswap {
            inner: Arc::new(Inner {
                store,
                control,
                misbehaving,
                wants: Mutex::default(),
                outboxes: Mutex::default(),
                streams: Mutex::default(),
                budgets: Mutex::default(),
                stats: Mutex::default(),
            }),
        };
        for listener in incoming {
            match listener {
                Ok(mut streams) => {
                    let this = bitswap.clone();
                    tokio::spawn(async move {
                        while let Some((peer, stream)) = streams.next().await {
                            this.clone().on_stream(peer, stream);
                        }
                    });
                }
                Err(e) => tracing::error!("bitswap: cannot accept streams: {e}"),
            }
        }
        bitswap
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        *lock(&self.inner.stats)
    }

    /// The blockstore served.
    pub fn store(&self) -> &FsBlockstore {
        &self.inner.store
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
        if let Some(block) = lookup(&self.inner.store, &cid)? {
            return Ok(block);
        }
        if peers.is_empty() {
            return Err(FetchError::NoPeers(cid));
        }
        let (tx, mut rx) = mpsc::channel(peers.len() + 4);
        lock(&self.inner.wants)
            .entry(cid)
            .or_default()
            .push(tx.clone());
        let result = async {
            let want = Message::with_wants(
                &[Want {
                    cid,
                    kind: WantType::Block,
                    cancel: false,
                    send_dont_have: true,
                }],
                false,
            );
            for i in 0..peers.len() {
                let peer = peers[(first + i) % peers.len()];
                self.send(peer, want.clone());
                let deadline = tokio::time::Instant::now() + per_peer;
                // A want written just before its connection closed is lost with it (peers
                // replace connections), so it is sent again, less often each time.
                let mut resend = REWANT_AFTER;
                let mut next = tokio::time::Instant::now() + resend;
                loop {
                    match tokio::time::timeout_at(deadline.min(next), rx.recv()).await {
                        Ok(Some(Arrival::Block(block))) => return Ok(block),
                        Ok(Some(Arrival::DontHave(from))) if from == peer => break,
                        // Failed over at once while other peers are left; the last one keeps
                        // its time, and is asked again (dialled afresh) when the timer fires.
                        Ok(Some(Arrival::Unreachable(from)))
                            if from == peer && i + 1 < peers.len() =>
                        {
                            break;
                        }
                        Ok(Some(Arrival::DontHave(_) | Arrival::Unreachable(_))) => continue,
                        Ok(None) => break,
                        Err(_) if tokio::time::Instant::now() >= deadline => break,
                        Err(_) => {
                            tracing::debug!(%peer, %cid, "bitswap: no answer yet, wanting again");
                            self.send(peer, want.clone());
                            resend *= 2;
                            next = tokio::time::Instant::now() + resend;
                        }
                    }
                }
                self.cancel(peer, cid);
            }
            Err(FetchError::NotFound {
                cid,
                asked: peers.len(),
            })
        }
        .await;
        let mut wants = lock(&self.inner.wants);
        if let Some(waiters) = wants.get_mut(&cid) {
            waiters.retain(|w| !w.is_closed() && !w.same_channel(&tx));
            if waiters.is_empty() {
                wants.remove(&cid);
            }
        }
        result
    }

    /// Tells `peer` we no longer want `cid`.
    fn cancel(&self, peer: PeerId, cid: Cid) {
        let cancel = Want {
            cid,
            kind: WantType::Block,
            cancel: true,
            send_dont_have: false,
        };
        self.send(peer, Message::with_wants(&[cancel], false));
    }

    /// Queues `message` for `peer`, starting its writer if needed; drops it if the queue is full.
    fn send(&self, peer: PeerId, message: Message) {
        let mut outboxes = lock(&self.inner.outboxes);
        let tx = outboxes
            .entry(peer)
            .or_insert_with(|| self.writer(peer))
            .clone();
        drop(outboxes);
        if let Err(e) = tx.try_send(message) {
            tracing::debug!(%peer, "bitswap: outbox full or closed: {e}");
            if matches!(e, mpsc::error::TrySendError::Closed(_)) {
                lock(&self.inner.outboxes).remove(&peer);
            }
        }
    }

    /// A task that writes `peer`'s queued messages on one stream, reopened once if it breaks.
    fn writer(&self, peer: PeerId) -> mpsc::Sender<Message> {
        let (tx, mut rx) = mpsc::channel::<Message>(OUTBOX);
        let mut control = self.inner.control.clone();
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut stream = None;
            while let Some(message) = rx.recv().await {
                let frame = message.encode_frame();
                for _attempt in 0..2 {
                    if stream.is_none() {
                        match control.open_stream(peer, PROTOCOL).await {
                            Ok(s) => stream = Some(s),
                            Err(e) => {
                                tracing::debug!(%peer, "bitswap: cannot open a stream: {e}");
                                // Whoever waits on this peer asks the next one now.
                                if let Some(inner) = inner.upgrade() {
                                    Bitswap { inner }.peer_gone(peer);
                                }
                                break;
                            }
                        }
                    }
                    if let Some(s) = stream.as_mut() {
                        match write_frame(s, &frame).await {
                            Ok(()) => {
                                tracing::trace!(%peer, bytes = frame.len(), "bitswap: sent");
                                break;
                            }
                            Err(e) => {
                                tracing::debug!(%peer, "bitswap: write failed: {e}");
                                stream = None;
                            }
                        }
                    }
                }
            }
            if let Some(inner) = inner.upgrade() {
                lock(&inner.outboxes).remove(&peer);
            }
        });
        tx
    }

    /// Reads `peer`'s messages from an inbound stream until it ends or misbehaves.
    fn on_stream(self, peer: PeerId, mut stream: libp2p::Stream) {
        {
            let mut streams = lock(&self.inner.streams);
            let open = streams.entry(peer).or_default();
            if *open >= MAX_STREAMS_PER_PEER {
                lock(&self.inner.stats).streams_refused += 1;
                tracing::debug!(%peer, "bitswap: too many streams, refusing one");
                return;
            }
            *open += 1;
        }
        tokio::spawn(async move {
            loop {
                match read_frame(&mut stream).await {
                    Ok(Some(frame)) => match Message::decode_frame(&frame) {
                        Ok(message) => self.on_message(peer, message),
                        Err(e) => {
                            tracing::debug!(%peer, "bitswap: {e}");
                            self.misbehaved(peer);
                            break;
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(%peer, "bitswap: stream ended: {e}");
                        if e.kind() == std::io::ErrorKind::InvalidData {
                            self.misbehaved(peer);
                        }
                        break;
                    }
                }
            }
            let _ = stream.close().await;
            let mut streams = lock(&self.inner.streams);
            if let Some(open) = streams.get_mut(&peer) {
                *open = open.saturating_sub(1);
                if *open == 0 {
                    streams.remove(&peer);
                }
            }
        });
    }

    /// Counts a protocol violation by `peer` and reports it, so the node disconnects it.
    fn misbehaved(&self, peer: PeerId) {
        lock(&self.inner.stats).bad_frames += 1;
        // A full queue means disconnections are already pending; this one can wait for the
        // peer's next offence.
        let _ = self.inner.misbehaving.try_send(peer);
    }

    /// Fails every want over from `peer`, which cannot be reached, to the next peer, if any.
    fn peer_gone(&self, peer: PeerId) {
        let waiters: Vec<_> = lock(&self.inner.wants)
            .values()
            .flatten()
            .cloned()
            .collect();
        for w in waiters {
            let _ = w.try_send(Arrival::Unreachable(peer));
        }
    }

    /// Handles one message from `peer`: blocks and presences for our wants, then its wants.
    fn on_message(&self, peer: PeerId, message: Message) {
        tracing::trace!(
            %peer,
            blocks = message.payload.len() + message.blocks.len(),
            presences = message.block_presences.len(),
            wants = message.wantlist.as_ref().map_or(0, |w| w.entries.len()),
            "bitswap: message"
        );
        for block in message.blocks() {
            match block {
                Ok(block) => self.on_block(peer, block),
                Err(e) => {
                    lock(&self.inner.stats).blocks_refused += 1;
                    tracing::debug!(%peer, "bitswap: {e}");
                }
            }
        }
        for (cid, presence) in message.presences() {
            if presence == PresenceType::DontHave {
                self.notify(&cid, Arrival::DontHave(peer));
            }
        }
        self.answer(peer, message.wants());
    }

    fn on_block(&self, peer: PeerId, block: Block) {
        let cid = *block.cid();
        if !lock(&self.inner.wants).contains_key(&cid) {
            lock(&self.inner.stats).blocks_refused += 1;
            tracing::debug!(%peer, %cid, "bitswap: unwanted block dropped");
            return;
        }
        if let Err(e) = self.inner.store.put(block.clone()) {
            tracing::warn!(%cid, "bitswap: cannot store a received block: {e}");
            return;
        }
        {
            let mut stats = lock(&self.inner.stats);
            stats.blocks_received += 1;
            stats.bytes_received += block.len() as u64;
        }
        self.notify(&cid, Arrival::Block(block));
    }

    fn notify(&self, cid: &Cid, arrival: Arrival) {
        let waiters = lock(&self.inner.wants)
            .get(cid)
            .cloned()
            .unwrap_or_default();
        for w in waiters {
            let _ = w.try_send(arrival.clone());
        }
    }

    /// Answers `peer`'s wants from the store, within its serving budget.
    fn answer(&self, peer: PeerId, wants: Vec<Want>) {
        let mut reply = Message::default();
        let mut bytes = 0;
        for want in wants.into_iter().filter(|w| !w.cancel) {
            let block = match lookup(&self.inner.store, &want.cid) {
                Ok(block) => block,
                Err(e) => {
                    tracing::warn!(cid = %want.cid, "bitswap: store: {e}");
                    None
                }
            };
            match (block, want.kind) {
                (Some(block), WantType::Block) => {
                    if !self.spend(peer, block.len()) {
                        tracing::debug!(%peer, "bitswap: serving budget spent, want dropped");
                        continue;
                    }
                    if bytes + block.len() > ANSWER_BYTES && !reply.is_empty() {
                        self.send(peer, std::mem::take(&mut reply));
                        bytes = 0;
                    }
                    bytes += block.len();
                    reply.push_block(&block);
                    let mut stats = lock(&self.inner.stats);
                    stats.blocks_sent += 1;
                    stats.bytes_sent += block.len() as u64;
                }
                (Some(_), WantType::Have) => reply.push_presence(&want.cid, PresenceType::Have),
                (None, _) if want.send_dont_have => {
                    reply.push_presence(&want.cid, PresenceType::DontHave)
                }
                (None, _) => {}
            }
        }
        if !reply.is_empty() {
            self.send(peer, reply);
        }
    }

    /// Takes `bytes` from `peer`'s serving budget (a token bucket of one second's worth).
    fn spend(&self, peer: PeerId, bytes: usize) -> bool {
        let mut budgets = lock(&self.inner.budgets);
        let now = Instant::now();
        let rate = MAX_SERVED_PER_SECOND as f64;
        let (left, at) = budgets.entry(peer).or_insert((rate, now));
        *left = (*left + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *left >= bytes as f64 {
            *left -= bytes as f64;
            true
        } else {
            false
        }
    }
}

/// Fetches the whole DAG under `root` from `peers`, `window` blocks at a time spread over
/// the peers, and returns the number of blocks fetched.
pub async fn fetch_dag(
    bitswap: &Bitswap,
    root: Cid,
    peers: &[PeerId],
    window: usize,
    per_peer: Duration,
) -> Result<u64, DagError> {
    fetch_dag_at_most(bitswap, root, peers, window, per_peer, u64::MAX).await
}

/// Fetches the DAG under `root` as [`fetch_dag`] does, stopping with
/// [`DagError::TooLarge`] once its distinct blocks (here already, or fetched) hold more than
/// `max_bytes`: what a peer names is not trusted to be as small as it should be.
pub async fn fetch_dag_at_most(
    bitswap: &Bitswap,
    root: Cid,
    peers: &[PeerId],
    window: usize,
    per_peer: Duration,
    max_bytes: u64,
) -> Result<u64, DagError> {
    let mut held = 0u64;
    let mut hold = |block: &Block| {
        held = held.saturating_add(block.len() as u64);
        if held > max_bytes {
            return Err(DagError::TooLarge {
                root,
                limit: max_bytes,
            });
        }
        Ok(())
    };
    let mut queue = VecDeque::from([root]);
    // Each distinct block is walked once: a block may link the same child many times, and
    // such blocks nest (a few kilobytes could otherwise name billions of visits).
    let mut seen = std::collections::HashSet::from([root]);
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut fetched = 0u64;
    let mut next_peer = 0usize;
    loop {
        while in_flight.len() < window.max(1) {
            let Some(cid) = queue.pop_front() else { break };
            if let Some(block) = lookup(bitswap.store(), &cid)? {
                hold(&block)?;
                let links = fl_core::content::links::links(&block)?;
                queue.extend(links.into_iter().filter(|c| seen.insert(*c)));
                // Walking a large DAG that is already here must not starve the runtime.
                tokio::task::yield_now().await;
                continue;
            }
            let first = next_peer;
            next_peer += 1;
            let bitswap = bitswap.clone();
            in_flight.push(async move { bitswap.fetch(cid, peers, first, per_peer).await });
        }
        let Some(result) = in_flight.next().await else {
            return Ok(fetched);
        };
        let block = result?;
        hold(&block)?;
        fetched += 1;
        let links = fl_core::content::links::links(&block)?;
        queue.extend(links.into_iter().filter(|c| seen.insert(*c)));
    }
}

/// Why a DAG could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum DagError {
    /// A block could not be fetched.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A block's links could not be read.
    #[error(transparent)]
    Links(#[from] fl_core::content::links::LinksError),
    /// The DAG's distinct blocks hold more bytes than the caller allows.
    #[error("the DAG under {root} holds more than {limit} bytes")]
    TooLarge {
        /// The DAG.
        root: Cid,
        /// The caller's limit.
        limit: u64,
    },
}

/// Writes one length-prefixed frame.
async fn write_frame(stream: &mut libp2p::Stream, frame: &[u8]) -> std::io::Result<()> {
    let mut len = unsigned_varint::encode::usize_buffer();
    stream
        .write_all(unsigned_varint::encode::usize(frame.len(), &mut len))
        .await?;
    stream.write_all(frame).await?;
    stream.flush().await
}

/// Reads one length-prefixed frame; `None` at a clean end of stream.
async fn read_frame(stream: &mut libp2p::Stream) -> std::io::Result<Option<Vec<u8>>> {
    let len = match unsigned_varint::aio::read_usize(&mut *stream).await {
        Ok(len) => len,
        Err(unsigned_varint::io::ReadError::Io(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            return Ok(None);
        }
        Err(unsigned_varint::io::ReadError::Io(e)) => return Err(e),
        Err(e) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e.to_string(),
            ));
        }
    };
    if len > MAX_MESSAGE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {MAX_MESSAGE_BYTES}"),
        ));
    }
    let mut frame = vec![0; len];
    stream.read_exact(&mut frame).await?;
    Ok(Some(frame))
}

/// The block `cid` names, or `None` when the store lacks it.
fn lookup(store: &FsBlockstore, cid: &Cid) -> Result<Option<Block>, StoreError> {
    match store.get(cid) {
        Ok(block) => Ok(Some(block)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
