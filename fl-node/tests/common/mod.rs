//! Helpers shared by the integration tests.

#[allow(dead_code)] // only the multi-host tests make namespaces
pub mod lan;

/// `len` pseudo-random bytes (xorshift), the same for the same seed.
#[allow(dead_code)] // not every test binary makes files
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A node setup for tests: TCP on 127.0.0.1 only, no mDNS, no bootstrap peers.
#[allow(dead_code)] // not every test binary starts nodes in-process
pub fn loopback() -> fl_node::net::NodeConfig {
    fl_node::net::NodeConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        mdns: false,
        ..fl_node::net::NodeConfig::default()
    }
}
