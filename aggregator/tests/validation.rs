//! Bad input: each kind of bad update is rejected with its reason, the round goes on, and
//! the result from the valid updates is byte for byte what it would be without the bad ones.

mod common;

use aggregator::validate::screen;
use aggregator::{AggregatorConfig, Contribution, Rejection, ServerState, aggregate_round};
use common::{bundle, bytes, cid, contribution};

const LAYOUT: &[(&str, &[usize])] = &[("fc.bias", &[2]), ("fc.weight", &[2, 3])];

fn flat(seed: f32) -> Vec<f32> {
    (0..8).map(|i| seed * 0.1 + i as f32 * 0.01).collect()
}

/// The round's model, three valid updates and one bad update of each kind.
fn round() -> (
    fl_core::tensors::Bundle,
    cid::Cid,
    Vec<Contribution>,
    Vec<Contribution>,
) {
    let model = cid("model");
    let global = bundle(LAYOUT, &[0.5; 8]);
    let valid = vec![
        contribution("alice", "1", model, 10, bundle(LAYOUT, &flat(1.0))),
        contribution("bob", "1", model, 20, bundle(LAYOUT, &flat(2.0))),
        contribution("carol", "1", model, 30, bundle(LAYOUT, &flat(-1.0))),
    ];
    let mut wrong_shape = fl_core::tensors::Bundle::new();
    wrong_shape
        .insert("fc.bias", vec![2], vec![0.0; 2])
        .unwrap();
    wrong_shape
        .insert("fc.weight", vec![3, 2], vec![0.0; 6])
        .unwrap();
    let mut nan = flat(1.0);
    nan[5] = f32::NAN;
    let mut inf = flat(1.0);
    inf[1] = f32::NEG_INFINITY;
    let mut big = flat(1.0);
    big[0] = 100.0;
    // bob's second update: sorts after his first, so the first is the one considered.
    let duplicate = (2..)
        .map(|k| contribution("bob", &k.to_string(), model, 20, bundle(LAYOUT, &flat(9.0))))
        .find(|c| c.cid > valid[1].cid)
        .unwrap();
    assert!(duplicate.cid > valid[1].cid);
    let bad = vec![
        contribution("dave", "1", model, 10, wrong_shape),
        contribution(
            "erin",
            "1",
            cid("older model"),
            10,
            bundle(LAYOUT, &flat(3.0)),
        ),
        contribution("frank", "1", model, 10, bundle(LAYOUT, &nan)),
        contribution("grace", "1", model, 10, bundle(LAYOUT, &inf)),
        contribution("heidi", "1", model, 10, bundle(LAYOUT, &big)),
        duplicate,
        contribution("ivan", "1", model, 0, bundle(LAYOUT, &flat(4.0))),
    ];
    (global, model, valid, bad)
}

#[test]
fn each_bad_update_is_rejected_with_its_reason_and_the_result_is_unchanged() {
    let (global, model, valid, bad) = round();
    for rule in [
        "fedavg",
        "fedadam",
        "norm-bound:0.5",
        "median",
        "trimmed-mean:0.3",
        "krum:0",
    ] {
        let config = AggregatorConfig::new(rule.parse().unwrap()).with_max_update_norm(10.0);
        let clean =
            aggregate_round(&config, &global, model, valid.clone(), ServerState::empty()).unwrap();
        assert!(clean.rejected.is_empty());
        let mut all = bad.clone();
        all.extend(valid.iter().cloned());
        let out = aggregate_round(&config, &global, model, all, ServerState::empty()).unwrap();
        assert_eq!(bytes(&out.model), bytes(&clean.model), "{rule}");
        assert_eq!(out.state, clean.state, "{rule}");
        assert_eq!(out.accepted, clean.accepted, "{rule}");

        let mut reasons: Vec<(String, String)> = out
            .rejected
            .iter()
            .map(|r| (r.sender().to_string(), r.reason().to_string()))
            .collect();
        reasons.sort();
        let reasons: Vec<(&str, &str)> = reasons
            .iter()
            .map(|(s, r)| (s.as_str(), r.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("bob", "duplicate-sender"),
                ("dave", "layout"),
                ("erin", "wrong-base"),
                ("frank", "non-finite"),
                ("grace", "non-finite"),
                ("heidi", "norm-too-large"),
                ("ivan", "zero-samples"),
            ],
            "{rule}"
        );
    }
}

#[test]
fn rejections_name_the_sender_the_update_and_the_tensor() {
    let (global, model, valid, bad) = round();
    let config = AggregatorConfig::default().with_max_update_norm(10.0);
    let mut all = bad.clone();
    all.extend(valid.iter().cloned());
    let out = aggregate_round(&config, &global, model, all, ServerState::empty()).unwrap();
    let message = |sender: &str| {
        let r: &Rejection = out
            .rejected
            .iter()
            .find(|r| r.sender().as_str() == sender)
            .unwrap();
        let c = bad.iter().find(|c| c.sender.as_str() == sender).unwrap();
        assert_eq!(r.update(), &c.cid);
        let text = r.to_string();
        assert!(
            text.starts_with(&format!("update {} from {sender}: ", c.cid)),
            "{text}"
        );
        text
    };
    assert!(message("dave").ends_with("tensor fc.weight is [3, 2], expected [2, 3]"));
    assert!(message("erin").contains(&format!(
        "computed against model {}, the round's model is {model}",
        cid("older model")
    )));
    assert!(message("frank").ends_with("tensor fc.weight holds NaN at index 3"));
    assert!(message("grace").ends_with("tensor fc.bias holds -inf at index 1"));
    assert!(message("heidi").contains("exceeds the bound 10"));
    assert!(message("bob").contains(&format!("(the first is {})", valid[1].cid)));
    assert!(message("ivan").ends_with("claims 0 samples"));
}

#[test]
fn a_round_with_only_bad_updates_has_nothing_to_aggregate() {
    let (global, model, _, bad) = round();
    // Without bob's first update, his second would be his only one, and valid.
    let bad: Vec<Contribution> = bad
        .into_iter()
        .filter(|c| c.sender.as_str() != "bob")
        .collect();
    let config = AggregatorConfig::default().with_max_update_norm(10.0);
    let err = aggregate_round(&config, &global, model, bad, ServerState::empty()).unwrap_err();
    assert_eq!(err.to_string(), "no valid contributions to aggregate");
}

#[test]
fn config_validation_names_the_field() {
    let config = AggregatorConfig::default().with_max_update_norm(-1.0);
    assert_eq!(
        config.validate().unwrap_err().to_string(),
        "aggregator setting max_update_norm = -1: must be finite and > 0"
    );
    let parsed: AggregatorConfig =
        serde_json::from_str(r#"{"rule": "trimmed-mean:0.1", "max_update_norm": 5.0}"#).unwrap();
    assert_eq!(parsed.rule.to_string(), "trimmed-mean:0.1");
    let err = serde_json::from_str::<AggregatorConfig>(r#"{"rule": "krum:1", "bogus": 1}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `bogus`"), "{err}");
    let err = serde_json::from_str::<AggregatorConfig>(r#"{"rule": "fedadam:tau=0"}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rule.tau = 0: must be finite and > 0"),
        "{err}"
    );
    // A manifest records the full form, which stays valid if defaults change.
    let json = serde_json::to_string(&AggregatorConfig::new("fedadam".parse().unwrap())).unwrap();
    assert_eq!(
        json,
        r#"{"rule":"fedadam:server_lr=0.01,beta1=0.9,beta2=0.99,tau=0.001","max_update_norm":null}"#
    );
}

#[test]
fn screening_keeps_the_valid_updates_in_aggregation_order() {
    let (global, model, valid, bad) = round();
    let mut all = valid.clone();
    all.extend(bad);
    all.reverse();
    let screened = screen(&global, model, Some(10.0), all);
    let kept: Vec<&str> = screened
        .accepted
        .iter()
        .map(|c| c.sender.as_str())
        .collect();
    assert_eq!(kept, vec!["alice", "bob", "carol"]);
    assert_eq!(screened.rejected.len(), 7);
}
