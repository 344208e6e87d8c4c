//! `fl privacy`: epsilon spent by DP-FedAvg (rounds of the Poisson-subsampled Gaussian) or by
//! DP-SGD (steps of it), or the noise multiplier a target epsilon needs.

use anyhow::{Context, bail};
use clap::Args;
use fl_core::privacy::accountant::{
    COMMON_ORDERS, DEFAULT_ORDERS, dp_sgd_epsilon, dp_sgd_noise_for_epsilon, dp_sgd_sampling_rate,
    epsilon, epsilon_for, noise_for_epsilon, rdp_subsampled_gaussian,
};

#[derive(Debug, Args)]
pub(super) struct Privacy {
    /// Sampling rate: DP-FedAvg, the chance each node takes part in a round (participants /
    /// nodes); DP-SGD, the chance each example is in a step's batch. Or give --examples and
    /// --batch for DP-SGD.
    #[arg(long, required_unless_present = "examples")]
    q: Option<f64>,
    /// Noise multiplier z (noise std = z x clip norm); omit it and give --epsilon to solve for it.
    #[arg(long, required_unless_present = "epsilon", conflicts_with = "epsilon")]
    z: Option<f64>,
    /// DP-FedAvg: the number of rounds.
    #[arg(long, required_unless_present = "steps", conflicts_with = "steps")]
    rounds: Option<u64>,
    /// DP-SGD: the number of local steps, every round's together (sample level; accounted
    /// over the RDP orders Opacus and dp-accounting share).
    #[arg(long)]
    steps: Option<u64>,
    /// DP-SGD: the examples a node trains on (with --batch: q = 1 / ceil(examples / batch)).
    #[arg(long, requires = "batch", conflicts_with = "q")]
    examples: Option<u64>,
    /// DP-SGD: the expected batch size.
    #[arg(long, requires = "examples")]
    batch: Option<u64>,
    /// Target delta.
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Target epsilon: prints the smallest z that meets it.
    #[arg(long)]
    epsilon: Option<f64>,
}

pub(super) fn run(cmd: Privacy) -> anyhow::Result<()> {
    let q = match (cmd.q, cmd.examples, cmd.batch) {
        (Some(q), _, _) => q,
        (None, Some(examples), Some(batch)) => {
            if examples == 0 || batch == 0 {
                bail!("--examples and --batch must be at least 1");
            }
            dp_sgd_sampling_rate(examples, batch)
        }
        _ => bail!("give --q, or --examples with --batch"),
    };
    let delta = cmd.delta;
    match (cmd.steps, cmd.rounds) {
        (Some(steps), _) => match (cmd.z, cmd.epsilon) {
            (Some(z), None) => {
                let eps = dp_sgd_epsilon(q, z, steps, delta).context("computing epsilon")?;
                let order = best_order(&COMMON_ORDERS, q, z, steps, delta)?;
                println!(
                    "epsilon = {eps:.6}  (DP-SGD: delta = {delta:e}, q = {q}, z = {z}, steps = {steps}, best RDP order {order})"
                );
            }
            (None, Some(target)) => {
                let z = dp_sgd_noise_for_epsilon(q, steps, delta, target)
                    .context("solving for the noise multiplier")?;
                let eps = dp_sgd_epsilon(q, z, steps, delta)?;
                println!(
                    "z = {z:.6}  (DP-SGD: epsilon = {eps:.6} <= {target}, delta = {delta:e}, q = {q}, steps = {steps})"
                );
            }
            _ => bail!("give either --z or --epsilon"),
        },
        (None, Some(rounds)) => match (cmd.z, cmd.epsilon) {
            (Some(z), None) => {
                let eps = epsilon_for(q, z, rounds, delta).context("computing epsilon")?;
                let order = best_order(&DEFAULT_ORDERS, q, z, rounds, delta)?;
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
        },
        (None, None) => bail!("give --rounds (DP-FedAvg) or --steps (DP-SGD)"),
    }
    Ok(())
}

/// The RDP order at which epsilon is smallest.
fn best_order(orders: &[f64], q: f64, z: f64, count: u64, delta: f64) -> anyhow::Result<f64> {
    let rdp = rdp_subsampled_gaussian(q, z, orders)?;
    let total: Vec<f64> = rdp.iter().map(|r| r * count as f64).collect();
    Ok(epsilon(orders, &total, delta)?.1)
}
