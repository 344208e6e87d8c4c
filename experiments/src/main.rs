//! `cargo run --release -p experiments -- all`: the evaluation of the federation.
//!
//! The experiments need the federation itself (federated rounds over the network); until
//! it lands this program lists them and refuses to run any, rather than print numbers
//! it did not measure.

/// The experiments, by name, as the report will order them.
const EXPERIMENTS: [(&str, &str); 8] = [
    (
        "federated-vs-centralized",
        "accuracy against wall time and rounds, both setups",
    ),
    (
        "scalability",
        "2..64 nodes: round time, bytes per node, time to target accuracy",
    ),
    (
        "communication",
        "bytes per round against the minimum, with and without int8 updates",
    ),
    (
        "fault-tolerance",
        "0..50% of nodes failing, and the aggregator failing mid-round",
    ),
    ("privacy", "accuracy at epsilon 1, 3, 8 and without DP"),
    (
        "non-iid",
        "Dirichlet alpha 0.1, 0.5, 100 with FedAvg and FedProx",
    ),
    (
        "inference-latency",
        "local model against fetching it by CID first",
    ),
    ("resources", "CPU, memory and GPU per node"),
];

fn main() -> anyhow::Result<()> {
    let wanted = std::env::args().nth(1);
    match wanted.as_deref() {
        None | Some("list" | "--help" | "-h") => {
            println!("experiments (run one by name, or `all`):");
            for (name, what) in EXPERIMENTS {
                println!("  {name:<26} {what}");
            }
            Ok(())
        }
        Some(name) if name == "all" || EXPERIMENTS.iter().any(|(n, _)| *n == name) => {
            anyhow::bail!("experiment {name:?} needs the federated rounds, which are not built yet")
        }
        Some(name) => anyhow::bail!("unknown experiment {name:?}; `list` shows them"),
    }
}
