//! `fl privacy` against Google's dp-accounting (values from fl-core/tests/vectors/rdp_vectors.json).

use std::process::Command;

fn fl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn epsilon_matches_dp_accounting_and_the_inverse_meets_its_target() {
    // dp-accounting 0.6.0 RdpAccountant: q=0.01, z=1, T=1000, delta=1e-5 -> 2.101366525420273.
    let (ok, out, err) = fl(&[
        "privacy", "--q", "0.01", "--z", "1", "--rounds", "1000", "--delta", "1e-5",
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("epsilon = 2.101367"), "{out}");
    let (ok, out, err) = fl(&[
        "privacy",
        "--q",
        "0.01",
        "--rounds",
        "1000",
        "--epsilon",
        "2",
    ]);
    assert!(ok, "{err}");
    let z: f64 = out.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(z > 1.0 && z < 1.05, "{out}");
}

#[test]
fn invalid_privacy_arguments_fail_with_one_line() {
    for args in [
        vec!["privacy", "--q", "2", "--z", "1", "--rounds", "10"],
        vec!["privacy", "--q", "0.1", "--z", "-1", "--rounds", "10"],
        vec!["privacy", "--q", "0.1", "--rounds", "10", "--epsilon", "0"],
        vec![
            "privacy", "--q", "0.1", "--z", "1", "--rounds", "10", "--delta", "1.5",
        ],
        vec!["privacy", "--q", "0.1", "--rounds", "10"],
    ] {
        let (ok, _, err) = fl(&args);
        assert!(!ok, "{args:?}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"));
    }
}
