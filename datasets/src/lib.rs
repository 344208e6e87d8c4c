//! CIFAR-10 readers, download, partitions (IID, Dirichlet, shards per client) and shards
//! as CIDs.
//!
//! Not built yet: it arrives with the issue "CIFAR-10 as content-addressed shards". This
//! crate holds no code until then, so that nothing here pretends to work.
