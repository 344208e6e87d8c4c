//! The libp2p swarm of a node: TCP and QUIC, Noise, Yamux, identify, ping, Kademlia on the
//! IPFS DHT protocol, gossipsub with signed messages and peer scoring, mDNS, and the streams
//! Bitswap runs on. One task owns the swarm; [`Node`] talks to it through a channel.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cid::Cid;
use fl_core::content::FsBlockstore;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore, store::RecordStore};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, gossipsub, identify, mdns, noise, ping,
    tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};

use super::bitswap::Bitswap;
use super::gossip::{self, Gossip, MessageAcceptance};

/// Kademlia protocol of the public IPFS DHT, so Kubo and Helia peers route with us.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/kad/1.0.0");
/// How long a DHT query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Misbehaving peers waiting to be disconnected.
const MISBEHAVING_QUEUE: usize = 64;
/// How often lost bootstrap peers are dialled again.
const RECONNECT_EVERY: Duration = Duration::from_secs(5);

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start (with `/p2p/PEER_ID` for the DHT to learn them).
    pub bootstrap: Vec<Multiaddr>,
    /// Find peers on the local network.
    pub mdns: bool,
    /// Connections are closed after this long without streams.
    pub idle_timeout: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".parse().expect("static address"),
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("static address"),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Why the node could not start or do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The transport could not be set up.
    #[error("setting up the transport: {0}")]
    Transport(String),
    /// An address could not be listened on.
    #[error("listening on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why not.
        reason: String,
    },
    /// A peer could not be dialled.
    #[error("dialling {addr}: {reason}")]
    Dial {
        /// The address.
        addr: Multiaddr,
        /// Why not.
        reason: String,
    },
    /// A gossip message could not be published.
    #[error("publishing on {topic}: {reason}")]
    Publish {
        /// The topic.
        topic: String,
        /// Why not.
        reason: String,
    },
    /// A stream could not be opened.
    #[error("opening a stream: {0}")]
    Stream(String),
    /// The node's task has stopped.
    #[error("the node has stopped")]
    Stopped,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    stream: libp2p_stream::Behaviour,
}

enum Command {
    Dial(Multiaddr, oneshot::Sender<Result<PeerId, NodeError>>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Peers(oneshot::Sender<Vec<PeerId>>),
    TopicPeers(String, oneshot::Sender<Vec<PeerId>>),
    Provide(Cid),
    Providers(Cid, oneshot::Sender<Vec<PeerId>>),
    StoredProviders(Cid, oneshot::Sender<Vec<PeerId>>),
    /// A topic, and whether the caller validates its messages.
    Subscribe(String, bool, oneshot::Sender<bool>),
    Publish(String, Vec<u8>, oneshot::Sender<Result<(), NodeError>>),
    Report(gossipsub::MessageId, PeerId, MessageAcceptance),
    Score(PeerId, oneshot::Sender<Option<f64>>),
}

/// A running node.
#[derive(Clone)]
pub struct Node {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    streams: libp2p_stream::Control,
    bitswap: Bitswap,
    gossip: Arc<tokio::sync::broadcast::Sender<Gossip>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts a node with `key` serving `store`; needs a tokio runtime.
    pub async fn start(
        key: Keypair,
        store: Arc<FsBlockstore>,
        config: NodeConfig,
    ) -> Result<Node, NodeError> {
        let peer_id = key.public().to_peer_id();
        let transport = |e: &dyn std::fmt::Display| NodeError::Transport(e.to_string());
        let mdns_on = config.mdns;
        let mut swarm = SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| transport(&e))?
            .with_quic()
            .with_behaviour(|key| {
                let mut kad_config = kad::Config::new(KAD_PROTOCOL);
                kad_config.set_query_timeout(QUERY_TIMEOUT);
                let mut kad =
                    kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), kad_config);
                kad.set_mode(Some(kad::Mode::Server));
                let gossipsub = gossip::behaviour(key)?;
                let mdns = if mdns_on {
                    Some(mdns::tokio::Behaviour::new(
                        mdns::Config::default(),
                        peer_id,
                    )?)
                } else {
                    None
                };
                Ok(Behaviour {
                    identify: identify::Behaviour::new(
                        identify::Config::new("/ipfs/0.1.0".into(), key.public())
                            .with_agent_version(format!("fl/{}", env!("CARGO_PKG_VERSION"))),
                    ),
                    ping: ping::Behaviour::default(),
                    kad,
                    gossipsub,
                    mdns: mdns.into(),
                    stream: libp2p_stream::Behaviour::new(),
                })
            })
            .map_err(|e| transport(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
            .build();
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NodeError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }
        let streams = swarm.behaviour().stream.new_control();
        let (misbehaving_tx, misbehaving) = mpsc::channel(MISBEHAVING_QUEUE);
        let bitswap = Bitswap::start(store, streams.clone(), misbehaving_tx);
        let (commands, rx) = mpsc::channel(64);
        let (gossip, _) = tokio::sync::broadcast::channel(1024);
        let gossip = Arc::new(gossip);
        let node = Node {
            peer_id,
            commands,
            streams,
            bitswap,
            gossip: gossip.clone(),
        };
        // Wait until the listeners have addresses, so callers can print them.
        let mut driver = Driver {
            swarm,
            commands: rx,
            misbehaving,
            gossip,
            validated: HashSet::new(),
            pending_dials: Vec::new(),
            providers: std::collections::HashMap::new(),
            bootstrap: config.bootstrap.iter().map(|a| (a.clone(), None)).collect(),
        };
        driver.await_listeners(config.listen.len()).await;
        for addr in &config.bootstrap {
            driver.dial(addr.clone(), None);
        }
        tokio::spawn(driver.run());
        Ok(node)
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Opens a raw stream to `peer` for `protocol` (application protocols beside Bitswap).
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<libp2p::Stream, NodeError> {
        self.streams
            .clone()
            .open_stream(peer, protocol)
            .await
            .map_err(|e| NodeError::Stream(e.to_string()))
    }

    /// Bitswap on this node's blockstore.
    pub fn bitswap(&self) -> &Bitswap {
        &self.bitswap
    }

    /// The addresses this node listens on, each with `/p2p/PEER_ID`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::ListenAddrs(tx)).await?;
        let addrs = rx.await.map_err(|_| NodeError::Stopped)?;
        Ok(addrs
            .into_iter()
            .map(|a| a.with_p2p(self.peer_id).unwrap_or_else(|a| a))
            .collect())
    }

    /// Dials `addr` and waits for the connection; returns the peer's id.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Dial(addr, tx)).await?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// Peers connected now.
    pub async fn peers(&self) -> Result<Vec<PeerId>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Peers(tx)).await?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// The connected peers subscribed to gossip `topic`.
    pub async fn topic_peers(&self, topic: &str) -> Result<Vec<PeerId>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::TopicPeers(topic.to_string(), tx))
            .await?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Announces in the DHT that this node provides `cid`.
    pub async fn provide(&self, cid: Cid) -> Result<(), NodeError> {
        self.command(Command::Provide(cid)).await
    }

    /// Providers of `cid` found in the DHT, dialled (so Bitswap can reach them) as they are
    /// found.
    pub async fn providers(&self, cid: Cid) -> Result<Vec<PeerId>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Providers(cid, tx)).await?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Providers of `cid` recorded in this node's share of the DHT, without asking anyone.
    pub async fn stored_providers(&self, cid: Cid) -> Result<Vec<PeerId>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::StoredProviders(cid, tx)).await?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Joins a gossip topic; messages arrive on [`Node::gossip`] and are forwarded to other
    /// peers as they arrive.
    pub async fn subscribe(&self, topic: &str) -> Result<(), NodeError> {
        self.join(topic, false).await
    }

    /// Joins a gossip topic whose messages the caller judges: each arrives on
    /// [`Node::gossip`] and is forwarded to no one until [`Node::report`] accepts it; a
    /// rejected one costs the peer that sent it gossipsub score, so an invalid record stops
    /// at the first honest peer and its sender is soon ignored.
    pub async fn subscribe_validated(&self, topic: &str) -> Result<(), NodeError> {
        self.join(topic, true).await
    }

    async fn join(&self, topic: &str, validated: bool) -> Result<(), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Subscribe(topic.to_string(), validated, tx))
            .await?;
        rx.await.map_err(|_| NodeError::Stopped).map(|_| ())
    }

    /// What the caller made of `message`, on a topic it validates: accepted messages are
    /// forwarded, rejected ones are not and penalise the peer they came from, ignored ones
    /// are dropped without blame (stale, duplicate, or over a limit of this node's).
    pub async fn report(
        &self,
        message: &Gossip,
        verdict: MessageAcceptance,
    ) -> Result<(), NodeError> {
        self.command(Command::Report(message.id.clone(), message.via, verdict))
            .await
    }

    /// A handle that reports on gossip as [`Node::report`] does without keeping the node
    /// running: for a validator that lives as long as the node, not longer.
    pub fn reporter(&self) -> Reporter {
        Reporter(self.commands.downgrade())
    }

    /// Gossipsub's score of `peer` here (`None` before it is known).
    pub async fn gossip_score(&self, peer: PeerId) -> Result<Option<f64>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Score(peer, tx)).await?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Publishes `data`, signed with the node's key, on `topic`.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<(), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Publish(topic.to_string(), data, tx))
            .await?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// Gossip received from now on.
    pub fn gossip(&self) -> tokio::sync::broadcast::Receiver<Gossip> {
        self.gossip.subscribe()
    }

    async fn command(&self, command: Command) -> Result<(), NodeError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NodeError::Stopped)
    }
}

/// Reports on validated gossip for a node while the node runs ([`Node::reporter`]).
#[derive(Debug, Clone)]
pub struct Reporter(mpsc::WeakSender<Command>);

impl Reporter {
    /// As [`Node::report`]; [`NodeError::Stopped`] once every [`Node`] handle is gone.
    pub async fn report(
        &self,
        message: &Gossip,
        verdict: MessageAcceptance,
    ) -> Result<(), NodeError> {
        let commands = self.0.upgrade().ok_or(NodeError::Stopped)?;
        commands
            .send(Command::Report(message.id.clone(), message.via, verdict))
            .await
            .map_err(|_| NodeError::Stopped)
    }
}

/// A dial waiting for its connection: its id, address and who to tell.
type PendingDial = (
    libp2p::swarm::ConnectionId,
    Multiaddr,
    oneshot::Sender<Result<PeerId, NodeError>>,
);

/// The task that owns the swarm.
struct Driver {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    /// Peers that broke a protocol (Bitswap), to disconnect.
    misbehaving: mpsc::Receiver<PeerId>,
    gossip: Arc<tokio::sync::broadcast::Sender<Gossip>>,
    /// Topics whose messages a caller judges ([`Node::subscribe_validated`]).
    validated: HashSet<gossipsub::TopicHash>,
    pending_dials: Vec<PendingDial>,
    providers:
        std::collections::HashMap<kad::QueryId, (HashSet<PeerId>, oneshot::Sender<Vec<PeerId>>)>,
    /// The configured bootstrap addresses and, once known, their peers: dialled again
    /// whenever that peer is not connected.
    bootstrap: Vec<(Multiaddr, Option<PeerId>)>,
}

impl Driver {
    async fn await_listeners(&mut self, count: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut seen = 0;
        while seen < count {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(SwarmEvent::NewListenAddr { address, .. }) => {
                    tracing::info!(%address, "listening");
                    seen += 1;
                }
                Ok(event) => self.on_event(event),
                Err(_) => break,
            }
        }
    }

    async fn run(mut self) {
        let mut reconnect = tokio::time::interval(RECONNECT_EVERY);
        reconnect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                _ = reconnect.tick() => self.reconnect(),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => return,
                },
                Some(peer) = self.misbehaving.recv() => {
                    tracing::info!(%peer, "disconnecting a peer that broke the protocol");
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
        }
    }

    /// Dials the bootstrap peers this node is not connected to (after a restart of theirs, or
    /// a network partition that closed the connections).
    fn reconnect(&mut self) {
        let lost: Vec<Multiaddr> = self
            .bootstrap
            .iter()
            .filter(|(_, peer)| peer.is_none_or(|p| !self.swarm.is_connected(&p)))
            .map(|(addr, _)| addr.clone())
            .collect();
        for addr in lost {
            tracing::debug!(%addr, "dialling a bootstrap peer again");
            let _ = self.swarm.dial(addr);
        }
    }

    fn dial(&mut self, addr: Multiaddr, reply: Option<oneshot::Sender<Result<PeerId, NodeError>>>) {
        let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
        let id = opts.connection_id();
        if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
        }
        match self.swarm.dial(opts) {
            Ok(()) => {
                if let Some(reply) = reply {
                    self.pending_dials.push((id, addr, reply));
                }
            }
            Err(e) => {
                tracing::warn!(%addr, "dial failed: {e}");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(NodeError::Dial {
                        addr,
                        reason: e.to_string(),
                    }));
                }
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Dial(addr, reply) => self.dial(addr, Some(reply)),
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::TopicPeers(topic, reply) => {
                let hash = gossipsub::IdentTopic::new(topic).hash();
                let peers = self
                    .swarm
                    .behaviour()
                    .gossipsub
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&hash))
                    .map(|(peer, _)| *peer)
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Provide(cid) => {
                let key = kad::RecordKey::new(&cid.hash().to_bytes());
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                    tracing::warn!(%cid, "cannot provide: {e}");
                }
            }
            Command::Providers(cid, reply) => {
                let key = kad::RecordKey::new(&cid.hash().to_bytes());
                let id = self.swarm.behaviour_mut().kad.get_providers(key);
                self.providers.insert(id, (HashSet::new(), reply));
            }
            Command::StoredProviders(cid, reply) => {
                let key = kad::RecordKey::new(&cid.hash().to_bytes());
                let records = self.swarm.behaviour_mut().kad.store_mut().providers(&key);
                let _ = reply.send(records.into_iter().map(|r| r.provider).collect());
            }
            Command::Subscribe(topic, validated, reply) => {
                let topic = gossipsub::IdentTopic::new(topic);
                let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
                if validated {
                    self.validated.insert(topic.hash());
                    if let Err(e) = gossipsub.set_topic_params(topic.clone(), gossip::topic_score())
                    {
                        tracing::warn!(%topic, "no peer scoring on the topic: {e}");
                    }
                }
                let _ = reply.send(gossipsub.subscribe(&topic).is_ok());
            }
            Command::Report(id, via, verdict) => {
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &via, verdict);
            }
            Command::Score(peer, reply) => {
                let _ = reply.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
            Command::Publish(topic, data, reply) => {
                let ident = gossipsub::IdentTopic::new(topic.clone());
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(ident, data)
                    .map(|_| ())
                    .map_err(|e| NodeError::Publish {
                        topic,
                        reason: e.to_string(),
                    });
                let _ = reply.send(result);
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "listening"),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                tracing::debug!(%peer_id, addr = %endpoint.get_remote_address(), "connected");
                if endpoint.is_dialer() {
                    let addr = without_peer(endpoint.get_remote_address());
                    for (wanted, peer) in &mut self.bootstrap {
                        if without_peer(wanted) == addr {
                            *peer = Some(peer_id);
                        }
                    }
                }
                if let Some(i) = self
                    .pending_dials
                    .iter()
                    .position(|(id, _, _)| *id == connection_id)
                {
                    let (_, _, reply) = self.pending_dials.swap_remove(i);
                    let _ = reply.send(Ok(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                if let Some(i) = self
                    .pending_dials
                    .iter()
                    .position(|(id, _, _)| *id == connection_id)
                {
                    let (_, addr, reply) = self.pending_dials.swap_remove(i);
                    let _ = reply.send(Err(NodeError::Dial {
                        addr,
                        reason: error.to_string(),
                    }));
                }
            }
            // A connection that stopped answering pings is closed, so its peer is dialled
            // afresh (by it, or by `reconnect`) once the network carries packets again.
            // (A peer without ping, or a stream error, is no sign of a dead link.)
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(ping::Failure::Timeout),
            })) => {
                tracing::info!(%peer, "closing a connection that stopped answering pings");
                self.swarm.close_connection(connection);
            }
            // Peers that speak the DHT protocol join the routing table.
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.protocols.contains(&KAD_PROTOCOL) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    let _ = self.swarm.dial(addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                // Topics nobody here validates are forwarded at once, as without validation.
                let validated = self.validated.contains(&message.topic);
                let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
                if !validated {
                    gossipsub.report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        MessageAcceptance::Accept,
                    );
                }
                let sent = self.gossip.send(Gossip {
                    topic: message.topic.to_string(),
                    source: message.source,
                    data: message.data,
                    id: message_id.clone(),
                    via: propagation_source,
                });
                if sent.is_err() && validated {
                    // Its validator has gone: not forwarded, no one blamed.
                    gossipsub.report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        MessageAcceptance::Ignore,
                    );
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            })) => {
                let mut done = step.last;
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = &result
                    && let Some((found, _)) = self.providers.get_mut(&id)
                {
                    found.extend(providers.iter().copied());
                    // A provider's addresses came with its record and live only as long as
                    // this query, so it is dialled now, while the DHT can still name them.
                    let local = *self.swarm.local_peer_id();
                    let unconnected = providers
                        .iter()
                        .filter(|&&p| p != local && !self.swarm.is_connected(&p))
                        .copied()
                        .collect::<Vec<_>>();
                    for provider in unconnected {
                        let opts = DialOpts::peer_id(provider)
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .build();
                        if let Err(e) = self.swarm.dial(opts) {
                            tracing::debug!(%provider, "not dialling a provider: {e}");
                        }
                    }
                    // The first answer is enough to start fetching; more come with Bitswap.
                    done |= !found.is_empty();
                }
                if done && let Some((found, reply)) = self.providers.remove(&id) {
                    if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        query.finish();
                    }
                    let _ = reply.send(found.into_iter().collect());
                }
            }
            _ => {}
        }
    }
}

/// `addr` less a trailing `/p2p/<peer>`.
fn without_peer(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if let Some(libp2p::multiaddr::Protocol::P2p(_)) = addr.iter().last() {
        addr.pop();
    }
    addr
}
