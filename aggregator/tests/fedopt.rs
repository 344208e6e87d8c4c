//! FedAvgM, FedAdam and FedYogi against the update rules of Reddi et al. (2021), written
//! out by hand for two or three rounds, and server state that round-trips through bytes.

mod common;

use aggregator::{AggregateError, FedAdam, FedAvgM, FedYogi, Rule, ServerState, Strategy};
use common::{bundle, cid, contribution};
use fl_core::tensors::Bundle;

const LAYOUT: &[(&str, &[usize])] = &[("b", &[1]), ("w", &[2])];

/// One update per round whose mean is `delta` (a single node, so the mean is the update).
fn round_input(delta: [f32; 3], round: u32) -> Vec<aggregator::Contribution> {
    vec![contribution(
        "n",
        &round.to_string(),
        cid("m"),
        5,
        bundle(LAYOUT, &delta),
    )]
}

fn values(b: &Bundle) -> Vec<f32> {
    b.flatten()
}

fn close(got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!(
            (f64::from(*g) - w).abs() <= 1e-6 * w.abs().max(1.0),
            "got {got:?}, want {want:?}"
        );
    }
}

const X0: [f32; 3] = [1.0, -2.0, 0.5];
const D1: [f32; 3] = [0.5, 0.25, -1.0];
const D2: [f32; 3] = [-0.25, 0.25, 0.01];

#[test]
fn fedavgm_adds_momentum_times_the_server_rate() {
    let rule = FedAvgM {
        server_lr: 0.5,
        momentum: 0.9,
    };
    let global = bundle(LAYOUT, &X0);
    let (x1, s1) = rule
        .aggregate(&global, &round_input(D1, 1), ServerState::empty())
        .unwrap();
    // m1 = Δ1; x1 = x0 + 0.5 m1
    close(&values(&x1), &[1.25, -1.875, 0.0]);
    assert_eq!(
        s1.as_bundle().get("momentum.w").unwrap().data,
        vec![0.25, -1.0]
    );
    let (x2, s2) = rule.aggregate(&x1, &round_input(D2, 2), s1).unwrap();
    // m2 = 0.9 m1 + Δ2 = [0.2, 0.475, -0.89]; x2 = x1 + 0.5 m2
    close(&values(&x2), &[1.35, -1.6375, -0.445]);
    close(&values(s2.as_bundle()), &[0.2, 0.475, -0.89]);
}

/// FedAdam by hand: m = β1 m + (1-β1) Δ, v = β2 v + (1-β2) Δ², x += η m / (√v + τ), from
/// m = 0, v = τ².
#[test]
fn fedadam_matches_two_hand_computed_steps() {
    let rule = FedAdam {
        server_lr: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        tau: 0.001,
    };
    let global = bundle(LAYOUT, &X0);
    let (x1, s1) = rule
        .aggregate(&global, &round_input(D1, 1), ServerState::empty())
        .unwrap();
    // Coordinate b (Δ = 0.5): m = 0.05, v = 0.99e-6 + 0.0025 = 0.00250099,
    // x = 1 + 0.1 * 0.05 / (0.0500099 + 0.001) = 1.0980202...
    // Coordinate w0 (Δ = 0.25): m = 0.025, v = 0.99e-6 + 0.000625 = 0.00062599,
    // x = -2 + 0.0025 / (0.02501979 + 0.001) = -1.9039193...
    // Coordinate w1 (Δ = -1): m = -0.1, v = 0.99e-6 + 0.01 = 0.01000099,
    // x = 0.5 - 0.01 / (0.10000495 + 0.001) = 0.4009950...
    close(&values(&x1), &[1.098_020_2, -1.903_919_3, 0.400_995_0]);
    close(&values(s1.as_bundle())[..3], &[0.05, 0.025, -0.1]);
    close(
        &values(s1.as_bundle())[3..],
        &[0.002_500_99, 0.000_625_99, 0.010_000_99],
    );
    // Round 2, b (Δ = -0.25): m = 0.045 - 0.025 = 0.02, v = 0.99 * 0.00250099 + 0.000625
    // = 0.0031009801, x = 1.0980202 + 0.002 / (0.05568644 + 0.001) = 1.1333020...
    let (x2, s2) = rule.aggregate(&x1, &round_input(D2, 2), s1).unwrap();
    assert!(
        (f64::from(values(&x2)[0]) - 1.133_302_0).abs() < 1e-6,
        "{:?}",
        values(&x2)
    );
    close(&values(s2.as_bundle())[..1], &[0.02]);
    close(&values(s2.as_bundle())[3..4], &[0.003_100_980_1]);
}

/// FedYogi by hand: v = v - (1-β2) Δ² sign(v - Δ²), else as FedAdam.
#[test]
fn fedyogi_matches_hand_computed_steps_with_both_signs() {
    let rule = FedYogi {
        server_lr: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        tau: 0.001,
    };
    let global = bundle(LAYOUT, &X0);
    let (x1, s1) = rule
        .aggregate(&global, &round_input(D1, 1), ServerState::empty())
        .unwrap();
    // b: v = 1e-6 - 0.01 * 0.25 * sign(1e-6 - 0.25) = 0.002501 (Adam: 0.00250099),
    // x = 1 + 0.005 / (0.050009999 + 0.001) = 1.0980200...
    close(&values(s1.as_bundle())[3..4], &[0.002_501]);
    close(&values(&x1)[..1], &[1.098_020_0]);
    // Round 2, b (Δ = -0.25, Δ² = 0.0625 > v): v = 0.002501 + 0.000625 = 0.003126.
    let (x2, s2) = rule.aggregate(&x1, &round_input(D2, 2), s1).unwrap();
    close(&values(s2.as_bundle())[3..4], &[0.003_126]);
    // Round 3, b (Δ = 0.01, Δ² = 0.0001 < v): v = 0.003126 - 0.000001 = 0.003125,
    // m = 0.9 * 0.02 + 0.1 * 0.01 = 0.019, x += 0.1 * 0.019 / (√0.003125 + 0.001).
    let (x3, s3) = rule
        .aggregate(&x2, &round_input([0.01, 0.0, 0.0], 3), s2)
        .unwrap();
    close(&values(s3.as_bundle())[3..4], &[0.003_125]);
    close(&values(s3.as_bundle())[..1], &[0.019]);
    let step = 0.1 * 0.019 / (0.003_125f64.sqrt() + 0.001);
    close(&values(&x3)[..1], &[f64::from(values(&x2)[0]) + step]);
}

#[test]
fn server_state_round_trips_through_safetensors_and_recomputes_the_same_bytes() {
    let global = bundle(LAYOUT, &X0);
    for rule in ["fedavgm", "fedadam", "fedyogi"] {
        let rule: Rule = rule.parse().unwrap();
        let (x1, s1) = rule
            .aggregate(&global, &round_input(D1, 1), ServerState::empty())
            .unwrap();
        assert_eq!(s1.rule(), Some(rule.name()));
        let published = s1.to_safetensors().unwrap();
        let restored = ServerState::from_safetensors(&published).unwrap();
        assert_eq!(restored, s1);
        let (a, sa) = rule.aggregate(&x1, &round_input(D2, 2), s1).unwrap();
        let (b, sb) = rule.aggregate(&x1, &round_input(D2, 2), restored).unwrap();
        assert_eq!(a.to_safetensors().unwrap(), b.to_safetensors().unwrap());
        assert_eq!(sa.to_safetensors().unwrap(), sb.to_safetensors().unwrap());
    }
}

#[test]
fn foreign_or_misshapen_state_is_refused() {
    let global = bundle(LAYOUT, &X0);
    let adam: Rule = "fedadam".parse().unwrap();
    let yogi: Rule = "fedyogi".parse().unwrap();
    let (_, s1) = adam
        .aggregate(&global, &round_input(D1, 1), ServerState::empty())
        .unwrap();
    let err = yogi
        .aggregate(&global, &round_input(D2, 2), s1.clone())
        .unwrap_err();
    assert!(matches!(err, AggregateError::StateRule { .. }));
    assert_eq!(
        err.to_string(),
        "server state is for fedadam, the rule is fedyogi"
    );

    let other: &[(&str, &[usize])] = &[("b", &[1]), ("w", &[3])];
    let bigger = bundle(other, &[0.0; 4]);
    let input = vec![contribution(
        "n",
        "x",
        cid("m"),
        1,
        bundle(other, &[0.0; 4]),
    )];
    let err = adam.aggregate(&bigger, &input, s1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "server state for fedadam: tensor m.w is [2], expected [3]"
    );
}

#[test]
fn stateless_rules_return_empty_state() {
    let global = bundle(LAYOUT, &X0);
    for rule in ["fedavg", "median", "trimmed-mean:0.1", "norm-bound:1"] {
        let rule: Rule = rule.parse().unwrap();
        let (_, state) = rule
            .aggregate(&global, &round_input(D1, 1), ServerState::empty())
            .unwrap();
        assert!(state.is_empty(), "{rule}");
    }
}
