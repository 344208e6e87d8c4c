//! Secure aggregation in whole federations (`fl simulate --secure-aggregation`): real nodes
//! on loopback publish masked updates, rounds reveal only their sums, members that vanish
//! are tolerated up to the threshold, and `fl verify` recomputes a secure round from public
//! material alone.

mod common;

use std::path::Path;

use common::simulate::{fl, simulate};

/// `fl verify MANIFEST` from `repo`: whether it says valid, and what it printed.
fn verify(repo: &Path, manifest: &str) -> (bool, String) {
    let out = fl(&[
        "verify",
        manifest,
        "--repo",
        repo.to_str().expect("utf-8 path"),
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.contains("valid"), text)
}

/// Rows of a run, and the manifest each names.
fn rows(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    lines.iter().filter(|l| l["type"] == "round").collect()
}

#[test]
fn a_secure_round_sums_every_masked_update_though_a_member_never_answers() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let keep = dir.path().join("run");
    // Five members, threshold 4: the mute member's seed is recovered from the four others'
    // shares, so its update still counts.
    let Some((stdout, lines)) = simulate(&[
        "--nodes",
        "5",
        "--rounds",
        "2",
        "--steps",
        "2",
        "--images",
        "1000",
        "--deadline",
        "120",
        "--grace",
        "10",
        "--secure-aggregation",
        "--attack",
        "4:mute",
        "--keep",
        keep.to_str().expect("utf-8 path"),
    ]) else {
        return;
    };
    let rows = rows(&lines);
    assert_eq!(rows.len(), 2, "{stdout}");
    for row in &rows {
        assert_eq!(row["participants"], 5, "{row}");
    }
    // The four honest members end on one model. The mute one is an attacker, which the run
    // stops once the honest members are done, possibly while it still lingers after the last
    // round; so its agreement is read from what it adopted, not from how it ended.
    let summary = lines.last().expect("a summary");
    assert!(summary["agreeing"].as_u64() >= Some(4), "{summary}");
    let mute_adopted: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["type"] == "node" && l["node"] == 4 && l["event"] == "adopted")
        .map(|l| &l["manifest"])
        .collect();
    let manifests: Vec<&serde_json::Value> = rows.iter().map(|r| &r["manifest"]).collect();
    assert_eq!(
        mute_adopted, manifests,
        "the mute member adopted every round: {stdout}"
    );
    let answered = lines
        .iter()
        .filter(|l| l["type"] == "node" && l["event"] == "announced")
        .count();
    assert_eq!(answered, 10, "every member masked and announced: {stdout}");
    for row in &rows {
        let manifest = row["manifest"].as_str().expect("a manifest");
        let (valid, text) = verify(&keep.join("node-001"), manifest);
        assert!(valid, "{text}");
    }
}

#[test]
fn a_member_that_stops_before_masking_is_left_out_and_its_masks_removed() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let keep = dir.path().join("run");
    let Some((stdout, lines)) = simulate(&[
        "--nodes",
        "5",
        "--rounds",
        "2",
        "--steps",
        "2",
        "--images",
        "1000",
        "--min-participants",
        "4",
        "--deadline",
        "120",
        "--grace",
        "10",
        "--secure-aggregation",
        "--fail",
        "4@2",
        "--keep",
        keep.to_str().expect("utf-8 path"),
    ]) else {
        return;
    };
    let rows = rows(&lines);
    assert_eq!(rows.len(), 2, "{stdout}");
    assert_eq!(rows[0]["participants"], 5, "{stdout}");
    assert_eq!(rows[1]["participants"], 4, "{stdout}");
    let summary = lines.last().expect("a summary");
    assert_eq!(summary["agreeing"], 4, "{summary}");
    let manifest = rows[1]["manifest"].as_str().expect("a manifest");
    let (valid, text) = verify(&keep.join("node-000"), manifest);
    assert!(valid, "{text}");
}
