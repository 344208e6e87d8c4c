//! One connection's Bitswap: reads the peer's inbound streams (many at once, as Kubo opens one
//! per answer) and writes our messages on one outbound stream of ours, under the limits of
//! [`Config`](super::Config). It decodes frames, but leaves hashing and storage to the
//! behaviour's blocking jobs.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cid::Cid;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{AsyncWriteExt, FutureExt, StreamExt};
use libp2p::core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionHandler, ConnectionHandlerEvent, Stream, StreamProtocol, StreamUpgradeError,
    SubstreamProtocol,
};

use super::codec::{ReadError, ReadLimits, read_frame, write_frame};
use super::message::Message;
use super::{Config, PROTOCOL, PROTOCOL_1_1, Violation};

/// How long closing a stream politely may take before it is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Streams being closed politely at once; past this they are dropped (reset).
const MAX_CLOSING: usize = 32;

/// The protocols we accept streams for.
static INBOUND: [StreamProtocol; 2] = [PROTOCOL, PROTOCOL_1_1];
/// The protocols our own streams offer, newest first (a 1.1.0 peer ignores the presences
/// and HAVE wants a 1.2.0 message may carry, as protobuf skips unknown fields).
static OUTBOUND: [StreamProtocol; 2] = [PROTOCOL, PROTOCOL_1_1];

/// Negotiates a Bitswap stream (no handshake beyond multistream-select).
#[derive(Debug, Clone, Copy)]
pub struct Upgrade(&'static [StreamProtocol]);

impl UpgradeInfo for Upgrade {
    type Info = StreamProtocol;
    type InfoIter = std::iter::Cloned<std::slice::Iter<'static, StreamProtocol>>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.iter().cloned()
    }
}

impl InboundUpgrade<Stream> for Upgrade {
    type Output = Stream;
    type Error = Infallible;
    type Future = Ready<Result<Stream, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, _: StreamProtocol) -> Self::Future {
        ready(Ok(stream))
    }
}

impl OutboundUpgrade<Stream> for Upgrade {
    type Output = Stream;
    type Error = Infallible;
    type Future = Ready<Result<Stream, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, _: StreamProtocol) -> Self::Future {
        ready(Ok(stream))
    }
}

/// What the behaviour asks of a connection.
#[derive(Debug)]
pub enum FromBehaviour {
    /// Write `message`; `answer_bytes` of it (a whole answer's size, 0 for our wants) count
    /// against the peer's outstanding bytes until written or dropped.
    Send {
        /// The message.
        message: Message,
        /// Its size if it is an answer, else 0.
        answer_bytes: usize,
    },
}

/// What a connection tells the behaviour.
#[derive(Debug)]
pub enum ToBehaviour {
    /// A message arrived.
    Message(Message),
    /// A message was written.
    Written {
        /// Its `answer_bytes`.
        answer_bytes: usize,
    },
    /// A message could not be written (no stream, a write that failed or timed out).
    Dropped {
        /// Its `answer_bytes`.
        answer_bytes: usize,
        /// The CIDs it wanted, which must be asked of another peer.
        wants: Vec<Cid>,
    },
    /// The peer broke the protocol.
    Violation(Violation),
    /// An inbound stream was refused over the limits.
    StreamRefused,
}

/// A message waiting to be written.
#[derive(Debug)]
struct Outgoing {
    frame: Arc<Vec<u8>>,
    answer_bytes: usize,
    wants: Vec<Cid>,
    /// Writes tried and failed (one retry on a fresh stream).
    failures: u8,
}

/// An inbound stream's read of one frame, with the stream and buffer handed back.
struct Read {
    stream: Stream,
    buf: Vec<u8>,
    result: Result<bool, ReadError>,
}

/// Our outbound stream.
enum Outbound {
    /// None open.
    None,
    /// Being negotiated.
    Opening,
    /// Open and idle, closed when the timer fires.
    Idle(Stream, Pin<Box<tokio::time::Sleep>>),
    /// Writing the front of the queue.
    Writing(BoxFuture<'static, Result<Stream, WriteError>>),
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("write not done within {0:?}: the peer does not read")]
    Timeout(Duration),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The Bitswap side of one connection.
pub struct Handler {
    config: Config,
    events: VecDeque<ConnectionHandlerEvent<Upgrade, (), ToBehaviour>>,
    /// Inbound streams being read, each one frame at a time.
    readers: FuturesUnordered<BoxFuture<'static, Read>>,
    /// Inbound streams accepted but not read yet (over `max_inbound_streams`).
    waiting: VecDeque<Stream>,
    queue: VecDeque<Outgoing>,
    outbound: Outbound,
    closing: FuturesUnordered<BoxFuture<'static, ()>>,
}

impl Handler {
    /// A handler under `config`'s limits.
    pub fn new(config: Config) -> Self {
        Handler {
            config,
            events: VecDeque::new(),
            readers: FuturesUnordered::new(),
            waiting: VecDeque::new(),
            queue: VecDeque::new(),
            outbound: Outbound::None,
            closing: FuturesUnordered::new(),
        }
    }

    fn limits(&self) -> ReadLimits {
        ReadLimits {
            max_frame: super::MAX_MESSAGE_BYTES,
            idle: self.config.idle_stream_timeout,
            frame: self.config.frame_timeout,
        }
    }

    fn notify(&mut self, event: ToBehaviour) {
        self.events
            .push_back(ConnectionHandlerEvent::NotifyBehaviour(event));
    }

    fn read(&mut self, mut stream: Stream, mut buf: Vec<u8>) {
        let limits = self.limits();
        self.readers.push(
            async move {
                let result = read_frame(&mut stream, limits, &mut buf).await;
                Read {
                    stream,
                    buf,
                    result,
                }
            }
            .boxed(),
        );
    }

    fn close(&mut self, mut stream: Stream) {
        if self.closing.len() < MAX_CLOSING {
            self.closing.push(
                async move {
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.close()).await;
                }
                .boxed(),
            );
        }
    }

    fn on_inbound(&mut self, stream: Stream) {
        if self.readers.len() < self.config.max_inbound_streams.max(1) {
            self.read(stream, Vec::new());
        } else if self.waiting.len() < self.config.max_waiting_streams {
            self.waiting.push_back(stream);
        } else {
            tracing::debug!("bitswap: too many inbound streams, refusing one");
            self.notify(ToBehaviour::StreamRefused);
        }
    }

    /// Handles one finished read: a message, the end of the stream, or an error.
    fn on_read(&mut self, read: Read) {
        let Read {
            stream,
            mut buf,
            result,
        } = read;
        match result {
            Ok(true) => match Message::decode_frame(&buf) {
                Ok(message) => {
                    self.notify(ToBehaviour::Message(message));
                    // A large frame's buffer is not kept for the next, smaller ones.
                    if buf.capacity() > 2 * super::codec::READ_CHUNK {
                        buf = Vec::new();
                    }
                    self.read(stream, buf);
                    return;
                }
                Err(e) => {
                    tracing::debug!("bitswap: {e}");
                    self.notify(ToBehaviour::Violation(Violation::Malformed(e.to_string())));
                }
            },
            Ok(false) => self.close(stream),
            Err(e) => {
                tracing::debug!("bitswap: inbound stream ended: {e}");
                match e {
                    ReadError::TooLarge { len, max } => {
                        self.notify(ToBehaviour::Violation(Violation::Oversized { len, max }))
                    }
                    ReadError::BadPrefix => {
                        self.notify(ToBehaviour::Violation(Violation::BadLengthPrefix))
                    }
                    _ => {}
                }
            }
        }
        if let Some(next) = self.waiting.pop_front() {
            self.read(next, Vec::new());
        }
    }

    /// Drops every queued message, telling the behaviour which wants must go elsewhere.
    fn drop_queue(&mut self) {
        while let Some(item) = self.queue.pop_front() {
            self.notify(ToBehaviour::Dropped {
                answer_bytes: item.answer_bytes,
                wants: item.wants,
            });
        }
    }

    /// Advances our outbound stream: opens it when there is something to write, writes the
    /// queue in order, closes it when idle.
    fn poll_outbound(&mut self, cx: &mut Context<'_>) {
        loop {
            match std::mem::replace(&mut self.outbound, Outbound::None) {
                Outbound::None => {
                    if !self.queue.is_empty() {
                        self.outbound = Outbound::Opening;
                        self.events
                            .push_back(ConnectionHandlerEvent::OutboundSubstreamRequest {
                                protocol: SubstreamProtocol::new(Upgrade(&OUTBOUND), ()),
                            });
                    }
                    return;
                }
                Outbound::Opening => {
                    self.outbound = Outbound::Opening;
                    return;
                }
                Outbound::Idle(stream, mut timer) => {
                    if let Some(front) = self.queue.front() {
                        self.outbound = Outbound::Writing(self.write(stream, front.frame.clone()));
                        continue;
                    }
                    if timer.poll_unpin(cx).is_ready() {
                        self.close(stream);
                        return;
                    }
                    self.outbound = Outbound::Idle(stream, timer);
                    return;
                }
                Outbound::Writing(mut write) => match write.poll_unpin(cx) {
                    Poll::Pending => {
                        self.outbound = Outbound::Writing(write);
                        return;
                    }
                    Poll::Ready(result) => self.on_written(result),
                },
            }
        }
    }

    fn write(
        &self,
        mut stream: Stream,
        frame: Arc<Vec<u8>>,
    ) -> BoxFuture<'static, Result<Stream, WriteError>> {
        let limit = self.config.write_timeout;
        async move {
            match tokio::time::timeout(limit, write_frame(&mut stream, &frame)).await {
                Ok(Ok(())) => Ok(stream),
                Ok(Err(e)) => Err(WriteError::Io(e)),
                Err(_) => Err(WriteError::Timeout(limit)),
            }
        }
        .boxed()
    }

    fn on_written(&mut self, result: Result<Stream, WriteError>) {
        match result {
            Ok(stream) => {
                if let Some(item) = self.queue.pop_front() {
                    self.notify(ToBehaviour::Written {
                        answer_bytes: item.answer_bytes,
                    });
                }
                let timer = Box::pin(tokio::time::sleep(self.config.outbound_idle_timeout));
                self.outbound = Outbound::Idle(stream, timer);
            }
            // A peer that does not read holds nothing of ours: its queue goes, its wants
            // fail over to other peers.
            Err(e @ WriteError::Timeout(_)) => {
                tracing::debug!("bitswap: {e}");
                self.drop_queue();
            }
            // The stream broke (the peer closed it as idle, or reset it): one more try on a
            // fresh stream, then the message goes.
            Err(WriteError::Io(e)) => {
                tracing::debug!("bitswap: write failed: {e}");
                if let Some(front) = self.queue.front_mut() {
                    front.failures += 1;
                    if front.failures >= 2
                        && let Some(item) = self.queue.pop_front()
                    {
                        self.notify(ToBehaviour::Dropped {
                            answer_bytes: item.answer_bytes,
                            wants: item.wants,
                        });
                    }
                }
            }
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = FromBehaviour;
    type ToBehaviour = ToBehaviour;
    type InboundProtocol = Upgrade;
    type OutboundProtocol = Upgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Upgrade, ()> {
        SubstreamProtocol::new(Upgrade(&INBOUND), ())
    }

    fn connection_keep_alive(&self) -> bool {
        !self.queue.is_empty()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Upgrade, (), ToBehaviour>> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(event);
            }
            while let Poll::Ready(Some(read)) = self.readers.poll_next_unpin(cx) {
                self.on_read(read);
                if !self.events.is_empty() {
                    break;
                }
            }
            self.poll_outbound(cx);
            while let Poll::Ready(Some(())) = self.closing.poll_next_unpin(cx) {}
            if self.events.is_empty() {
                return Poll::Pending;
            }
        }
    }

    fn on_behaviour_event(&mut self, event: FromBehaviour) {
        let FromBehaviour::Send {
            message,
            answer_bytes,
        } = event;
        let wants = message
            .wants()
            .into_iter()
            .filter(|w| !w.cancel)
            .map(|w| w.cid)
            .collect();
        if self.queue.len() >= self.config.max_queued_messages {
            tracing::debug!("bitswap: outbound queue full, message dropped");
            self.notify(ToBehaviour::Dropped {
                answer_bytes,
                wants,
            });
            return;
        }
        self.queue.push_back(Outgoing {
            frame: Arc::new(message.encode_frame()),
            answer_bytes,
            wants,
            failures: 0,
        });
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<Upgrade, Upgrade>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => self.on_inbound(stream),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                ..
            }) => {
                if matches!(self.outbound, Outbound::Opening) {
                    let timer = Box::pin(tokio::time::sleep(self.config.outbound_idle_timeout));
                    self.outbound = Outbound::Idle(stream, timer);
                }
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                match error {
                    StreamUpgradeError::Apply(never) => match never {},
                    e => tracing::debug!("bitswap: cannot open a stream: {e}"),
                }
                self.outbound = Outbound::None;
                self.drop_queue();
            }
            _ => {}
        }
    }
}
