//! Inbound connections per remote IP address: how many at once, and how fast new ones come,
//! refused before their handshake. Peer ids cost nothing to make, so the per-peer limits of
//! `connection_limits` do not stop one host from opening thousands of connections, each
//! costing the node a handshake; an address costs more. rust-libp2p has no per-address
//! limit (Kubo's resource manager has one), so this small behaviour is ours.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::Instant;

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr, multiaddr::Protocol};
use libp2p::swarm::behaviour::{ConnectionClosed, ListenFailure};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};

/// Inbound connections one IP address may hold at once (pending and established).
pub const MAX_INBOUND_PER_ADDRESS: u32 = 64;
/// New inbound connections one IP address may open per second, on average (it may open
/// [`MAX_INBOUND_PER_ADDRESS`] at once).
pub const NEW_INBOUND_PER_SECOND: f64 = 16.0;
/// Addresses tracked at once. Past this, those idle with a whole allowance are forgotten (at
/// most once a second), and while none can be, addresses not tracked are refused.
const MAX_TRACKED: usize = 4096;
/// Least time between two sweeps of the addresses tracked.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The limits.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// [`MAX_INBOUND_PER_ADDRESS`].
    pub max_per_address: u32,
    /// [`NEW_INBOUND_PER_SECOND`].
    pub new_per_second: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_per_address: MAX_INBOUND_PER_ADDRESS,
            new_per_second: NEW_INBOUND_PER_SECOND,
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
#[error("{address} holds or opened too many inbound connections")]
pub struct TooMany {
    address: IpAddr,
}

/// One address's connections and its allowance of new ones.
#[derive(Debug, Clone, Copy)]
struct Entry {
    open: u32,
    allowance: f64,
    at: Instant,
}

impl Entry {
    fn new(config: &Config, now: Instant) -> Self {
        Entry {
            open: 0,
            allowance: f64::from(config.max_per_address),
            at: now,
        }
    }

    /// Whether one more connection may come in now; counts it if so.
    fn admit(&mut self, config: &Config, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.allowance = (self.allowance + elapsed * config.new_per_second)
            .min(f64::from(config.max_per_address));
        self.at = now;
        if self.open >= config.max_per_address || self.allowance < 1.0 {
            return false;
        }
        self.allowance -= 1.0;
        self.open += 1;
        true
    }
}

/// The behaviour: put it first in the swarm's, so that a refused connection costs nothing more.
#[derive(Debug, Default)]
pub struct Behaviour {
    config: Config,
    addresses: HashMap<IpAddr, Entry>,
    connections: HashMap<ConnectionId, IpAddr>,
    /// When the addresses were last swept of forgettable ones.
    swept: Option<Instant>,
}

impl Behaviour {
    /// A behaviour with these limits.
    pub fn new(config: Config) -> Self {
        Behaviour {
            config,
            ..Behaviour::default()
        }
    }

    fn release(&mut self, connection: ConnectionId) {
        if let Some(address) = self.connections.remove(&connection)
            && let Some(entry) = self.addresses.get_mut(&address)
        {
            entry.open = entry.open.saturating_sub(1);
        }
    }
}

/// The address a multiaddr starts with, as limited: an IPv4 address (IPv4-mapped IPv6 ones
/// too), or an IPv6 address's /64, which one host usually holds whole.
fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => Some(IpAddr::V4(v4)),
            None => {
                let prefix = u128::from(ip) & !((1u128 << 64) - 1);
                Some(IpAddr::V6(prefix.into()))
            }
        },
        _ => None,
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(address) = ip_of(remote) else {
            return Ok(());
        };
        let now = Instant::now();
        if self.addresses.len() >= MAX_TRACKED && !self.addresses.contains_key(&address) {
            if self
                .swept
                .is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_EVERY)
            {
                self.swept = Some(now);
                // Forgotten only once idle with a whole allowance: forgetting gives none.
                let (max, rate) = (
                    f64::from(self.config.max_per_address),
                    self.config.new_per_second,
                );
                self.addresses.retain(|_, e| {
                    let since = now.saturating_duration_since(e.at).as_secs_f64();
                    e.open > 0 || e.allowance + since * rate < max
                });
            }
            if self.addresses.len() >= MAX_TRACKED {
                return Err(ConnectionDenied::new(TooMany { address }));
            }
        }
        let config = self.config;
        let entry = self
            .addresses
            .entry(address)
            .or_insert_with(|| Entry::new(&config, now));
        if !entry.admit(&config, now) {
            return Err(ConnectionDenied::new(TooMany { address }));
        }
        self.connections.insert(connection, address);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        _connection: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.release(connection_id)
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// One address gets its burst, then new connections at the rate, never more than the
    /// cap at once; a closed connection frees its place.
    #[test]
    fn an_address_gets_a_burst_then_the_rate_and_never_more_than_the_cap() {
        let config = Config {
            max_per_address: 4,
            new_per_second: 2.0,
        };
        let start = Instant::now();
        let mut e = Entry::new(&config, start);
        assert_eq!((0..10).filter(|_| e.admit(&config, start)).count(), 4);
        // Held: the cap refuses even with allowance back.
        assert!(!e.admit(&config, start + Duration::from_secs(10)));
        e.open = 0;
        // Churn: the burst is spent, so the rate is all it gets.
        let mut churn = Entry::new(&config, start);
        let admitted = (0..100)
            .filter(|i| {
                let ok = churn.admit(&config, start + Duration::from_millis(10 * i));
                churn.open = 0;
                ok
            })
            .count();
        assert_eq!(admitted, 4 + 1, "a second of churn: the burst and 2/s");
        assert!(e.admit(&config, start + Duration::from_secs(10)));
    }

    /// An IPv6 host is limited by its /64; an IPv4-mapped address as the IPv4 one.
    #[test]
    fn addresses_are_limited_by_host() {
        let a: Multiaddr = "/ip6/2001:db8:1:2:aaaa::1/tcp/1".parse().unwrap();
        let b: Multiaddr = "/ip6/2001:db8:1:2:bbbb::9/tcp/2".parse().unwrap();
        let c: Multiaddr = "/ip6/2001:db8:1:3::1/tcp/1".parse().unwrap();
        assert_eq!(ip_of(&a), ip_of(&b));
        assert_ne!(ip_of(&a), ip_of(&c));
        let mapped: Multiaddr = "/ip6/::ffff:192.0.2.7/tcp/1".parse().unwrap();
        let v4: Multiaddr = "/ip4/192.0.2.7/tcp/1".parse().unwrap();
        assert_eq!(ip_of(&mapped), ip_of(&v4));
        assert_eq!(ip_of(&"/dns4/example.com/tcp/1".parse().unwrap()), None);
    }
}
