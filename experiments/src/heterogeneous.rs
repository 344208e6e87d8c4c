//! Experiment 13, heterogeneous labs: 8 nodes, the last 4 at half speed, every node taking
//! the task's local steps (equal load) against each taking steps in proportion to its
//! measured throughput with FedNova's normalisation (capacity load), run in turn on the
//! same data, seed and schedule.
//!
//! The nodes share this machine's cores, so each is paced (`Plan::pace`): a local step takes
//! at least [`PACE`] (twice that on a slow node), the node sleeping out the rest, which makes
//! each node behave as a machine of its own at that speed as long as the cores keep up with
//! the steps' real work.

use std::path::PathBuf;
use std::time::Duration;

use fl_core::records::Load;
use fl_sim::{Checkers, Plan, Slow};

use crate::harness::{Csv, FedRun, federate, field, pct};
use crate::suite::Ctx;

/// The nodes.
const NODES: usize = 8;

/// How many of them run at half speed (the last ones).
const SLOW: Slow = Slow {
    nodes: 4,
    factor: 2.0,
};

/// The least time a local step takes on a full-speed node: above what a step of batch 32
/// costs here with 8 nodes training at once on 2 cores (about 0.4 s), so the pace, not the
/// shared cores, sets each node's speed.
const PACE: Duration = Duration::from_millis(1000);

/// Local steps a round (the task's; capacity load shares out about as many in all): a
/// multiple of 3, so the shares of nodes at 4/3 and 2/3 of the median are whole steps.
const STEPS: u32 = 12;

/// The loads compared, in the order run.
const LOADS: [Load; 2] = [Load::Equal, Load::Capacity];

/// One run's figures.
struct Outcome {
    seed: u64,
    load: Load,
    /// Mean seconds a round, over every round and over rounds 2 on (round 1 has no
    /// throughputs to share by yet, and its time includes joining the task).
    mean: f64,
    mean_after_first: f64,
    accuracy: Option<f64>,
    /// Mean local steps a round of the full-speed and of the slow nodes.
    steps_fast: f64,
    steps_slow: f64,
}

impl Ctx {
    /// Runs experiment 13; returns its title, report text and files.
    pub(crate) fn heterogeneous(&self) -> anyhow::Result<(String, String, Vec<PathBuf>)> {
        let rounds = if self.scale.quick { 5 } else { 20 };
        // The test set is 1,133 images here: one run's accuracy carries a standard error of
        // about 1.5 points, so the full suite runs three seeds.
        let seeds: Vec<u64> = match self.scale.quick {
            true => vec![self.seed],
            false => (0..3).map(|k| self.seed + k).collect(),
        };
        let mut csv = Csv::create(
            &self.out,
            "heterogeneous.csv",
            &[
                "seed", "load", "round", "seconds", "accuracy", "node", "steps",
            ],
        )?;
        let mut outcomes = Vec::new();
        for &seed in &seeds {
            for load in LOADS {
                let mut plan = self.heterogeneous_plan(rounds, load);
                plan.seed = seed;
                let run = federate(&format!("{load} load, seed {seed}"), &plan, &self.data)?;
                for r in &run.report.rounds {
                    for node in 0..NODES {
                        csv.row([
                            seed.to_string(),
                            load.to_string(),
                            r.round.to_string(),
                            format!("{:.3}", r.seconds),
                            field(r.accuracy),
                            node.to_string(),
                            steps_taken(&run, r.round, node).to_string(),
                        ])?;
                    }
                }
                outcomes.push(outcome(seed, load, &run));
            }
        }
        let mut table = String::from(
            "| seed | load | s a round | s a round, rounds 2 on | final accuracy | steps a round, full-speed nodes | steps a round, half-speed nodes |\n| --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for o in &outcomes {
            table.push_str(&format!(
                "| {} | {} | {:.2} | {:.2} | {} | {:.1} | {:.1} |\n",
                o.seed,
                o.load,
                o.mean,
                o.mean_after_first,
                pct(o.accuracy),
                o.steps_fast,
                o.steps_slow
            ));
        }
        let of = |load: Load, figure: fn(&Outcome) -> Option<f64>| {
            let values: Vec<f64> = outcomes
                .iter()
                .filter(|o| o.load == load)
                .filter_map(figure)
                .collect();
            (values.len() == seeds.len()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        };
        let ratio = match (
            of(Load::Equal, |o| Some(o.mean)),
            of(Load::Capacity, |o| Some(o.mean)),
            of(Load::Equal, |o| Some(o.mean_after_first)),
            of(Load::Capacity, |o| Some(o.mean_after_first)),
        ) {
            (Some(e), Some(c), Some(e2), Some(c2)) => format!(
                "Capacity load against equal load, mean over {} seed(s): **{:.2}x** the mean round time ({:.2}x from round 2 on), final accuracy {} points apart ({} against {}).",
                seeds.len(),
                c / e,
                c2 / e2,
                match (
                    of(Load::Capacity, |o| o.accuracy),
                    of(Load::Equal, |o| o.accuracy)
                ) {
                    (Some(c), Some(e)) => format!("{:+.2}", 100.0 * (c - e)),
                    _ => "-".into(),
                },
                pct(of(Load::Capacity, |o| o.accuracy)),
                pct(of(Load::Equal, |o| o.accuracy)),
            ),
            _ => String::new(),
        };
        let body = format!(
            "{NODES} nodes, the last {} at half speed: a local step takes at least {:.1} s on a full-speed node and {:.1} s on a slow one (each node sleeps out the rest of its step, so it acts as a machine of its own on this shared host). {rounds} rounds of {STEPS} local steps of batch {}, one recomputation a round on average, the test set scored every 5 rounds and after the last.\n\n\
             Equal load: every node takes {STEPS} steps, so a round waits for the slow nodes. Capacity load (`--load capacity`): from round 2 on each node takes steps in proportion to the images a second it trained at against the median the others advertised in the round before; in every round a node still training when half the members have announced stops (after a quarter of the steps at least); each scales its update by {STEPS} over the steps it took (FedNova's normalisation, with the task's steps as the effective count), so its weight is unchanged. The ideal with half the nodes at half speed is 2/3 of equal load's time; round 1's time includes the nodes joining the task.\n\n{table}\n{ratio}\n",
            SLOW.nodes,
            PACE.as_secs_f64(),
            PACE.as_secs_f64() * SLOW.factor,
            self.plan(NODES).train.batch_size,
        );
        Ok((
            "Heterogeneous nodes: load in proportion to capacity".into(),
            body,
            vec![csv.finish()?],
        ))
    }

    /// The plan of one run: the suite's plan at [`NODES`] nodes, paced, half of them slow.
    fn heterogeneous_plan(&self, rounds: u32, load: Load) -> Plan {
        let mut plan = self.plan(NODES);
        plan.rounds = rounds;
        plan.train.steps = Some(STEPS);
        plan.train.load = load;
        plan.checkers = Checkers::Rate(1.0);
        plan.evaluate_every = Some(5);
        plan.pace = Some(PACE);
        plan.slow = Some(SLOW);
        plan.trainings_at_once = NODES;
        plan
    }
}

/// The local steps `node` took in `round`: the task's, unless it announced others.
fn steps_taken(run: &FedRun, round: u32, node: usize) -> u32 {
    run.local_steps
        .get(&(round, node))
        .copied()
        .unwrap_or(STEPS)
}

/// The figures of one run.
fn outcome(seed: u64, load: Load, run: &FedRun) -> Outcome {
    let rows = &run.report.rounds;
    let mean = |rows: &[fl_sim::RoundRow]| {
        rows.iter().map(|r| r.seconds).sum::<f64>() / rows.len().max(1) as f64
    };
    let slow_from = NODES - SLOW.nodes;
    let mean_steps = |nodes: std::ops::Range<usize>| {
        let taken: Vec<u32> = rows
            .iter()
            .flat_map(|r| nodes.clone().map(move |n| (r.round, n)))
            .map(|(round, node)| steps_taken(run, round, node))
            .collect();
        f64::from(taken.iter().sum::<u32>()) / taken.len().max(1) as f64
    };
    Outcome {
        seed,
        load,
        mean: mean(rows),
        mean_after_first: mean(rows.get(1..).unwrap_or_default()),
        accuracy: rows.last().and_then(|r| r.accuracy),
        steps_fast: mean_steps(0..slow_from),
        steps_slow: mean_steps(slow_from..NODES),
    }
}
