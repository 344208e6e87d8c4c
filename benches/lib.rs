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
