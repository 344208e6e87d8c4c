//! The federation's peer: libp2p networking that interoperates with IPFS. The `fl` program
//! (src/main.rs) is its command line.

pub mod net;
