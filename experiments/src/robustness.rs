//! Experiment 9, robustness: a federation in which up to a third of the members send their
//! update times -10 every round, under FedAvg (none to the most), the coordinate-wise
//! median, the trimmed mean and multi-Krum (none and the most; the quick suite: FedAvg and
//! the median, none and the most); one member of each protocol attack (inflating its sample
//! count, announcing another's update, leaving members out of its manifests) in one run
//! under FedAvg; and one member of each resource attack (a DAG bomb for an update, floods
//! of wants and of manifests, serving at a trickle, which the quick suite leaves out) in
//! another. Final accuracy, round time and peak memory beside the run of the same rule
//! without attackers.

use std::path::PathBuf;

use fl_node::round::attack::{
    Attack, FLOOD_MANIFESTS_PER_ROUND, FLOOD_MESSAGES_PER_PEER, SLOW_SERVE_BYTES_PER_SECOND,
};
use fl_plot::{Series, bar_chart, line_chart};

use crate::harness::{Csv, FedRun, federate, field, pct, points};
use crate::suite::{Ctx, failure};

/// The model-poisoning attack of the experiment: the update times -10.
const POISON: Attack = Attack::Scale(-10.0);
/// Attacks on the protocol: weight, credit and inclusion.
const PROTOCOL: [Attack; 3] = [
    Attack::InflateSamples(1000),
    Attack::CopyUpdate,
    Attack::Censor,
];
/// Attacks on the nodes' memory, work and time.
const RESOURCE: [Attack; 4] = [
    Attack::DagBomb,
    Attack::HaveFlood,
    Attack::SlowServe,
    Attack::ManifestFlood,
];

impl Ctx {
    /// Runs experiment 9; returns its title, report text and files.
    pub(crate) fn robustness(&self) -> anyhow::Result<(String, String, Vec<PathBuf>)> {
        let (nodes, most) = if self.scale.quick { (7, 2) } else { (10, 3) };
        // The quick suite (which must stay within half an hour) keeps FedAvg and the median.
        let mut rules = vec!["fedavg".to_string(), "median".to_string()];
        if !self.scale.quick {
            rules.extend(["trimmed-mean:0.3".to_string(), format!("krum:{most}")]);
        }
        let mut csv = Csv::create(
            &self.out,
            "robustness.csv",
            &[
                "rule",
                "attack",
                "attackers",
                "round",
                "participants",
                "seconds",
                "accuracy",
                "run_peak_memory_bytes",
                "failure",
            ],
        )?;
        let mut table = String::from(
            "| rule | attack | attackers | final accuracy | against no attack | mean round time | peak memory |\n| --- | --- | --- | --- | --- | --- | --- |\n",
        );
        let mut series = Vec::new();
        let mut baselines = Vec::new();
        for rule in &rules {
            let mut points = Vec::new();
            let mut clean = None;
            // Every count under FedAvg in the full suite; otherwise none and the most (the
            // quick suite must stay within half an hour, the full one within hours).
            let counts: Vec<usize> = if self.scale.quick || rule != "fedavg" {
                vec![0, most]
            } else {
                (0..=most).collect()
            };
            for attackers in counts {
                let attacks = (0..attackers).map(|i| (nodes - 1 - i, POISON)).collect();
                let label = format!("{rule}, {attackers} x {POISON}");
                let outcome = self.attacked(&label, nodes, rule, attacks, &mut csv)?;
                if attackers == 0 {
                    clean = outcome.as_ref().ok().and_then(FedRun::final_accuracy);
                }
                table.push_str(&row(rule, &POISON.to_string(), attackers, &outcome, clean));
                let Ok(run) = outcome else { continue };
                let accuracy = run.final_accuracy();
                if attackers == 0 {
                    baselines.push((rule.clone(), run.round_seconds()));
                }
                if let Some(a) = accuracy {
                    points.push((attackers as f64, 100.0 * a));
                }
            }
            series.push(Series {
                label: rule.clone(),
                points,
            });
        }
        // The protocol attacks, then the resource attacks, one attacker of each kind in one
        // run under FedAvg: refused, contested or outlasted by every honest node, so they
        // cost only the wait for updates that never count (and the memory the limits allow).
        let fedavg_clean = series
            .first()
            .and_then(|s| s.points.first())
            .map(|(_, a)| a / 100.0);
        let mut times = baselines.first().cloned().into_iter().collect::<Vec<_>>();
        // The quick suite leaves out the trickle, which makes every round wait out the
        // update fetch's deadline (its tests: `fl/tests/simulate.rs`).
        let resource: Vec<Attack> = RESOURCE
            .into_iter()
            .filter(|a| !(self.scale.quick && *a == Attack::SlowServe))
            .collect();
        for (what, kinds) in [("protocol", &PROTOCOL[..]), ("resource", &resource[..])] {
            let attacks: Vec<(usize, Attack)> = kinds
                .iter()
                .enumerate()
                .map(|(i, a)| (nodes - 1 - i, *a))
                .collect();
            let named = kinds
                .iter()
                .map(Attack::to_string)
                .collect::<Vec<_>>()
                .join(" + ");
            let label = format!("fedavg, {named}");
            let outcome = self.attacked(&label, nodes, "fedavg", attacks, &mut csv)?;
            table.push_str(&row("fedavg", &named, kinds.len(), &outcome, fedavg_clean));
            if let Ok(run) = outcome {
                times.push((format!("{what} attackers"), run.round_seconds()));
            }
        }
        let csv = csv.finish()?;
        let accuracy = self.path("robustness_accuracy.png");
        line_chart(
            &series,
            &format!("Final test accuracy, {nodes} nodes, members sending their update x -10"),
            ("attackers", "test accuracy (%)"),
            &accuracy,
        )?;
        let time = self.path("robustness_round_time.png");
        bar_chart(
            &times,
            "Mean round time under FedAvg: no attack, protocol and resource attackers",
            "seconds",
            &time,
        )?;
        let (trickle, trickle_ends) = if resource.contains(&Attack::SlowServe) {
            (
                format!(
                    "one serves its blocks at {} KiB/s (`slow-serve`) and ",
                    SLOW_SERVE_BYTES_PER_SECOND >> 10
                ),
                "the trickle ends at the update fetch's overall deadline, ",
            )
        } else {
            (String::new(), "")
        };
        let left_out = if self.scale.quick {
            " The quick suite runs FedAvg and the median only, and leaves out `slow-serve` (every round would wait out \
             the update fetch's deadline: `fl/tests/simulate.rs` tests it)."
                .to_string()
        } else {
            format!(" Krum is told the most attackers of the experiment ({most}).")
        };
        let body = format!(
            "{nodes} nodes, {} rounds, minimum {} participants, round deadline {} s. Attackers are the last nodes; a \
             poisoning attacker trains honestly and sends its update times -10 every round (`--attack N:scale:-10`). \
             The median and the trimmed mean first leave out updates farther from the coordinate-wise median than \
             twice the median such distance (their default screen, `aggregator::screen`). \
             In the protocol run one attacker claims 1,000 times its samples (`inflate-samples`), one announces another \
             member's update as its own (`copy-update`) and one closes each round as soon as the minimum is in, without \
             the members ranked ahead of it (`censor`). The honest nodes refuse the first two (the sample bound of the \
             task, one author per update) and contest the third's manifests (fair inclusion), so they cost only the \
             wait for updates that never count. In the resource run one attacker announces a DAG bomb (three blocks \
             naming 256 GB) as its update (`dag-bomb`), one sends every peer {FLOOD_MESSAGES_PER_PEER} messages of \
             1,024 HAVE wants a round (`have-flood`), {trickle}one signs {FLOOD_MANIFESTS_PER_ROUND} near-2 MiB \
             manifests for every round from the current one on (`manifest-flood`): the bomb is refused by the size it \
             declares (larger than the model) before it is read, {trickle_ends}HAVEs are answered from the block index, \
             and each signer's manifests are held up to its share; the flooders' own updates are honest and count. \
             With attackers refused, the protocol and resource runs average other updates than the run without \
             attackers, so their accuracy differs from it by what a different set of members would (a few points on \
             the quick suite's images); that the honest nodes end on the model they reach without the attackers is \
             tested exactly in `fl/tests/simulate.rs`. Peak memory is the whole process's (every node of the run).\
             {left_out}\n\n{table}",
            self.scale.rounds,
            (nodes / 2).max(1),
            self.deadline().as_secs(),
        );
        Ok(("Robustness".into(), body, vec![csv, accuracy, time]))
    }

    /// One federation of `nodes` under `rule` with `attacks`, its rounds written to `csv`;
    /// why it failed (also in the CSV) if it did.
    fn attacked(
        &self,
        label: &str,
        nodes: usize,
        rule: &str,
        attacks: Vec<(usize, Attack)>,
        csv: &mut Csv,
    ) -> anyhow::Result<Result<FedRun, String>> {
        let mut kinds: Vec<String> = attacks.iter().map(|(_, a)| a.to_string()).collect();
        kinds.dedup();
        let attack = if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds.join(" + ")
        };
        let count = attacks.len();
        let mut plan = self.tolerant_plan(nodes);
        plan.rule = rule.to_string();
        plan.attacks = attacks;
        match federate(label, &plan, &self.data) {
            Ok(run) => {
                for r in &run.report.rounds {
                    csv.row([
                        rule.to_string(),
                        attack.clone(),
                        count.to_string(),
                        r.round.to_string(),
                        r.participants.to_string(),
                        format!("{:.3}", r.seconds),
                        field(r.accuracy),
                        run.report.peak_memory.to_string(),
                        String::new(),
                    ])?;
                }
                Ok(Ok(run))
            }
            Err(e) => {
                let why = failure(&e);
                csv.row([
                    rule.to_string(),
                    attack,
                    count.to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    why.clone(),
                ])?;
                Ok(Err(why))
            }
        }
    }
}

/// One line of the report's table: the run's figures, or why it failed.
fn row(
    rule: &str,
    attack: &str,
    attackers: usize,
    outcome: &Result<FedRun, String>,
    clean: Option<f64>,
) -> String {
    let run = match outcome {
        Ok(run) => run,
        Err(why) => {
            return format!("| {rule} | {attack} | {attackers} | failed: {why} | - | - | - |\n");
        }
    };
    let accuracy = run.final_accuracy();
    let delta = match (accuracy, clean) {
        (Some(a), Some(c)) => points(a, c),
        _ => "-".into(),
    };
    format!(
        "| {rule} | {attack} | {attackers} | {} | {delta} | {:.1} s | {:.0} MiB |\n",
        pct(accuracy),
        run.round_seconds(),
        run.report.peak_memory as f64 / 1048576.0
    )
}
