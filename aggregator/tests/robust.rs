//! The robust-rules table: ten updates the size of the reference CNN (1,756,426 values),
//! seven honest (a common mean plus small Gaussian noise) and three attacks (a sign flip
//! scaled by 10, large random noise, an update full of NaN). Run with `--nocapture` to see
//! the table; aggregator/README.md keeps a copy.

mod common;

use aggregator::{
    AggregatorConfig, Contribution, Krum, Rule, ServerState, Strategy, aggregate_round,
};
use common::{Gauss, REFERENCE_CNN, bundle, cid, contribution, size};
use fl_core::records::RejectReason;
use fl_core::tensors::Bundle;

/// Per-coordinate spread of the common mean, of honest noise, and of the noise attack.
const MEAN_SD: f64 = 0.01;
const HONEST_SD: f64 = 0.001;
const ATTACK_SD: f64 = 1.0;

/// L2 distance between `model - global` and `target`, in f64.
fn distance(model: &Bundle, global: &Bundle, target: &[f64]) -> f64 {
    let (m, g) = (model.flatten(), global.flatten());
    m.iter()
        .zip(&g)
        .zip(target)
        .map(|((&m, &g), &t)| {
            let d = f64::from(m) - f64::from(g) - t;
            d * d
        })
        .sum::<f64>()
        .sqrt()
}

#[test]
fn robust_rules_end_near_the_honest_mean_despite_three_attacks() {
    let d = size(REFERENCE_CNN);
    assert_eq!(d, 1_756_426);
    let mut g = Gauss::new(2024);
    let global = bundle(REFERENCE_CNN, &g.vector(d, 0.05));
    let model = cid("round model");
    let mean = g.vector(d, MEAN_SD);
    let honest: Vec<Vec<f32>> = (0..7)
        .map(|_| {
            mean.iter()
                .zip(g.vector(d, HONEST_SD))
                .map(|(m, e)| m + e)
                .collect()
        })
        .collect();
    let flip: Vec<f32> = mean
        .iter()
        .zip(g.vector(d, HONEST_SD))
        .map(|(m, e)| -10.0 * (m + e))
        .collect();
    let noise = g.vector(d, ATTACK_SD);
    let nan = vec![f32::NAN; d];

    let honest_mean: Vec<f64> = (0..d)
        .map(|j| honest.iter().map(|h| f64::from(h[j])).sum::<f64>() / honest.len() as f64)
        .collect();
    // Spread: root mean square L2 distance of the honest updates from their mean.
    let spread = (honest
        .iter()
        .map(|h| {
            h.iter()
                .zip(&honest_mean)
                .map(|(&x, &m)| (f64::from(x) - m).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        / honest.len() as f64)
        .sqrt();
    let mut norms: Vec<f64> = honest
        .iter()
        .map(|h| aggregator::math::sum_squares(h).sqrt())
        .collect();
    norms.sort_by(f64::total_cmp);
    let honest_norm = norms[norms.len() / 2];

    let mut updates: Vec<Contribution> = honest
        .iter()
        .enumerate()
        .map(|(i, h)| {
            contribution(
                &format!("honest-{i}"),
                "u",
                model,
                100,
                bundle(REFERENCE_CNN, h),
            )
        })
        .collect();
    updates.push(contribution(
        "attack-flip",
        "u",
        model,
        100,
        bundle(REFERENCE_CNN, &flip),
    ));
    updates.push(contribution(
        "attack-noise",
        "u",
        model,
        100,
        bundle(REFERENCE_CNN, &noise),
    ));
    updates.push(contribution(
        "attack-nan",
        "u",
        model,
        100,
        bundle(REFERENCE_CNN, &nan),
    ));

    let mut rows: Vec<(String, &str, f64)> = Vec::new();

    // FedAvg alone: the NaN update poisons every coordinate.
    let (avg, _) = Rule::default()
        .aggregate(&global, &updates, ServerState::empty())
        .unwrap();
    let fedavg_raw = distance(&avg, &global, &honest_mean);
    assert!(fedavg_raw.is_nan());
    rows.push(("fedavg".into(), "all 10", fedavg_raw));

    // FedAvg behind validation: the NaN update is rejected; the other two still count.
    let validated = |rule: &str| {
        let config = AggregatorConfig::new(rule.parse().unwrap());
        aggregate_round(
            &config,
            &global,
            model,
            updates.clone(),
            ServerState::empty(),
        )
        .unwrap()
    };
    let out = validated("fedavg");
    let rejected: Vec<(&str, RejectReason)> = out
        .rejected
        .iter()
        .map(|r| (r.sender().as_str(), r.reason()))
        .collect();
    assert_eq!(rejected, vec![("attack-nan", RejectReason::NonFinite)]);
    assert_eq!(out.accepted.len(), 9);
    let fedavg_valid = distance(&out.model, &global, &honest_mean);
    rows.push(("fedavg".into(), "validated (NaN rejected)", fedavg_valid));

    // Norm bounding at the honest median norm, behind validation.
    let bound_rule = format!("norm-bound:{:.3}", honest_norm);
    let out = validated(&bound_rule);
    let norm_bound = distance(&out.model, &global, &honest_mean);
    rows.push((bound_rule, "validated (NaN rejected)", norm_bound));

    // The robust rules on all ten, NaN included, with no validation in front.
    let mut robust = Vec::new();
    for rule in [
        "median",
        "trimmed-mean:0.3",
        "krum:3",
        "median:screen=0",
        "trimmed-mean:0.3:screen=0",
    ] {
        let (m, _) = rule
            .parse::<Rule>()
            .unwrap()
            .aggregate(&global, &updates, ServerState::empty())
            .unwrap();
        let dist = distance(&m, &global, &honest_mean);
        robust.push(dist);
        rows.push((rule.into(), "all 10", dist));
    }
    let kept = Krum { f: 3, m: None }.select(&global, &updates).unwrap();
    assert!(kept.iter().all(|c| c.sender.as_str().starts_with("honest")));
    assert_eq!(kept.len(), 7);

    println!(
        "\nn = 10 updates of {d} values: 7 honest (mean ~ N(0, {MEAN_SD}^2) per value, plus N(0, {HONEST_SD}^2) noise), \
         3 attacks (sign flip x10, N(0, {ATTACK_SD}^2) noise, all NaN).\n\
         honest spread (RMS L2 distance of an honest update to the honest mean) = {spread:.4}; \
         median honest update norm = {honest_norm:.3}\n"
    );
    println!("| rule | updates seen | L2 distance to honest mean | relative to spread |");
    println!("| --- | --- | --- | --- |");
    for (rule, input, dist) in &rows {
        println!("| {rule} | {input} | {dist:.4} | {:.4} |", dist / spread);
    }

    // Stated bounds, relative to the honest spread.
    let (median, trimmed, krum) = (robust[0], robust[1], robust[2]);
    let (plain_median, plain_trimmed) = (robust[3], robust[4]);
    assert!(median <= 0.5 * spread, "median {median} vs spread {spread}");
    // The screen leaves the three far updates out (and only those), so the rank bias they
    // cause is gone: what is left is the rule's own spread over the seven honest updates.
    let deltas: Vec<&Bundle> = updates.iter().map(|c| &*c.delta).collect();
    let kept = aggregator::screen::screen(&global, &deltas, aggregator::screen::DEFAULT_SCREEN);
    assert_eq!(kept.len(), 7);
    assert!(
        kept.iter()
            .zip(&deltas[..7])
            .all(|(k, h)| std::ptr::eq(*k, *h))
    );
    assert!(
        median < plain_median && trimmed < 0.5 * plain_trimmed,
        "screened {median}, {trimmed} vs plain {plain_median}, {plain_trimmed}"
    );
    assert!(
        trimmed <= 0.5 * spread,
        "trimmed mean {trimmed} vs spread {spread}"
    );
    assert!(krum <= 1e-3 * spread, "krum {krum} vs spread {spread}");
    // Without a robust rule, the two finite attacks pull the mean far away.
    assert!(fedavg_valid > 10.0 * spread);
    assert!(norm_bound < fedavg_valid);
}

#[test]
fn a_krum_tolerance_from_a_task_record_never_overflows() {
    // A task may name any `f`: the largest refuses like any other too large for n.
    let layout: &[(&str, &[usize])] = &[("w", &[4])];
    let global = bundle(layout, &[0.0; 4]);
    let model = cid("round model");
    let updates: Vec<Contribution> = (0..5)
        .map(|i| {
            let delta = bundle(layout, &[i as f32; 4]);
            contribution(&format!("peer-{i}"), "update", model, 10, delta)
        })
        .collect();
    for f in [usize::MAX, usize::MAX / 2, usize::MAX / 2 - 1] {
        let err = Krum { f, m: None }.select(&global, &updates).unwrap_err();
        assert!(
            matches!(err, aggregator::AggregateError::TooFewForKrum { n: 5, .. }),
            "{err}"
        );
    }
}
