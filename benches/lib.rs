//! Helpers shared by the criterion benchmarks in `benches/`, which print each figure
//! beside its physical limit and the ratio of the two.

use std::path::PathBuf;

/// Reads criterion's mean time (ns) for `function` of `group` from this run's estimates.
pub fn mean_ns(group: &str, function: &str) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target
        .join("criterion")
        .join(group)
        .join(function)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let at = text.find("\"mean\"")?;
    let rest = &text[at..];
    let pe = rest.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let end = rest[pe..].find([',', '}'])?;
    rest[pe..pe + end].trim().parse().ok()
}

/// The reference CNN's layout (PyTorch names and shapes, 1,756,426 values), from the model zoo.
pub fn reference_layout() -> fl_core::tensors::Bundle {
    // The zoo's own layout cannot fail for a built-in architecture; a bench may stop if it does.
    fl_core::model::Architecture::FedAvgCnn
        .layout()
        .expect("the reference CNN has a layout")
}

/// `n` reproducible pseudo-random values in `[-scale/2, scale/2)` (xorshift64 from `seed`).
pub fn pseudo_random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}
