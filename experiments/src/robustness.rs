//! Experiment 9, robustness: a federation in which up to a third of the members send their
//! update times -10 every round, under FedAvg, the coordinate-wise median, the trimmed mean
//! and multi-Krum (the quick suite: none and the most only); and one member of each
//! protocol attack (inflating its sample count, announcing another's update, leaving
//! members out of its manifests) in one run under FedAvg. Final accuracy and round time
//! beside the run of the same rule without attackers.

use std::path::PathBuf;

use fl_node::round::attack::Attack;
use fl_plot::{Series, bar_chart, line_chart};

use crate::harness::{Csv, FedRun, federate, field, pct};
use crate::suite::{Ctx, failure};

/// The model-poisoning attack of the experiment: the update times -10.
const POISON: Attack = Attack::Scale(-10.0);

impl Ctx {
    /// Runs experiment 9; returns its title, report text and files.
    pub(crate) fn robustness(&self) -> anyhow::Result<(String, String, Vec<PathBuf>)> {
        let (nodes, most) = if self.scale.quick { (7, 2) } else { (10, 3) };
        let rules = [
            "fedavg".to_string(),
            "median".to_string(),
            "trimmed-mean:0.3".to_string(),
            format!("krum:{most}"),
        ];
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
                "failure",
            ],
        )?;
        let mut table = String::from(
            "| rule | attack | attackers | final accuracy | against no attack | mean round time |\n| --- | --- | --- | --- | --- | --- |\n",
        );
        let mut series = Vec::new();
        let mut baselines = Vec::new();
        for rule in &rules {
            let mut points = Vec::new();
            let mut clean = None;
            // The quick suite: none and the most only (it must stay within half an hour).
            let counts: Vec<usize> = if self.scale.quick {
                vec![0, most]
            } else {
                (0..=most).collect()
            };
            for attackers in counts {
                let attacks = (0..attackers).map(|i| (nodes - 1 - i, POISON)).collect();
                let label = format!("{rule}, {attackers} x {POISON}");
                let Some(run) = self.attacked(&label, nodes, rule, attacks, &mut csv)? else {
                    table.push_str(&format!(
                        "| {rule} | {POISON} | {attackers} | failed | - | - |\n"
                    ));
                    continue;
                };
                let accuracy = run.final_accuracy();
                if attackers == 0 {
                    clean = accuracy;
                    baselines.push((rule.clone(), run.round_seconds()));
                }
                table.push_str(&row(rule, &POISON.to_string(), attackers, &run, clean));
                if let Some(a) = accuracy {
                    points.push((attackers as f64, 100.0 * a));
                }
            }
            series.push(Series {
                label: rule.clone(),
                points,
            });
        }
        // The protocol attacks, one attacker of each in one run, under FedAvg: refused or
        // contested by every node, so they cost only the wait for updates that never count.
        let fedavg_clean = series
            .first()
            .and_then(|s| s.points.first())
            .map(|(_, a)| a / 100.0);
        let mut times = baselines.first().cloned().into_iter().collect::<Vec<_>>();
        let protocol = [
            Attack::InflateSamples(1000),
            Attack::CopyUpdate,
            Attack::Censor,
        ];
        let attacks: Vec<(usize, Attack)> = protocol
            .iter()
            .enumerate()
            .map(|(i, a)| (nodes - 1 - i, *a))
            .collect();
        let kinds = protocol.map(|a| a.to_string()).join(" + ");
        let label = format!("fedavg, {kinds}");
        match self.attacked(&label, nodes, "fedavg", attacks, &mut csv)? {
            Some(run) => {
                table.push_str(&row("fedavg", &kinds, protocol.len(), &run, fedavg_clean));
                times.push((kinds, run.round_seconds()));
            }
            None => table.push_str(&format!(
                "| fedavg | {kinds} | {} | failed | - | - |\n",
                protocol.len()
            )),
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
            "Mean round time under FedAvg: no attack, and protocol attackers",
            "seconds",
            &time,
        )?;
        let body = format!(
            "{nodes} nodes, {} rounds, minimum {} participants, round deadline {} s. Attackers are the last nodes; a \
             poisoning attacker trains honestly and sends its update times -10 every round (`--attack N:scale:-10`), \
             in the last run one attacker claims 1,000 times its samples (`inflate-samples`), one announces another \
             member's update as its own (`copy-update`) and one closes each round as soon as the minimum is in, without \
             the members ranked ahead of it (`censor`). The honest nodes refuse the first two (the sample bound of the \
             task, one author per update) and contest the third's manifests (fair inclusion), so they cost only the \
             wait for updates that never count. Krum is told the most attackers of the experiment ({most}).\n\n{table}",
            self.scale.rounds,
            (nodes / 2).max(1),
            self.deadline().as_secs(),
        );
        Ok(("Robustness".into(), body, vec![csv, accuracy, time]))
    }

    /// One federation of `nodes` under `rule` with `attacks`, its rounds written to `csv`;
    /// `None` if it failed (said in the CSV).
    fn attacked(
        &self,
        label: &str,
        nodes: usize,
        rule: &str,
        attacks: Vec<(usize, Attack)>,
        csv: &mut Csv,
    ) -> anyhow::Result<Option<FedRun>> {
        let attack = attacks
            .first()
            .map_or("none".into(), |(_, a)| a.to_string());
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
                        String::new(),
                    ])?;
                }
                Ok(Some(run))
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
                    why,
                ])?;
                Ok(None)
            }
        }
    }
}

/// One line of the report's table.
fn row(rule: &str, attack: &str, attackers: usize, run: &FedRun, clean: Option<f64>) -> String {
    let accuracy = run.final_accuracy();
    let delta = match (accuracy, clean) {
        (Some(a), Some(c)) => format!("{:+.2} points", 100.0 * (a - c)),
        _ => "-".into(),
    };
    format!(
        "| {rule} | {attack} | {attackers} | {} | {delta} | {:.1} s |\n",
        pct(accuracy),
        run.round_seconds()
    )
}
