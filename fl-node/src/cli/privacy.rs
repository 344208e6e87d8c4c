//! `fl privacy`: epsilon spent by DP-FedAvg (Poisson-subsampled Gaussian, Rényi DP), or
//! the noise multiplier a target epsilon needs.

use anyhow::{Context, bail};
use clap::Args;
use fl_core::privacy::accountant::{
    DEFAULT_ORDERS, epsilon, epsilon_for, noise_for_epsilon, rdp_subsampled_gaussian,
};

#[derive(Debug, Args)]
pub(super) struct Privacy {
    /// Sampling rate: the chance each node takes part in a round (participants / nodes).
    #[arg(long)]
    q: f64,
    /// Noise multiplier z (noise std = z x clip norm); omit it and give --epsilon to solve for it.
    #[arg(long, required_unless_present = "epsilon", conflicts_with = "epsilon")]
    z: Option<f64>,
    /// Number of rounds.
    #[arg(long)]
    rounds: u64,
    /// Target delta.
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Target epsilon: prints the smallest z that meets it.
    #[arg(long)]
    epsilon: Option<f64>,
}

pub(super) fn run(cmd: Privacy) -> anyhow::Result<()> {
    let Privacy {
        q,
        z,
        rounds,
        delta,
        epsilon: target,
    } = cmd;
    match (z, target) {
        (Some(z), None) => {
            let eps = epsilon_for(q, z, rounds, delta).context("computing epsilon")?;
            let rdp = rdp_subsampled_gaussian(q, z, &DEFAULT_ORDERS)?;
            let total: Vec<f64> = rdp.iter().map(|r| r * rounds as f64).collect();
            let (_, order) = epsilon(&DEFAULT_ORDERS, &total, delta)?;
            println!(
                "epsilon = {eps:.6}  (delta = {delta:e}, q = {q}, z = {z}, rounds = {rounds}, best RDP order {order})"
            );
        }
        (None, Some(target)) => {
            let z = noise_for_epsilon(q, rounds, delta, target)
                .context("solving for the noise multiplier")?;
            let eps = epsilon_for(q, z, rounds, delta)?;
            println!(
                "z = {z:.6}  (epsilon = {eps:.6} <= {target}, delta = {delta:e}, q = {q}, rounds = {rounds})"
            );
        }
        _ => bail!("give either --z or --epsilon"),
    }
    Ok(())
}
