//! The privacy experiment: DP-SGD at each target epsilon, centralized and on every node of a
//! federation, with Opacus beside it. Its table and plot are made from `privacy.csv`, so
//! points measured by an earlier run with the same seed can be kept (`--merge`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use fl_core::records::{DpLevel, RoundSchedule, TrainParams};
use fl_core::tensors::Bundle;
use fl_plot::{Series, line_chart};
use fl_sim::PrivacyTarget;

use crate::harness::{Anchor, Csv, centralize, federate, field, pct, run_anchor};
use crate::suite::{Ctx, failure};

/// The DP-SGD recipe, shared with the Opacus runs: expected batch of the centralized runs and
/// of each node, learning rate, momentum, clip norm and delta.
const DP_BATCH: u32 = 256;
const FED_DP_BATCH: u32 = 128;
const DP_LR: f64 = 0.1;
const DP_MOMENTUM: f64 = 0.9;
const DP_CLIP: f64 = 1.0;
const DP_DELTA: f64 = 1e-5;

/// The file the experiment writes and, with `--merge`, reads back.
const CSV_NAME: &str = "privacy.csv";

/// The columns of [`CSV_NAME`].
const HEADER: [&str; 8] = [
    "setup",
    "epsilon_target",
    "noise_multiplier",
    "epsilon_spent",
    "accuracy",
    "images_per_sec",
    "failure",
    "seed",
];

/// The local training of every run: `batch`, [`DP_LR`], [`DP_MOMENTUM`], no weight decay,
/// one local epoch a round, a constant rate.
fn dp_recipe(batch: u32) -> TrainParams {
    TrainParams {
        epochs: 1,
        batch_size: batch,
        learning_rate: DP_LR,
        momentum: DP_MOMENTUM,
        weight_decay: 0.0,
        proximal_mu: 0.0,
        schedule: RoundSchedule::Constant,
        steps: None,
        load: fl_core::records::Load::Equal,
    }
}

/// One point of the privacy experiment: a target epsilon, or training without DP (`none`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrivacyPoint(pub Option<f64>);

impl PrivacyPoint {
    /// The privacy experiment's points unless told otherwise: epsilon 1, 3, 8 and no DP.
    pub const DEFAULT: [PrivacyPoint; 4] = [
        PrivacyPoint(Some(1.0)),
        PrivacyPoint(Some(3.0)),
        PrivacyPoint(Some(8.0)),
        PrivacyPoint(None),
    ];
    /// The quick suite's points: epsilon 1, 8 and no DP (it must stay within half an hour).
    pub const QUICK: [PrivacyPoint; 3] = [
        PrivacyPoint(Some(1.0)),
        PrivacyPoint(Some(8.0)),
        PrivacyPoint(None),
    ];

    /// Report order: epsilons ascending, no DP last.
    fn order(&self) -> f64 {
        self.0.unwrap_or(f64::INFINITY)
    }
}

impl std::str::FromStr for PrivacyPoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "none" {
            return Ok(Self(None));
        }
        match s.parse::<f64>() {
            Ok(e) if e.is_finite() && e > 0.0 => Ok(Self(Some(e))),
            _ => Err(format!("{s:?} is neither a positive epsilon nor `none`")),
        }
    }
}

impl std::fmt::Display for PrivacyPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(e) => write!(f, "{e}"),
            None => f.write_str("none"),
        }
    }
}

/// How one centralized run (ours or Opacus's) ended.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    noise_multiplier: Option<f64>,
    epsilon: Option<f64>,
    accuracy: Option<f64>,
    images_per_sec: f64,
}

/// One round of the federation: the largest epsilon any node states, and test accuracy.
#[derive(Debug, Clone, PartialEq)]
struct FedRound {
    round: u32,
    epsilon: Option<f64>,
    accuracy: Option<f64>,
}

/// What one point measured: its rows of [`CSV_NAME`].
#[derive(Debug, Clone, PartialEq)]
struct Measured {
    point: PrivacyPoint,
    seed: u64,
    central: Outcome,
    opacus: Option<Outcome>,
    fed_noise: Option<f64>,
    /// The federation's rounds, or why it failed.
    fed: Result<Vec<FedRound>, String>,
}

impl Measured {
    fn final_fed_accuracy(&self) -> Option<f64> {
        self.fed.as_ref().ok()?.last()?.accuracy
    }

    /// Its rows, in [`HEADER`]'s columns.
    fn rows(&self) -> Vec<[String; 8]> {
        let target = self.point.to_string();
        let seed = self.seed.to_string();
        let run = |setup: &str, o: &Outcome| {
            [
                setup.to_string(),
                target.clone(),
                field(o.noise_multiplier),
                field(o.epsilon),
                field(o.accuracy),
                format!("{:.2}", o.images_per_sec),
                String::new(),
                seed.clone(),
            ]
        };
        let mut rows = vec![run("centralized", &self.central)];
        rows.extend(self.opacus.iter().map(|o| run("opacus", o)));
        match &self.fed {
            Ok(rounds) => rows.extend(rounds.iter().map(|r| {
                [
                    format!("federated round {}", r.round),
                    target.clone(),
                    field(self.fed_noise),
                    field(r.epsilon),
                    field(r.accuracy),
                    String::new(),
                    String::new(),
                    seed.clone(),
                ]
            })),
            Err(why) => rows.push([
                "federated".into(),
                target.clone(),
                field(self.fed_noise),
                String::new(),
                String::new(),
                String::new(),
                why.clone(),
                seed.clone(),
            ]),
        }
        rows
    }
}

/// Reads the points of a [`CSV_NAME`] written by [`write`], in file order.
fn parse(text: &str) -> anyhow::Result<Vec<Measured>> {
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = lines
        .next()
        .map(|(_, h)| h.split(',').collect())
        .unwrap_or_default();
    anyhow::ensure!(
        header == HEADER,
        "its columns are {header:?}, not {HEADER:?} (made by another version of this experiment)"
    );
    let num = |s: &str, line: usize| -> anyhow::Result<Option<f64>> {
        if s.is_empty() {
            return Ok(None);
        }
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Some(v)),
            _ => anyhow::bail!("line {line}: {s:?} is not a number"),
        }
    };
    let mut points: Vec<Measured> = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        let f: Vec<&str> = line.split(',').collect();
        let [setup, target, noise, epsilon, accuracy, speed, why, seed] = f[..] else {
            anyhow::bail!("line {n} has {} fields, not {}", f.len(), HEADER.len());
        };
        let point: PrivacyPoint = target
            .parse()
            .map_err(|e| anyhow::anyhow!("line {n}: {e}"))?;
        let seed: u64 = seed
            .parse()
            .with_context(|| format!("line {n}: seed {seed:?}"))?;
        let outcome = || -> anyhow::Result<Outcome> {
            Ok(Outcome {
                noise_multiplier: num(noise, n)?,
                epsilon: num(epsilon, n)?,
                accuracy: num(accuracy, n)?,
                images_per_sec: num(speed, n)?.unwrap_or(f64::NAN),
            })
        };
        if setup == "centralized" {
            anyhow::ensure!(
                !points.iter().any(|p| p.point == point),
                "line {n}: a second centralized run for epsilon {point}"
            );
            points.push(Measured {
                point,
                seed,
                central: outcome()?,
                opacus: None,
                fed_noise: None,
                fed: Ok(Vec::new()),
            });
            continue;
        }
        let Some(m) = points.iter_mut().find(|p| p.point == point) else {
            anyhow::bail!("line {n}: {setup:?} for epsilon {point} before its centralized run");
        };
        anyhow::ensure!(
            m.seed == seed,
            "line {n}: seed {seed} in the rows of epsilon {point}, which has {}",
            m.seed
        );
        if setup == "opacus" {
            m.opacus = Some(outcome()?);
        } else if setup == "federated" {
            m.fed_noise = num(noise, n)?;
            m.fed = Err(why.to_string());
        } else if let Some(round) = setup.strip_prefix("federated round ") {
            let round = round
                .parse()
                .with_context(|| format!("line {n}: round {round:?}"))?;
            m.fed_noise = num(noise, n)?;
            if let Ok(rounds) = &mut m.fed {
                rounds.push(FedRound {
                    round,
                    epsilon: num(epsilon, n)?,
                    accuracy: num(accuracy, n)?,
                });
            }
        } else {
            anyhow::bail!("line {n}: unknown setup {setup:?}");
        }
    }
    Ok(points)
}

/// Writes `points` as `dir/`[`CSV_NAME`]; returns its path.
fn write(dir: &Path, points: &[Measured]) -> anyhow::Result<PathBuf> {
    let mut csv = Csv::create(dir, CSV_NAME, &HEADER)?;
    for row in points.iter().flat_map(Measured::rows) {
        csv.row(row)?;
    }
    csv.finish()
}

/// The points of `earlier` that this run does not redo, refusing any made with another seed.
fn kept(earlier: Vec<Measured>, redo: &[PrivacyPoint], seed: u64) -> anyhow::Result<Vec<Measured>> {
    let kept: Vec<Measured> = earlier
        .into_iter()
        .filter(|m| !redo.contains(&m.point))
        .collect();
    if let Some(m) = kept.iter().find(|m| m.seed != seed) {
        anyhow::bail!(
            "epsilon {} was run with seed {}, this run uses seed {seed}: give --seed {} or redo it",
            m.point,
            m.seed,
            m.seed
        );
    }
    Ok(kept)
}

/// The markdown table of `points`.
fn table(points: &[Measured], nodes: usize) -> String {
    let mut table = format!(
        "| epsilon (delta {DP_DELTA:e}) | centralized DP-SGD | noise z | Opacus, same z | {nodes} nodes, DP-SGD on each | noise z |\n| --- | --- | --- | --- | --- | --- |\n"
    );
    let spent = |e: Option<f64>| e.map_or(String::new(), |e| format!(" (epsilon {e:.2})"));
    let z = |z: Option<f64>| z.map_or("-".into(), |z| format!("{z:.3}"));
    for m in points {
        let fed = match &m.fed {
            Ok(rounds) => format!(
                "{}{}",
                pct(m.final_fed_accuracy()),
                spent(rounds.last().and_then(|r| r.epsilon))
            ),
            Err(why) => format!("failed: {why}"),
        };
        table.push_str(&format!(
            "| {} | {}{} | {} | {} | {} | {} |\n",
            m.point,
            pct(m.central.accuracy),
            spent(m.central.epsilon),
            z(m.central.noise_multiplier),
            m.opacus.as_ref().map_or("-".into(), |o| format!(
                "{}{}",
                pct(o.accuracy),
                spent(o.epsilon)
            )),
            fed,
            z(m.fed_noise),
        ));
    }
    table
}

/// The plot's lines: accuracy against epsilon for each setup, flat lines for no DP.
fn series(points: &[Measured], nodes: usize) -> Vec<Series> {
    let line = |label: String, acc: &dyn Fn(&Measured) -> Option<f64>| Series {
        label,
        points: points
            .iter()
            .filter_map(|m| Some((m.point.0?, 100.0 * acc(m)?)))
            .collect(),
    };
    let mut series = vec![
        line("centralized DP-SGD (fl)".into(), &|m| m.central.accuracy),
        line(
            format!("{nodes} nodes, DP-SGD on each (fl)"),
            &Measured::final_fed_accuracy,
        ),
        line("centralized DP-SGD (Opacus, same noise)".into(), &|m| {
            m.opacus.as_ref()?.accuracy
        }),
    ];
    series.retain(|s| !s.points.is_empty());
    for m in points.iter().filter(|m| m.point.0.is_none()) {
        let flat = |label: String, acc: Option<f64>| {
            acc.map(|a| Series {
                label,
                points: vec![(1.0, 100.0 * a), (8.0, 100.0 * a)],
            })
        };
        series.extend(flat("centralized, no DP".into(), m.central.accuracy));
        series.extend(flat(
            format!("{nodes} nodes, no DP"),
            m.final_fed_accuracy(),
        ));
    }
    series
}

/// What an Opacus run printed.
struct AnchorRun {
    accuracy: f64,
    epsilon: f64,
    images_per_sec: f64,
}

impl Ctx {
    /// Experiment 5: accuracy against epsilon, centralized, federated and Opacus.
    pub(crate) fn privacy(&self) -> anyhow::Result<(String, String, Vec<PathBuf>)> {
        let epochs = self.scale.rounds as usize;
        let nodes = self.scale.nodes;
        let shard = self.data.train.len() / nodes;
        let csv_path = self.path(CSV_NAME);
        // Read what is kept before anything runs: a bad file fails in seconds, not hours.
        let mut points = if self.merge_privacy {
            let text = std::fs::read_to_string(&csv_path)
                .with_context(|| format!("--merge: reading {}", csv_path.display()))?;
            let earlier =
                parse(&text).with_context(|| format!("--merge: reading {}", csv_path.display()))?;
            kept(earlier, &self.privacy_points, self.seed)
                .with_context(|| format!("--merge: {}", csv_path.display()))?
        } else {
            Vec::new()
        };
        let kept_points: Vec<String> = points.iter().map(|m| m.point.to_string()).collect();
        let mut opacus_note = None;
        for &point in &self.privacy_points {
            let privacy = point.0.map(|epsilon| PrivacyTarget {
                level: DpLevel::Sample,
                epsilon,
                delta: DP_DELTA,
                clip_norm: DP_CLIP,
            });
            // Centralized: the whole training set, expected batch DP_BATCH.
            let mut central_plan = self.plan(1);
            central_plan.train = dp_recipe(DP_BATCH);
            central_plan.privacy = privacy;
            let central = centralize(&central_plan, &self.data, epochs)?;
            // Opacus with the same initial model, data, recipe and noise.
            let opacus = match central.noise_multiplier {
                Some(z) => match self.opacus(&central.initial, z, epochs) {
                    Ok(run) => Some(Outcome {
                        noise_multiplier: Some(z),
                        epsilon: Some(run.epsilon),
                        accuracy: Some(run.accuracy),
                        images_per_sec: run.images_per_sec,
                    }),
                    Err(e) => {
                        opacus_note.get_or_insert(format!("{e:#}"));
                        None
                    }
                },
                None => None,
            };
            // Federated: every node runs DP-SGD on its own shard, one local epoch a round.
            let mut fed_plan = self.plan(nodes);
            fed_plan.train = dp_recipe(FED_DP_BATCH);
            fed_plan.privacy = privacy;
            let label = format!("{nodes} nodes, epsilon {point}");
            let fed = federate(&label, &fed_plan, &self.data)
                .map(|run| {
                    run.report
                        .rounds
                        .iter()
                        .map(|r| FedRound {
                            round: r.round,
                            epsilon: r.epsilon,
                            accuracy: r.accuracy,
                        })
                        .collect()
                })
                .map_err(|e| failure(&e));
            points.push(Measured {
                point,
                seed: self.seed,
                central: Outcome {
                    noise_multiplier: central.noise_multiplier,
                    epsilon: central.epsilon,
                    accuracy: central.final_accuracy(),
                    images_per_sec: central.images_per_sec,
                },
                opacus,
                fed_noise: fed_plan.noise_multiplier(shard as u64).ok().flatten(),
                fed,
            });
        }
        points.sort_by(|a, b| a.point.order().total_cmp(&b.point.order()));
        let csv = write(&self.out, &points)?;
        // The report shows what the file says, kept points and new alike.
        let text =
            std::fs::read_to_string(&csv).with_context(|| format!("reading {}", csv.display()))?;
        let points = parse(&text).with_context(|| format!("reading back {}", csv.display()))?;
        let png = self.path("privacy.png");
        line_chart(
            &series(&points, nodes),
            "Test accuracy against epsilon (delta 1e-5), DP-SGD with per-example clipping",
            ("epsilon", "test accuracy (%)"),
            &png,
        )?;
        let opacus_line = match opacus_note {
            Some(why) => format!("Opacus points are missing: {why}.\n"),
            None => String::new(),
        };
        let kept_line = if kept_points.is_empty() {
            String::new()
        } else {
            format!(
                "The rows for epsilon {} are kept from an earlier run with the same seed and recipe (`--merge`); \
                 this run made the others.\n\n",
                kept_points.join(", ")
            )
        };
        let body = format!(
            "Sample-level DP: DP-SGD (Poisson batches, every example's gradient clipped to L2 norm {DP_CLIP}, Gaussian noise \
             z x {DP_CLIP} on their sum at every step, the Rényi-DP accountant over every step, delta {DP_DELTA:e}), SGD with \
             learning rate {DP_LR}, momentum {DP_MOMENTUM}, no weight decay, no augmentation, {epochs} epochs. z is the smallest \
             noise multiplier whose accounting reaches the target epsilon after the last step. Centralized: all {} training \
             images, expected batch {DP_BATCH}. Opacus 1.6 (`experiments/pytorch/dp_sgd.py`): the same initial model, data, \
             recipe and z, its own RDP accountant's epsilon. Federated: {nodes} nodes with {shard} images each (IID), one local \
             epoch a round for {epochs} rounds, expected batch {FED_DP_BATCH}, each node running DP-SGD on its own images and \
             stating its own epsilon (the table gives the largest); z is set by the smallest shard. Without DP the same recipe \
             runs plain SGD (shuffled batches, no clipping, no noise): a rate and momentum chosen for clipped gradients, which \
             plain SGD on unclipped ones can overshoot in its first epochs (the non-private reference of the project's own \
             recipe is the federated-vs-centralized section).\n\n{}\n{kept_line}{opacus_line}\
             Client-level DP (each node clipping and noising its whole update, `--dp client`) is not in this table: with \
             {nodes} clients its signal-to-noise ratio is about sqrt(N) / (z sqrt(d)) = 0.001 and every run diverged; it needs \
             populations of many clients sampled each round.\n",
            self.data.train.len(),
            table(&points, nodes),
        );
        Ok(("Privacy".into(), body, vec![csv, png]))
    }

    /// Opacus on the same initial model and data with the privacy experiment's recipe and
    /// noise multiplier `z`, run by `experiments/pytorch/dp_sgd.py` in `$FL_TORCH_PYTHON`.
    fn opacus(&self, initial: &Bundle, z: f64, epochs: usize) -> anyhow::Result<AnchorRun> {
        let dir = tempfile::tempdir().context("making a scratch directory")?;
        let init = dir.path().join("init.safetensors");
        std::fs::write(&init, initial.to_safetensors()?)
            .context("writing the initial model for Opacus")?;
        let flags = [
            ("--mode", "opacus".to_string()),
            ("--images", self.data.train.len().to_string()),
            ("--epochs", epochs.to_string()),
            ("--batch", DP_BATCH.to_string()),
            ("--lr", DP_LR.to_string()),
            ("--momentum", DP_MOMENTUM.to_string()),
            ("--weight-decay", "0".to_string()),
            ("--clip", DP_CLIP.to_string()),
            ("--delta", DP_DELTA.to_string()),
            ("--noise-multiplier", z.to_string()),
            ("--seed", self.seed.to_string()),
        ];
        let lines = run_anchor(
            Anchor::Torch,
            "dp_sgd.py",
            &[
                (init.as_os_str(), "init.safetensors"),
                (self.data_dir.as_os_str(), "DATA"),
            ],
            &flags,
        )?;
        let done = lines
            .iter()
            .find(|l| l["event"] == "done")
            .context("Opacus printed no result")?;
        let epochs_run: Vec<&serde_json::Value> =
            lines.iter().filter(|l| l["event"] == "epoch").collect();
        let speed = epochs_run
            .iter()
            .filter_map(|l| l["images_per_sec"].as_f64())
            .sum::<f64>()
            / epochs_run.len().max(1) as f64;
        eprintln!(
            "  Opacus: accuracy {:.2}%, epsilon {:.3}, {speed:.1} images/s",
            100.0 * done["test_accuracy"].as_f64().unwrap_or(f64::NAN),
            done["epsilon"].as_f64().unwrap_or(f64::NAN)
        );
        Ok(AnchorRun {
            accuracy: done["test_accuracy"].as_f64().context("no test accuracy")?,
            epsilon: done["epsilon"].as_f64().context("no epsilon")?,
            images_per_sec: speed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privacy_points_parse_and_print_back() {
        assert_eq!("none".parse(), Ok(PrivacyPoint(None)));
        assert_eq!("3".parse(), Ok(PrivacyPoint(Some(3.0))));
        assert_eq!("0.5".parse(), Ok(PrivacyPoint(Some(0.5))));
        for bad in ["0", "-1", "inf", "NaN", "eight", ""] {
            assert!(bad.parse::<PrivacyPoint>().is_err(), "{bad:?}");
        }
        for p in PrivacyPoint::DEFAULT {
            assert_eq!(p.to_string().parse(), Ok(p));
        }
    }

    fn measured(point: Option<f64>, seed: u64, fed: Result<Vec<FedRound>, String>) -> Measured {
        Measured {
            point: PrivacyPoint(point),
            seed,
            central: Outcome {
                noise_multiplier: point.map(|_| 0.697005),
                epsilon: point,
                accuracy: Some(0.465137),
                images_per_sec: 197.8,
            },
            opacus: point.map(|e| Outcome {
                noise_multiplier: Some(0.697005),
                epsilon: Some(e),
                accuracy: Some(0.49338),
                images_per_sec: 123.4,
            }),
            fed_noise: point.map(|_| 0.945285),
            fed,
        }
    }

    fn rounds() -> Vec<FedRound> {
        (1..=3)
            .map(|round| FedRound {
                round,
                epsilon: Some([2.5, 5.0, 7.5][round as usize - 1]),
                accuracy: Some([0.1, 0.2, 0.3][round as usize - 1]),
            })
            .collect()
    }

    #[test]
    fn points_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let points = vec![
            measured(Some(3.0), 2, Ok(rounds())),
            measured(Some(8.0), 2, Err("training diverged; round 2".into())),
            measured(
                None,
                2,
                Ok(rounds()
                    .into_iter()
                    .map(|r| FedRound { epsilon: None, ..r })
                    .collect()),
            ),
        ];
        let path = write(dir.path(), &points).unwrap();
        let back = parse(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(back, points);
        let table = table(&back, 8);
        assert!(table.contains("| 3 | 46.51% (epsilon 3.00) | 0.697 | 49.34% (epsilon 3.00) | 30.00% (epsilon 7.50) | 0.945 |"), "{table}");
        assert!(table.contains("| 8 | 46.51% (epsilon 8.00) | 0.697 | 49.34% (epsilon 8.00) | failed: training diverged; round 2 | 0.945 |"), "{table}");
        assert!(
            table.contains("| none | 46.51% | - | - | 30.00% | - |"),
            "{table}"
        );
        let lines: Vec<String> = series(&back, 8).iter().map(|s| s.label.clone()).collect();
        assert_eq!(
            lines,
            [
                "centralized DP-SGD (fl)",
                "8 nodes, DP-SGD on each (fl)",
                "centralized DP-SGD (Opacus, same noise)",
                "centralized, no DP",
                "8 nodes, no DP",
            ]
        );
    }

    #[test]
    fn merging_keeps_points_not_redone_and_refuses_another_seed() {
        let earlier = vec![
            measured(Some(1.0), 2, Ok(rounds())),
            measured(Some(8.0), 2, Ok(rounds())),
            measured(None, 2, Ok(rounds())),
        ];
        let redo = [PrivacyPoint(Some(1.0)), PrivacyPoint(Some(3.0))];
        let kept_points: Vec<PrivacyPoint> = kept(earlier.clone(), &redo, 2)
            .unwrap()
            .iter()
            .map(|m| m.point)
            .collect();
        assert_eq!(kept_points, [PrivacyPoint(Some(8.0)), PrivacyPoint(None)]);
        let err = kept(earlier, &redo, 0).unwrap_err().to_string();
        assert!(err.contains("seed 2") && err.contains("--seed 2"), "{err}");
    }

    #[test]
    fn files_this_experiment_did_not_write_are_refused_with_the_line() {
        let header = HEADER.join(",");
        let central = "centralized,8,0.697005,7.999994,0.465137,119.56,,2";
        for (text, says) in [
            (
                "setup,epsilon_target,noise_multiplier,epsilon_spent,accuracy,images_per_sec,failure\n".to_string(),
                "columns",
            ),
            (format!("{header}\nopacus,8,0.697,8,0.49,54.18,,2"), "line 2"),
            (format!("{header}\n{central}\n{central}"), "second centralized"),
            (format!("{header}\n{central}\nopacus,8,0.697,8,0.49,54.18,,3"), "seed 3"),
            (format!("{header}\ncentralized,8,0.697,eight,0.46,119,,2"), "\"eight\" is not a number"),
            (format!("{header}\ncentralized,8,0.697,8,0.46,119,,2,extra"), "9 fields"),
            (format!("{header}\ncentralized,0,0.697,8,0.46,119,,2"), "line 2"),
            (format!("{header}\n{central}\nfederated round x,8,,,,,,2"), "round \"x\""),
            (format!("{header}\n{central}\ncentral,8,,,,,,2"), "unknown setup"),
        ] {
            let err = format!("{:#}", parse(&text).unwrap_err());
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }
}
