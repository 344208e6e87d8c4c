//! The federation's peer: libp2p networking that interoperates with IPFS ([`net`]) and
//! federated rounds over it ([`round`]). The `fl` program (src/main.rs) is its command line.

pub mod net;
pub mod plot;
pub mod round;
pub mod simulate;
