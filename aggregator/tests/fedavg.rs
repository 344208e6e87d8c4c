//! FedAvg against hand-computed means, and the determinism every rule promises: the same
//! bytes for any arrival order, any thread count, streamed or all at once.

mod common;

use aggregator::{
    Aggregation, AggregatorConfig, Contribution, FedAvg, Rule, ServerState, Strategy,
    aggregate_round,
};
use common::{Gauss, bundle, bytes, cid, contribution};
use fl_core::content::Block;

const SMALL: &[(&str, &[usize])] = &[("fc.bias", &[2]), ("fc.weight", &[2, 2])];

#[test]
fn fedavg_equals_the_hand_computed_weighted_mean() {
    let model = cid("model");
    // Flat order is name order: fc.bias then fc.weight.
    let global = bundle(SMALL, &[1.0, -1.0, 0.0, 0.5, 2.0, 4.0]);
    let updates = vec![
        contribution(
            "a",
            "1",
            model,
            1,
            bundle(SMALL, &[1.0, 2.0, 4.0, -8.0, 0.0, 1.0]),
        ),
        contribution(
            "b",
            "1",
            model,
            3,
            bundle(SMALL, &[-1.0, 2.0, 0.0, 8.0, 4.0, 1.0]),
        ),
        contribution(
            "c",
            "1",
            model,
            4,
            bundle(SMALL, &[0.5, -2.0, 2.0, 0.0, -2.0, 1.0]),
        ),
    ];
    // Weights 1/8, 3/8, 4/8:
    //   (1*1 + 3*-1 + 4*0.5)/8 = 0      (1*2 + 3*2 + 4*-2)/8 = 0
    //   (1*4 + 3*0 + 4*2)/8 = 1.5       (1*-8 + 3*8 + 4*0)/8 = 2
    //   (1*0 + 3*4 + 4*-2)/8 = 0.5      (1 + 3 + 4)/8 = 1
    let want = bundle(SMALL, &[1.0, -1.0, 1.5, 2.5, 2.5, 5.0]);
    let (got, state) = FedAvg
        .aggregate(&global, &updates, ServerState::empty())
        .unwrap();
    assert_eq!(got, want);
    assert!(state.is_empty());
    let config = AggregatorConfig::new(Rule::FedAvg(FedAvg));
    let out = aggregate_round(&config, &global, model, updates, ServerState::empty()).unwrap();
    assert_eq!(out.model, want);
    assert_eq!(out.accepted.len(), 3);
}

/// DP-FedAvg's fixed denominator: the weighted sum over the expected weight, not over the
/// weight that came (McMahan et al. 2018), and only for mean rules.
#[test]
fn a_fixed_total_divides_the_weighted_sum_by_it() {
    let model = cid("model");
    let global = bundle(SMALL, &[0.0; 6]);
    let updates = vec![
        contribution(
            "a",
            "1",
            model,
            1,
            bundle(SMALL, &[8.0, 0.0, 0.0, 0.0, 0.0, 4.0]),
        ),
        contribution(
            "b",
            "1",
            model,
            3,
            bundle(SMALL, &[0.0, 8.0, 0.0, 0.0, 0.0, 4.0]),
        ),
    ];
    // Sum: (8, 24, 0, 0, 0, 16); over a fixed 8 (not the 4 that came): (1, 3, 0, 0, 0, 2).
    let config = AggregatorConfig::new(Rule::FedAvg(FedAvg)).with_fixed_total(8);
    let out = aggregate_round(
        &config,
        &global,
        model,
        updates.clone(),
        ServerState::empty(),
    )
    .unwrap();
    assert_eq!(out.model, bundle(SMALL, &[1.0, 3.0, 0.0, 0.0, 0.0, 2.0]));
    let plain = AggregatorConfig::new(Rule::FedAvg(FedAvg));
    let out = aggregate_round(&plain, &global, model, updates, ServerState::empty()).unwrap();
    assert_eq!(out.model, bundle(SMALL, &[2.0, 6.0, 0.0, 0.0, 0.0, 4.0]));
    let median: Rule = "median".parse().unwrap();
    let err = AggregatorConfig::new(median)
        .with_fixed_total(8)
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("fixed_total"), "{err}");
    let zero = AggregatorConfig::new(Rule::FedAvg(FedAvg)).with_fixed_total(0);
    assert!(zero.validate().is_err());
}

/// 17 updates of 20,000 values with assorted sample counts and magnitudes (so that the
/// order of `f64` additions matters to the last bit).
fn many_updates() -> (fl_core::tensors::Bundle, cid::Cid, Vec<Contribution>) {
    const LAYOUT: &[(&str, &[usize])] = &[("a", &[100, 150]), ("b", &[5_000])];
    let mut g = Gauss::new(7);
    let global = bundle(LAYOUT, &g.vector(20_000, 1.0));
    let model = *Block::hashed(0x55, bytes(&global)).cid();
    let updates = (0..17)
        .map(|i| {
            let scale = 10f64.powi(i % 7 - 3);
            let delta = bundle(LAYOUT, &g.vector(20_000, scale));
            contribution(
                &format!("node-{i:02}"),
                "u",
                model,
                1 + (i as u64 * 37) % 101,
                delta,
            )
        })
        .collect();
    (global, model, updates)
}

/// A fixed, order-scrambling permutation of `v`.
fn scramble<T: Clone>(v: &[T], seed: usize) -> Vec<T> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by_key(|&i| (i * (2 * seed + 1) * 7919) % 1009);
    if seed % 2 == 1 {
        idx.reverse();
    }
    idx.into_iter().map(|i| v[i].clone()).collect()
}

#[test]
fn permuting_the_arrival_order_gives_byte_identical_output() {
    let (global, model, updates) = many_updates();
    for rule in [
        "fedavg",
        "fedadam",
        "norm-bound:20",
        "median",
        "trimmed-mean:0.2",
        "krum:5",
    ] {
        let config = AggregatorConfig::new(rule.parse().unwrap());
        let reference = aggregate_round(
            &config,
            &global,
            model,
            updates.clone(),
            ServerState::empty(),
        )
        .unwrap();
        for seed in 0..3 {
            let shuffled = scramble(&updates, seed);
            assert_ne!(
                shuffled.iter().map(|c| &c.sender).collect::<Vec<_>>(),
                updates.iter().map(|c| &c.sender).collect::<Vec<_>>()
            );
            let out = aggregate_round(
                &config,
                &global,
                model,
                shuffled.clone(),
                ServerState::empty(),
            )
            .unwrap();
            assert_eq!(
                bytes(&out.model),
                bytes(&reference.model),
                "{rule}, order {seed}"
            );
            assert_eq!(out.state, reference.state);
            // The strategy alone, fed the shuffled slice directly, agrees too.
            let (direct, _) = config
                .rule
                .aggregate(&global, &shuffled, ServerState::empty())
                .unwrap();
            assert_eq!(
                bytes(&direct),
                bytes(&reference.model),
                "{rule} direct, order {seed}"
            );
        }
    }
}

#[test]
fn thread_count_does_not_change_a_single_byte() {
    let (global, model, updates) = many_updates();
    for rule in [
        "fedavg",
        "fedyogi",
        "norm-bound:20",
        "median",
        "trimmed-mean:0.2",
        "krum:5",
    ] {
        let config = AggregatorConfig::new(rule.parse().unwrap());
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let out = aggregate_round(
                    &config,
                    &global,
                    model,
                    updates.clone(),
                    ServerState::empty(),
                )
                .unwrap();
                (bytes(&out.model), out.state)
            })
        };
        let one = run(1);
        for threads in [2, 3, 8] {
            assert!(run(threads) == one, "{rule} on {threads} threads");
        }
    }
}

#[test]
fn streaming_one_update_at_a_time_equals_aggregating_all_at_once() {
    let (global, model, mut updates) = many_updates();
    updates.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    for rule in ["fedavg", "fedavgm", "fedadam", "fedyogi", "norm-bound:20"] {
        let config = AggregatorConfig::new(rule.parse().unwrap());
        let (batch, batch_state) = config
            .rule
            .aggregate(&global, &updates, ServerState::empty())
            .unwrap();
        let mut round = Aggregation::new(&config, &global, model).unwrap();
        for c in updates.iter().cloned() {
            round.offer(c).unwrap();
        }
        let out = round.finish(ServerState::empty()).unwrap();
        assert_eq!(bytes(&out.model), bytes(&batch), "{rule}");
        assert_eq!(out.state, batch_state, "{rule}");
    }
}

#[test]
fn offering_out_of_order_is_refused() {
    let (global, model, mut updates) = many_updates();
    updates.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    let mut round = Aggregation::new(&AggregatorConfig::default(), &global, model).unwrap();
    round.offer(updates[1].clone()).unwrap();
    let err = round.offer(updates[0].clone()).unwrap_err();
    assert!(
        err.to_string().contains("offered after one from node-01"),
        "{err}"
    );
}
