//! Differential privacy for updates: the Rényi-DP accountant that turns noise, sampling
//! rate and rounds into the (epsilon, delta) every round manifest carries, and (feature
//! `dp`) clipping and Gaussian noise applied at the node before an update leaves it.

pub mod accountant;
