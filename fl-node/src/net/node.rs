//! The libp2p swarm of a node: TCP and QUIC, Noise, Yamux, identify, ping, Kademlia on the
//! IPFS DHT protocol, gossipsub with signed messages and peer scoring, mDNS, Bitswap, and raw
//! streams for other application protocols. One task owns the swarm; [`Node`] talks to it
//! through a channel (and Bitswap's handle through Bitswap's own).

use std::sync::Arc;
use std::time::Duration;

use cid::Cid;
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, SwarmBuilder, gossipsub, identify, mdns, noise, ping, tcp,
    yamux,
};
use tokio::sync::{mpsc, oneshot};

use super::address_limits;
use super::bitswap::{self, Bitswap, Store};
use super::driver::Driver;
use super::gossip::{self, Gossip, MessageAcceptance};

/// Kademlia protocol of the public IPFS DHT, so Kubo and Helia peers route with us.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/kad/1.0.0");
/// How long a DHT query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections one peer may hold with us at once: each may dial the other at the same
/// moment, over TCP and QUIC. Every per-connection limit (Bitswap's streams and queues) is
/// multiplied by this at most, not by whatever a peer opens.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 4;
/// Inbound connections held at once, all peers together: peers with fresh ids cannot hold
/// more of the node's memory than this many connections' worth.
pub const MAX_INCOMING_CONNECTIONS: u32 = 1024;
/// Inbound connections still in their handshake at once.
pub const MAX_PENDING_INCOMING: u32 = 128;

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
    /// Bitswap's limits (default: [`bitswap::Config::default`]).
    pub bitswap: bitswap::Config,
    /// Inbound connections per remote address (default:
    /// [`address_limits::Config::default`]); raise them for many nodes on one host.
    pub address_limits: address_limits::Config,
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
            bitswap: bitswap::Config::default(),
            address_limits: address_limits::Config::default(),
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
pub(super) struct Behaviour {
    /// First, so a connection over the limits is refused before any protocol sees it (and
    /// one from an address over its limits before its handshake).
    pub(super) addresses: address_limits::Behaviour,
    pub(super) limits: connection_limits::Behaviour,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub(super) kad: kad::Behaviour<MemoryStore>,
    pub(super) gossipsub: gossipsub::Behaviour,
    pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(super) bitswap: bitswap::Behaviour,
    pub(super) stream: libp2p_stream::Behaviour,
}

pub(super) enum Command {
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
    /// Starts a node with `key` serving `store` (any blockstore, e.g. an
    /// `Arc<FsBlockstore>`); needs a tokio runtime.
    pub async fn start(key: Keypair, store: Store, config: NodeConfig) -> Result<Node, NodeError> {
        let peer_id = key.public().to_peer_id();
        let (bitswap_behaviour, bitswap) = bitswap::new(store, config.bitswap.clone());
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
                    addresses: address_limits::Behaviour::new(config.address_limits),
                    limits: connection_limits::Behaviour::new(
                        ConnectionLimits::default()
                            .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                            .with_max_established_incoming(Some(MAX_INCOMING_CONNECTIONS))
                            .with_max_pending_incoming(Some(MAX_PENDING_INCOMING)),
                    ),
                    identify: identify::Behaviour::new(
                        identify::Config::new("/ipfs/0.1.0".into(), key.public())
                            .with_agent_version(format!("fl/{}", env!("CARGO_PKG_VERSION"))),
                    ),
                    ping: ping::Behaviour::default(),
                    kad,
                    gossipsub,
                    mdns: mdns.into(),
                    bitswap: bitswap_behaviour,
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
        let mut driver = Driver::new(swarm, rx, gossip, &config.bootstrap);
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
