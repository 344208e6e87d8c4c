//! The swarm-wide half of Bitswap: the wants we wait on, each peer's [`Ledger`], the store
//! jobs, and which connection carries what. It runs inside the swarm's task; the [`Bitswap`]
//! handles reach it through a channel it polls.
//!
//! [`Bitswap`]: super::Bitswap

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cid::Cid;
use fl_core::content::Block;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, DialError, FromSwarm, NetworkBehaviour, NotifyHandler,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

use super::handler::{FromBehaviour, Handler, ToBehaviour};
use super::jobs::{self, Answer, Received, Store};
use super::ledger::Ledger;
use super::message::{MAX_WANTLIST_ENTRIES, Message, PresenceType, Want, WantType};
use super::{Config, Event, Stats, WantFailure, lock};

/// What a received block costs against the unverified-bytes budget beyond its own bytes.
const BLOCK_OVERHEAD: usize = 256;
/// One peer's blocks may hold this fraction of the unverified-bytes budget at most (but
/// always one message's worth).
const UNVERIFIED_SHARES: usize = 4;

/// Wants of one peer read from the store per job (HAVEs are cheap; blocks stop at an answer's size).
const WANTS_PER_JOB: usize = 64;
/// Commands taken from the handles per poll before other work gets a turn.
const COMMANDS_PER_POLL: usize = 256;
/// How often closed waiters are pruned and peers whose budget ran out are looked at again.
const HOUSEKEEPING: Duration = Duration::from_millis(100);

/// What the handles ask of the behaviour.
#[derive(Debug)]
pub(super) enum Command {
    /// Want `cid` from `peer`; tell `waiter` what arrives for it.
    Want {
        cid: Cid,
        peer: PeerId,
        waiter: mpsc::Sender<Arrival>,
    },
    /// Tell `peer` we no longer want `cid`.
    Cancel { cid: Cid, peer: PeerId },
    /// Send `peer` this message as it is, if connected.
    Send { peer: PeerId, message: Message },
}

/// What arrived for a wanted block.
#[derive(Debug, Clone)]
pub(super) enum Arrival {
    Block(Block),
    DontHave(PeerId),
    /// Our want could not be written to the peer.
    Unreachable(PeerId),
}

/// A finished store job.
enum Done {
    Answered {
        peer: PeerId,
        /// The ledger it was begun for ([`Ledger::epoch`]).
        epoch: u64,
        answer: Answer,
    },
    Received {
        bytes: usize,
        received: Received,
    },
    /// The job panicked (a bug) or was cancelled: what it held is released.
    Failed {
        /// The peer served and its ledger's epoch, for an answering job.
        peer: Option<(PeerId, u64)>,
        /// The sender of the blocks, for a receiving job.
        from: Option<PeerId>,
        bytes: usize,
    },
}

/// Bitswap as a [`NetworkBehaviour`]: serves the store to peers, fetches for the handles.
pub struct Behaviour {
    config: Config,
    store: Store,
    commands: mpsc::Receiver<Command>,
    commands_open: bool,
    stats: Arc<Mutex<Stats>>,
    /// Who waits on each CID we want.
    wants: HashMap<Cid, Vec<mpsc::Sender<Arrival>>>,
    /// The peers each wanted CID was asked of: only their DONT_HAVE counts.
    asked: HashMap<Cid, HashSet<PeerId>>,
    /// Each connected peer's connections, newest last.
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    /// Messages for peers being dialled.
    unsent: HashMap<PeerId, Vec<Message>>,
    ledgers: HashMap<PeerId, Ledger>,
    /// Received blocks waiting for a job to hash them, with their sender and size.
    unverified: VecDeque<(PeerId, Message, usize)>,
    /// Bytes of received blocks queued or being hashed.
    unverified_bytes: usize,
    /// The same, by sender (each held to a share of the budget).
    unverified_by_peer: HashMap<PeerId, usize>,
    jobs: FuturesUnordered<BoxFuture<'static, Done>>,
    /// Where the next search for a peer to serve starts (round robin).
    rotation: usize,
    /// Ledgers made so far (each one's epoch).
    epochs: u64,
    housekeeping: Option<tokio::time::Interval>,
    events: VecDeque<ToSwarm<Event, FromBehaviour>>,
}

impl Behaviour {
    pub(super) fn new(
        config: Config,
        store: Store,
        commands: mpsc::Receiver<Command>,
        stats: Arc<Mutex<Stats>>,
    ) -> Self {
        Behaviour {
            config,
            store,
            commands,
            commands_open: true,
            stats,
            wants: HashMap::new(),
            asked: HashMap::new(),
            connections: HashMap::new(),
            unsent: HashMap::new(),
            ledgers: HashMap::new(),
            unverified: VecDeque::new(),
            unverified_bytes: 0,
            unverified_by_peer: HashMap::new(),
            jobs: FuturesUnordered::new(),
            rotation: 0,
            epochs: 0,
            housekeeping: None,
            events: VecDeque::new(),
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Want { cid, peer, waiter } => {
                let waiters = self.wants.entry(cid).or_default();
                if !waiters.iter().any(|w| w.same_channel(&waiter)) {
                    waiters.push(waiter);
                }
                self.asked.entry(cid).or_default().insert(peer);
                self.send(peer, want(cid, false));
            }
            // A peer we are not connected to holds no want of ours: no dial to cancel one.
            Command::Cancel { cid, peer } => {
                if let Some(asked) = self.asked.get_mut(&cid) {
                    asked.remove(&peer);
                }
                if self.connections.contains_key(&peer) {
                    self.send(peer, want(cid, true));
                }
            }
            Command::Send { peer, message } => {
                if self.connections.contains_key(&peer) {
                    self.send(peer, message);
                }
            }
        }
    }

    /// Sends our `message` to `peer` on its newest connection, dialling it if need be.
    fn send(&mut self, peer: PeerId, message: Message) {
        if let Some(&connection) = self.connections.get(&peer).and_then(|c| c.last()) {
            self.events.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(connection),
                event: FromBehaviour::Send {
                    message,
                    answer_bytes: 0,
                },
            });
            return;
        }
        let unsent = self.unsent.entry(peer).or_default();
        if unsent.is_empty() {
            self.events.push_back(ToSwarm::Dial {
                opts: DialOpts::peer_id(peer)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
            });
        }
        if unsent.len() < self.config.max_queued_messages {
            unsent.push(message);
        }
    }

    /// Sends `peer` again the wants still open that were asked of it (but those in `sent`),
    /// on its newest connection: a want lives in a connection, so one that was replaced or
    /// closed took ours with it. (Fetches also want again on a timer, rarely: a want sent
    /// again while its answer is on the way is answered twice.)
    fn want_again(&mut self, peer: PeerId, sent: &HashSet<Cid>) {
        let open: Vec<Want> = self
            .asked
            .iter()
            .filter(|(cid, peers)| {
                peers.contains(&peer) && self.wants.contains_key(*cid) && !sent.contains(*cid)
            })
            .map(|(cid, _)| Want {
                cid: *cid,
                kind: WantType::Block,
                cancel: false,
                send_dont_have: true,
            })
            .collect();
        for chunk in open.chunks(MAX_WANTLIST_ENTRIES) {
            self.send(peer, Message::with_wants(chunk, false));
        }
    }

    /// Tells whoever waits on `cid` what arrived.
    fn notify(&self, cid: &Cid, arrival: Arrival) {
        for waiter in self.wants.get(cid).into_iter().flatten() {
            let _ = waiter.try_send(arrival.clone());
        }
    }

    /// Our wants for `cids` did not reach `peer`: their fetches ask the next peer.
    fn unreachable(&mut self, peer: PeerId, cids: Vec<Cid>) {
        for cid in cids {
            if self.wants.contains_key(&cid) {
                self.notify(&cid, Arrival::Unreachable(peer));
                self.event(Event::WantFailed {
                    cid,
                    peer,
                    reason: WantFailure::Unreachable,
                });
            }
        }
    }

    fn event(&mut self, event: Event) {
        self.events.push_back(ToSwarm::GenerateEvent(event));
    }

    fn prune_wants(&mut self) {
        self.wants.retain(|_, waiters| {
            waiters.retain(|w| !w.is_closed());
            !waiters.is_empty()
        });
        let wants = &self.wants;
        self.asked.retain(|cid, _| wants.contains_key(cid));
    }

    /// One message from `peer`: presences for our wants, its wants, blocks for us.
    fn on_message(&mut self, peer: PeerId, mut message: Message) {
        // A DONT_HAVE counts once per message, and only from a peer the CID was asked of: a
        // flood of them cannot crowd out a block's notice or the swarm's other events.
        let mut seen = HashSet::new();
        for (cid, presence) in message.presences() {
            let asked = self.asked.get(&cid).is_some_and(|a| a.contains(&peer));
            if presence == PresenceType::DontHave && asked && seen.insert(cid) {
                self.notify(&cid, Arrival::DontHave(peer));
                self.event(Event::WantFailed {
                    cid,
                    peer,
                    reason: WantFailure::DontHave,
                });
            }
        }
        let full = message.wantlist.as_ref().is_some_and(|w| w.full);
        let wants = message.wants();
        // Wants are queued only for a peer with a connection (whose closing frees them).
        if (full || !wants.is_empty()) && self.connections.contains_key(&peer) {
            let config = &self.config;
            let epochs = &mut self.epochs;
            let ledger = self.ledgers.entry(peer).or_insert_with(|| {
                *epochs += 1;
                let mut ledger = Ledger::new(
                    config.max_queued_wants_per_peer,
                    config.max_served_per_second,
                    Instant::now(),
                );
                ledger.epoch = *epochs;
                ledger
            });
            let dropped = ledger.receive(wants, full);
            if dropped > 0 {
                tracing::debug!(%peer, dropped, "bitswap: want queue full, wants dropped");
                lock(&self.stats).wants_dropped += dropped as u64;
            }
        }
        let blocks = Message {
            blocks: std::mem::take(&mut message.blocks),
            payload: std::mem::take(&mut message.payload),
            ..Message::default()
        };
        let count = blocks.blocks.len() + blocks.payload.len();
        if count == 0 {
            return;
        }
        // Each block costs its bytes and a share for its hashing and bookkeeping, so empty
        // blocks are not free to queue.
        let bytes = blocks.blocks.iter().map(Vec::len).sum::<usize>()
            + blocks.payload.iter().map(|b| b.data.len()).sum::<usize>()
            + count * BLOCK_OVERHEAD;
        self.prune_wants();
        // Blocks are taken only from a peer we asked for something, and within its share of
        // the hashing budget: one peer's junk cannot crowd out the blocks others send.
        let asked = self.asked.values().any(|a| a.contains(&peer));
        let held = self.unverified_by_peer.get(&peer).copied().unwrap_or(0);
        let share = self.config.max_unverified_bytes / UNVERIFIED_SHARES;
        if !asked
            || self.unverified_bytes + bytes > self.config.max_unverified_bytes
            || held + bytes > share.max(bytes.min(self.config.max_unverified_bytes))
        {
            tracing::debug!(%peer, count, "bitswap: blocks refused unhashed (unasked or over the limit)");
            lock(&self.stats).blocks_refused += count as u64;
            return;
        }
        self.unverified_bytes += bytes;
        *self.unverified_by_peer.entry(peer).or_default() += bytes;
        self.unverified.push_back((peer, blocks, bytes));
    }

    /// Starts store jobs while there are free slots: received blocks first, then answers.
    fn start_jobs(&mut self) {
        while self.jobs.len() < self.config.max_store_jobs {
            if let Some((peer, blocks, bytes)) = self.unverified.pop_front() {
                let wanted: HashSet<Cid> = self.wants.keys().copied().collect();
                let store = self.store.clone();
                let job = tokio::task::spawn_blocking(move || Done::Received {
                    bytes,
                    received: Received {
                        from: Some(peer),
                        ..jobs::receive(&*store, &blocks, &wanted)
                    },
                });
                self.jobs.push(
                    job.map(move |r| {
                        r.unwrap_or(Done::Failed {
                            peer: None,
                            from: Some(peer),
                            bytes,
                        })
                    })
                    .boxed(),
                );
                continue;
            }
            let Some(peer) = self.next_to_serve() else {
                return;
            };
            let Some(ledger) = self.ledgers.get_mut(&peer) else {
                return;
            };
            ledger.serving = true;
            let epoch = ledger.epoch;
            let wants = ledger.take(WANTS_PER_JOB);
            let (store, max) = (self.store.clone(), self.config.answer_bytes);
            let job = tokio::task::spawn_blocking(move || Done::Answered {
                peer,
                epoch,
                answer: jobs::answer(&*store, wants, max),
            });
            self.jobs.push(
                job.map(move |r| {
                    r.unwrap_or(Done::Failed {
                        peer: Some((peer, epoch)),
                        from: None,
                        bytes: 0,
                    })
                })
                .boxed(),
            );
        }
    }

    /// The next peer, round robin, whose wants may be served now.
    fn next_to_serve(&mut self) -> Option<PeerId> {
        let now = Instant::now();
        let max = self.config.max_outstanding_bytes_per_peer;
        let peers: Vec<PeerId> = self.ledgers.keys().copied().collect();
        for i in 0..peers.len() {
            let peer = peers[(self.rotation + i) % peers.len()];
            if self
                .ledgers
                .get_mut(&peer)
                .is_some_and(|l| l.ready(max, now))
            {
                self.rotation = self.rotation.wrapping_add(i + 1);
                return Some(peer);
            }
        }
        None
    }

    fn on_job(&mut self, done: Done) {
        match done {
            Done::Answered {
                peer,
                epoch,
                answer,
            } => self.on_answer(peer, epoch, answer),
            Done::Received { bytes, received } => {
                self.release_unverified(received.from, bytes);
                let from = received.from;
                {
                    let mut stats = lock(&self.stats);
                    stats.blocks_refused += received.refused;
                    stats.blocks_received += received.stored.len() as u64;
                    stats.bytes_received +=
                        received.stored.iter().map(|b| b.len() as u64).sum::<u64>();
                }
                for block in received.stored {
                    let cid = *block.cid();
                    self.notify(&cid, Arrival::Block(block));
                    if let Some(from) = from {
                        self.event(Event::BlockReceived { cid, from });
                    }
                }
            }
            Done::Failed { peer, from, bytes } => {
                tracing::error!("bitswap: a store job panicked or was cancelled");
                self.release_unverified(from, bytes);
                if let Some((peer, epoch)) = peer
                    && let Some(ledger) = self.ledgers.get_mut(&peer)
                    && ledger.epoch == epoch
                {
                    ledger.serving = false;
                }
            }
        }
    }

    /// Frees `bytes` of the hashing budget that `from`'s blocks held.
    fn release_unverified(&mut self, from: Option<PeerId>, bytes: usize) {
        self.unverified_bytes = self.unverified_bytes.saturating_sub(bytes);
        if let Some(peer) = from
            && let Some(held) = self.unverified_by_peer.get_mut(&peer)
        {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                self.unverified_by_peer.remove(&peer);
            }
        }
    }

    /// Sends `answer` to `peer` on its newest connection, counting it against the peer;
    /// an answer begun for a ledger the peer no longer has (it left and came back) is
    /// dropped, so the new ledger keeps one job at a time.
    fn on_answer(&mut self, peer: PeerId, epoch: u64, answer: Answer) {
        let Some(ledger) = self.ledgers.get_mut(&peer).filter(|l| l.epoch == epoch) else {
            return;
        };
        ledger.serving = false;
        ledger.put_back(answer.rest);
        if answer.message.is_empty() {
            return;
        }
        let Some(&connection) = self.connections.get(&peer).and_then(|c| c.last()) else {
            return;
        };
        // The whole message counts against the peer, presences too: a flood of HAVE wants
        // from a peer that does not read is held back like a flood of block wants.
        // Each answer counts at least its share of the outstanding bytes over the connection's
        // queue, so that small answers (presences) stop the serving before that queue is full.
        let share =
            self.config.max_outstanding_bytes_per_peer / self.config.max_queued_messages.max(1);
        let size = prost::Message::encoded_len(&answer.message).max(share);
        ledger.sent(connection, size, Instant::now());
        {
            let mut stats = lock(&self.stats);
            stats.blocks_sent += answer.blocks as u64;
            stats.bytes_sent += answer.bytes as u64;
        }
        self.events.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler: NotifyHandler::One(connection),
            event: FromBehaviour::Send {
                message: answer.message,
                answer_bytes: size,
            },
        });
    }

    /// Takes commands from the handles; `true` if the per-poll share ran out with more left.
    fn poll_commands(&mut self, cx: &mut Context<'_>) -> bool {
        for _ in 0..COMMANDS_PER_POLL {
            if !self.commands_open {
                return false;
            }
            match self.commands.poll_recv(cx) {
                Poll::Ready(Some(command)) => self.on_command(command),
                Poll::Ready(None) => self.commands_open = false,
                Poll::Pending => return false,
            }
        }
        true
    }
}

/// A message wanting `cid` (with DONT_HAVE asked for), or cancelling that want.
fn want(cid: Cid, cancel: bool) -> Message {
    Message::with_wants(
        &[Want {
            cid,
            kind: WantType::Block,
            cancel,
            send_dont_have: !cancel,
        }],
        false,
    )
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(self.config.clone()))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(self.config.clone()))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.connections
                    .entry(e.peer_id)
                    .or_default()
                    .push(e.connection_id);
                let mut sent = HashSet::new();
                for message in self.unsent.remove(&e.peer_id).into_iter().flatten() {
                    sent.extend(message.wants().iter().map(|w| w.cid));
                    self.events.push_back(ToSwarm::NotifyHandler {
                        peer_id: e.peer_id,
                        handler: NotifyHandler::One(e.connection_id),
                        event: FromBehaviour::Send {
                            message,
                            answer_bytes: 0,
                        },
                    });
                }
                // Wants asked of the peer on a connection it has since replaced (or lost)
                // went with it: asked again on the new one.
                self.want_again(e.peer_id, &sent);
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(list) = self.connections.get_mut(&e.peer_id) {
                    list.retain(|c| *c != e.connection_id);
                    if list.is_empty() {
                        self.connections.remove(&e.peer_id);
                    }
                }
                if e.remaining_established == 0 {
                    self.ledgers.remove(&e.peer_id);
                } else {
                    if let Some(ledger) = self.ledgers.get_mut(&e.peer_id) {
                        ledger.closed(e.connection_id);
                    }
                    // Wants written on the closed connection may be lost with it.
                    self.want_again(e.peer_id, &HashSet::new());
                }
            }
            FromSwarm::DialFailure(e) => {
                // A dial skipped because another is under way is no failure: that one decides.
                if let Some(peer) = e.peer_id
                    && !matches!(e.error, DialError::DialPeerConditionFalse(_))
                    && !self.connections.contains_key(&peer)
                    && let Some(messages) = self.unsent.remove(&peer)
                {
                    tracing::debug!(%peer, "bitswap: cannot reach a peer: {}", e.error);
                    let cids = messages
                        .iter()
                        .flat_map(Message::wants)
                        .filter(|w| !w.cancel)
                        .map(|w| w.cid)
                        .collect();
                    self.unreachable(peer, cids);
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            ToBehaviour::Message(message) => self.on_message(peer, message),
            ToBehaviour::Written { answer_bytes } => {
                if let Some(ledger) = self.ledgers.get_mut(&peer) {
                    ledger.settled(connection, answer_bytes);
                }
            }
            ToBehaviour::Dropped {
                answer_bytes,
                wants,
            } => {
                if let Some(ledger) = self.ledgers.get_mut(&peer) {
                    ledger.settled(connection, answer_bytes);
                }
                if answer_bytes > 0 {
                    lock(&self.stats).answers_dropped += 1;
                }
                self.unreachable(peer, wants);
            }
            ToBehaviour::Violation(violation) => {
                tracing::debug!(%peer, "bitswap: {violation}");
                lock(&self.stats).bad_frames += 1;
                self.event(Event::PeerMisbehaved { peer, violation });
            }
            ToBehaviour::StreamRefused => lock(&self.stats).streams_refused += 1,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(event);
            }
            if self.poll_commands(cx) {
                // More commands wait: come back after the rest of the swarm had its turn.
                cx.waker().wake_by_ref();
            }
            let housekeeping = self.housekeeping.get_or_insert_with(|| {
                let mut every = tokio::time::interval(HOUSEKEEPING);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                every
            });
            // Polled until pending, so that the next tick wakes this task.
            let mut ticked = false;
            while housekeeping.poll_tick(cx).is_ready() {
                ticked = true;
            }
            if ticked {
                self.prune_wants();
            }
            self.start_jobs();
            while let Poll::Ready(Some(done)) = self.jobs.poll_next_unpin(cx) {
                self.on_job(done);
                self.start_jobs();
            }
            if self.events.is_empty() {
                return Poll::Pending;
            }
        }
    }
}
