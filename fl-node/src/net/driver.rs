//! The task that owns a node's swarm: it runs the commands [`Node`](super::Node) sends,
//! and turns swarm events into answers, gossip and reconnections.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::kad::{self, store::RecordStore};
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, mdns, ping};
use tokio::sync::{mpsc, oneshot};

use super::bitswap;
use super::gossip::{self, Gossip, MessageAcceptance};
use super::node::{Behaviour, BehaviourEvent, Command, KAD_PROTOCOL, NodeError};

/// How often lost bootstrap peers are dialled again.
const RECONNECT_EVERY: Duration = Duration::from_secs(5);

/// A dial waiting for its connection: its id, address and who to tell.
type PendingDial = (
    libp2p::swarm::ConnectionId,
    Multiaddr,
    oneshot::Sender<Result<PeerId, NodeError>>,
);

/// The task that owns the swarm.
pub(super) struct Driver {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
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
    /// A driver of `swarm`, answering `commands`, passing gossip on to `gossip`, and keeping
    /// the `bootstrap` peers connected (and disconnecting peers that break Bitswap).
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        gossip: Arc<tokio::sync::broadcast::Sender<Gossip>>,
        bootstrap: &[Multiaddr],
    ) -> Self {
        Self {
            swarm,
            commands,
            gossip,
            validated: HashSet::new(),
            pending_dials: Vec::new(),
            providers: std::collections::HashMap::new(),
            bootstrap: bootstrap.iter().map(|a| (a.clone(), None)).collect(),
        }
    }

    /// Runs the swarm until `count` listeners have an address, or 5 s.
    pub(super) async fn await_listeners(&mut self, count: usize) {
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

    /// Runs the swarm until every [`Node`](super::Node) handle is gone.
    pub(super) async fn run(mut self) {
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

    pub(super) fn dial(
        &mut self,
        addr: Multiaddr,
        reply: Option<oneshot::Sender<Result<PeerId, NodeError>>>,
    ) {
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
                if let Some((_, _, reply)) = self.take_dial(connection_id) {
                    let _ = reply.send(Ok(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                if let Some((_, addr, reply)) = self.take_dial(connection_id) {
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
            SwarmEvent::Behaviour(BehaviourEvent::Bitswap(event)) => self.on_bitswap(event),
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
            })) => self.on_gossip(propagation_source, message_id, message),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            })) => self.on_providers(id, result, step.last),
            _ => {}
        }
    }

    /// The dial waiting for connection `id`, taken out of the pending ones.
    fn take_dial(&mut self, id: libp2p::swarm::ConnectionId) -> Option<PendingDial> {
        let i = self.pending_dials.iter().position(|(c, _, _)| *c == id)?;
        Some(self.pending_dials.swap_remove(i))
    }

    /// Passes a gossip message on to the node's subscribers; one on a topic nobody here
    /// validates is forwarded at once, as without validation.
    fn on_gossip(&mut self, via: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let validated = self.validated.contains(&message.topic);
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        if !validated {
            gossipsub.report_message_validation_result(&id, &via, MessageAcceptance::Accept);
        }
        let sent = self.gossip.send(Gossip {
            topic: message.topic.to_string(),
            source: message.source,
            data: message.data,
            id: id.clone(),
            via,
        });
        if sent.is_err() && validated {
            // Its validator has gone: not forwarded, no one blamed.
            gossipsub.report_message_validation_result(&id, &via, MessageAcceptance::Ignore);
        }
    }

    /// Collects the providers a DHT query found, dialling each while its addresses are
    /// known; answers the caller at the first ones (more come with Bitswap) or at the end.
    fn on_providers(&mut self, id: kad::QueryId, result: kad::GetProvidersResult, last: bool) {
        let mut done = last;
        if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = &result
            && let Some((found, _)) = self.providers.get_mut(&id)
        {
            found.extend(providers.iter().copied());
            // A provider's addresses came with its record and live only as long as this
            // query, so it is dialled now, while the DHT can still name them.
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
            done |= !found.is_empty();
        }
        if done && let Some((found, reply)) = self.providers.remove(&id) {
            if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                query.finish();
            }
            let _ = reply.send(found.into_iter().collect());
        }
    }
}

impl Driver {
    /// Disconnects peers that broke Bitswap; the rest is for the logs.
    fn on_bitswap(&mut self, event: bitswap::Event) {
        match event {
            bitswap::Event::PeerMisbehaved { peer, violation } => {
                tracing::info!(%peer, "disconnecting a peer that broke Bitswap: {violation}");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            bitswap::Event::BlockReceived { cid, from } => {
                tracing::trace!(%cid, %from, "bitswap: block received");
            }
            bitswap::Event::WantFailed { cid, peer, reason } => {
                tracing::trace!(%cid, %peer, ?reason, "bitswap: want failed");
            }
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
