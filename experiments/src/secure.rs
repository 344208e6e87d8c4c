//! Experiment 14, secure aggregation: plain FedAvg against the same federation with secure
//! aggregation (masked updates, rounds that reveal only the sum), run in turn on the same
//! data, seed and schedule at 8 and 16 nodes (quick: 4 and 8): round time, Bitswap bytes
//! per node per round and final accuracy.

use std::path::PathBuf;

use fl_core::records::SecureAggregation;
use fl_core::secagg::Params;

use crate::harness::{Csv, FedRun, federate, field, pct};
use crate::suite::Ctx;

/// Quantisation of the secure runs: each coordinate within [-1, 1], 20 bits.
const RANGE: f64 = 1.0;
const BITS: u8 = 20;

impl Ctx {
    /// Runs experiment 14; returns its title, report text and files.
    pub(crate) fn secure_aggregation(&self) -> anyhow::Result<(String, String, Vec<PathBuf>)> {
        let sizes: [usize; 2] = if self.scale.quick { [4, 8] } else { [8, 16] };
        let rounds = if self.scale.quick { 3 } else { 4 };
        let mut csv = Csv::create(
            &self.out,
            "secure_aggregation.csv",
            &[
                "nodes",
                "secure",
                "round_seconds",
                "bytes_per_node_round",
                "final_accuracy",
            ],
        )?;
        let mut table = String::from(
            "| nodes | aggregation | s a round (rounds 2 on) | MB sent per node per round (rounds 2 on) | final accuracy |\n| --- | --- | --- | --- | --- |\n",
        );
        let mut ratios = Vec::new();
        for nodes in sizes {
            let mut runs: Vec<(bool, FedRun)> = Vec::new();
            for secure in [false, true] {
                let mut plan = self.plan(nodes);
                plan.rounds = rounds;
                plan.secure = secure.then(|| SecureAggregation {
                    threshold: Params::default_threshold(nodes as u16),
                    range: RANGE,
                    bits: BITS,
                });
                let label = format!("{nodes} nodes, {}", if secure { "secure" } else { "plain" });
                let run = federate(&label, &plan, &self.data)?;
                csv.row([
                    nodes.to_string(),
                    secure.to_string(),
                    format!("{:.3}", run.round_seconds()),
                    format!("{:.0}", run.steady_bytes_per_node_round(nodes)),
                    field(run.final_accuracy()),
                ])?;
                table.push_str(&format!(
                    "| {nodes} | {} | {:.2} | {:.2} | {} |\n",
                    if secure {
                        "secure (SecAgg)"
                    } else {
                        "plain FedAvg"
                    },
                    run.round_seconds(),
                    run.steady_bytes_per_node_round(nodes) / 1e6,
                    pct(run.final_accuracy()),
                ));
                runs.push((secure, run));
            }
            if let [(_, plain), (_, secure)] = &runs[..] {
                ratios.push(format!(
                    "{nodes} nodes: **{:.2}x** the round time and **{:.2}x** the bytes of plain FedAvg, final accuracy {} against {}.",
                    secure.round_seconds() / plain.round_seconds(),
                    secure.steady_bytes_per_node_round(nodes)
                        / plain.steady_bytes_per_node_round(nodes),
                    pct(secure.final_accuracy()),
                    pct(plain.final_accuracy()),
                ));
            }
        }
        let body = format!(
            "The suite's federation ({rounds} rounds, the first four nodes recomputing every manifest), plain FedAvg and then secure aggregation (`--secure-aggregation`: threshold 2n/3 + 1, each coordinate clamped to [-{RANGE}, {RANGE}] and quantised to {BITS} bits, updates counted equally), in turn on the same data and seed. Under secure aggregation each member exchanges keys and Shamir shares over gossip while it trains, announces its update masked, and answers the aggregator's survivor list; the aggregator unmasks the sum and publishes it with the secrets it recovered, and checkers recompute it from the masked updates. Bytes are Bitswap's (files and blocks); the secure steps travel over gossip, a few KB a member a round (keys 383 B, shares 3.5 KB at 16 members, answer 1.1 KB: `cargo bench -p benches --bench secagg`).\n\n{table}\n{}\n",
            ratios.join(" ")
        );
        Ok((
            "Secure aggregation: cost against plain FedAvg".into(),
            body,
            vec![csv.finish()?],
        ))
    }
}
