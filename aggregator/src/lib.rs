//! Update validation and aggregation rules, deterministic so that anyone can recompute a
//! published model byte for byte.
//!
//! Not built yet: FedAvg, server optimizers, robust rules and validation arrive with the
//! issue "Aggregation rules and differential privacy with an accountant". This crate holds
//! no code until then, so that nothing here pretends to work.
