//! The federation's peer: libp2p networking that interoperates with IPFS ([`net`]) and
//! federated rounds over it ([`round`]). The `fl` program (crate `fl`) is its command line;
//! `fl-sim` runs many of them in one process.

pub mod net;
pub mod round;
