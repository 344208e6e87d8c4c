//! A whole federation on one machine: N real nodes (each with its own key, repo, round
//! database and libp2p swarm on loopback) in this process, following one task on CIFAR-10
//! shards round by round, exactly as `fl node run --task` processes would. `fl simulate`
//! and the experiments run it; progress comes out as events, a row per round.

mod faults;
mod launch;
mod plan;
mod progress;
mod scratch;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use cid::Cid;
use datasets::cifar10::Cifar10;
use fl_node::round::Event;
use libp2p::PeerId;

use crate::faults::Faults;
use crate::progress::Book;

pub use plan::{Checkers, Failure, Plan, PrivacyTarget, Slow, Victim};
pub use progress::{Progress, Report, RoundRow, peak_memory};
pub use scratch::scratch_dir;

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    /// The plan cannot work (names the setting).
    #[error("{0}")]
    Plan(String),
    /// A directory for the nodes' repos could not be made.
    #[error("cannot make {path}")]
    Dir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data could not be split.
    #[error("splitting the data")]
    Partition(#[from] datasets::partition::PartitionError),
    /// The shards could not be published.
    #[error("publishing the shards")]
    Shards(#[from] datasets::shard::ShardError),
    /// A repo failed.
    #[error(transparent)]
    Repo(#[from] fl_core::content::RepoError),
    /// A node's key could not be made.
    #[error(transparent)]
    Key(#[from] fl_node::net::keys::KeyError),
    /// A node could not start.
    #[error(transparent)]
    Node(#[from] fl_node::net::NodeError),
    /// The round database could not be opened.
    #[error(transparent)]
    Rounds(#[from] fl_node::round::RoundStoreError),
    /// The initial model could not be made or stored.
    #[error("making the initial model")]
    Model(#[from] fl_core::model::ModelError),
    /// The initial model could not be encoded.
    #[error("encoding the initial model")]
    Encoding(#[from] fl_core::tensors::TensorError),
    /// The initial model could not be stored.
    #[error("storing the initial model")]
    Stored(#[from] fl_core::tensors::StoredError),
    /// The task record is not valid.
    #[error("making the task")]
    Task(#[from] fl_core::records::task::TaskError),
    /// No node finished the task.
    #[error("no node finished the task; the first error: {0}")]
    NoneFinished(String),
    /// So many nodes gave up or were stopped that no round could close any more: the run
    /// was ended rather than left waiting for ever.
    #[error(
        "{left} nodes were left, fewer than the {needed} participants a round needs, so the run was ended; \
         the first error: {first}"
    )]
    TooFewLeft {
        /// Nodes neither failed nor stopped.
        left: usize,
        /// The task's minimum participants.
        needed: usize,
        /// The first node's error.
        first: String,
    },
    /// No honest node adopted a round for longer than the plan allows: the run was ended
    /// rather than left waiting for ever.
    #[error(
        "no honest node adopted a round for {seconds} s (round {round} open), so the run was ended"
    )]
    Stalled {
        /// The round open then.
        round: u32,
        /// Seconds since the last adoption.
        seconds: u64,
    },
}

/// How a node told to stop ended.
const STOPPED: &str = "stopped";

/// Runs `plan` on `data` with every node's repo under `root` (made if missing); returns when
/// every node has finished, failed or given up.
pub async fn run(
    plan: &Plan,
    data: &Cifar10,
    root: &Path,
    mut emit: impl FnMut(&Progress),
) -> Result<Report, SimulationError> {
    plan.check(data.train.len())?;
    let setup = launch::publish(plan, data, root)?;
    emit(&setup.started);
    let members = launch::start_nodes(plan, &setup).await?;
    let by_peer: HashMap<PeerId, usize> = members
        .iter()
        .map(|m| (m.node.peer_id(), m.index))
        .collect();
    // Counters only: a node whose participant stops closes its swarm.
    let counters: Vec<_> = members.iter().map(|m| m.node.bitswap().clone()).collect();
    let sent = || counters.iter().map(|b| b.stats().bytes_sent).sum::<u64>();
    let mut running = launch::spawn(plan, setup.task, members);

    let clock = Instant::now();
    let mut book = Book::new(plan, by_peer);
    let mut faults = Faults::new(plan, running.stop.clone());
    let mut outcomes: BTreeMap<usize, Result<Cid, String>> = BTreeMap::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    let note =
        |node, event: &_, book: &mut Book, faults: &mut Faults, emit: &mut dyn FnMut(&Progress)| {
            emit(&Progress::Node {
                node,
                at: clock.elapsed().as_secs_f64(),
                event: Clone::clone(event),
            });
            faults.note(node, event, book.open_round(), emit);
            // The rounds as the honest nodes see them: an attacker may adopt what no one else
            // can check (its own manifest, counting its own update that it never serves).
            if plan.attack_of(node).is_some() {
                return;
            }
            for row in book.note(event, clock.elapsed().as_secs_f64(), sent()) {
                emit(&Progress::Round(row));
            }
        };
    // Once every honest node is done, the attackers are stopped: one stuck on a chain of its
    // own would otherwise keep the run going.
    let attackers: Vec<usize> = (0..plan.nodes)
        .filter(|&n| plan.attack_of(n).is_some())
        .collect();
    let mut told_to_stop: Vec<usize> = Vec::new();
    let mut too_few = None;
    let mut adopted_at = Instant::now();
    let mut stalled = None;
    loop {
        tokio::select! {
            Some((node, event)) = running.events.recv() => {
                if plan.attack_of(node).is_none() && matches!(event, Event::Adopted { .. }) {
                    adopted_at = Instant::now();
                }
                note(node, &event, &mut book, &mut faults, &mut emit);
            }
            joined = running.nodes.join_next() => {
                match joined {
                    Some(Ok((node, Some(Ok(model))))) => { outcomes.insert(node, Ok(model)); }
                    Some(Ok((node, Some(Err(e))))) => {
                        let reason = fl_core::errors::chain(&e);
                        emit(&Progress::Errored { node, reason: reason.clone() });
                        outcomes.insert(node, Err(reason));
                    }
                    Some(Ok((node, None))) => { outcomes.insert(node, Err(STOPPED.into())); }
                    Some(Err(e)) => tracing::error!("a node's task ended abnormally: {e}"),
                    None => break,
                }
                let honest_done = (0..plan.nodes)
                    .filter(|n| !attackers.contains(n))
                    .all(|n| outcomes.contains_key(&n));
                // Once the honest nodes are done nothing waits (the attackers are stopped
                // below), and the nodes stopped here count as stopped, not as failed.
                if too_few.is_none() && !honest_done {
                    too_few = too_few_left(plan, &outcomes)
                        .map(|(left, needed)| (left, needed, first_error(&outcomes)));
                    if let Some((left, needed, _)) = &too_few {
                        tracing::warn!(left, needed, "too few nodes left to close a round: ending the run");
                        let left = (0..plan.nodes).filter(|n| !outcomes.contains_key(n));
                        stop(left, &mut told_to_stop, &running.stop);
                    }
                }
                if honest_done {
                    let left = attackers.iter().copied().filter(|n| !outcomes.contains_key(n));
                    stop(left, &mut told_to_stop, &running.stop);
                }
            },
            _ = tick.tick() => {
                faults.tick(book.open_round(), &mut emit);
                let waited = adopted_at.elapsed();
                if stalled.is_none() && plan.stall_after.is_some_and(|limit| waited > limit) {
                    tracing::warn!(?waited, "no honest node adopted a round: ending the run");
                    stalled = Some((book.open_round(), waited.as_secs()));
                    let left = (0..plan.nodes).filter(|n| !outcomes.contains_key(n));
                    stop(left, &mut told_to_stop, &running.stop);
                }
            }
        }
    }
    // Events sent just before the last node ended.
    while let Ok((node, event)) = running.events.try_recv() {
        note(node, &event, &mut book, &mut faults, &mut emit);
    }
    for row in book.ready(true) {
        emit(&Progress::Round(row));
    }
    if let Some((round, seconds)) = stalled {
        return Err(SimulationError::Stalled { round, seconds });
    }
    if let Some((left, needed, first)) = too_few {
        return Err(SimulationError::TooFewLeft {
            left,
            needed,
            first,
        });
    }
    let (model, agreeing) = consensus(&outcomes)?;
    let stats: Vec<_> = counters.iter().map(|b| b.stats()).collect();
    Ok(Report {
        task: setup.task.to_string(),
        model: model.to_string(),
        agreeing,
        finished: outcomes.values().filter(|o| o.is_ok()).count(),
        rounds: book.rows,
        bytes_sent: stats.iter().map(|s| s.bytes_sent).collect(),
        bytes_received: stats.iter().map(|s| s.bytes_received).collect(),
        seconds: clock.elapsed().as_secs_f64(),
        peak_memory: peak_memory(),
    })
}

/// Tells each of `nodes` to stop, once (`told` keeps who was told).
fn stop(
    nodes: impl Iterator<Item = usize>,
    told: &mut Vec<usize>,
    sender: &tokio::sync::broadcast::Sender<usize>,
) {
    for n in nodes {
        if !told.contains(&n) {
            told.push(n);
            let _ = sender.send(n);
        }
    }
}

/// The final model most nodes ended with, and how many did; the first error if none did.
fn consensus(
    outcomes: &BTreeMap<usize, Result<Cid, String>>,
) -> Result<(Cid, usize), SimulationError> {
    let mut votes: BTreeMap<Cid, usize> = BTreeMap::new();
    for model in outcomes.values().flatten() {
        *votes.entry(*model).or_default() += 1;
    }
    votes
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .ok_or_else(|| SimulationError::NoneFinished(first_error(outcomes)))
}

/// The first node's error in node order, one that was not only told to stop if any.
fn first_error(outcomes: &BTreeMap<usize, Result<Cid, String>>) -> String {
    let errors = || outcomes.values().filter_map(|o| o.as_ref().err());
    errors()
        .find(|e| *e != STOPPED)
        .or_else(|| errors().next())
        .cloned()
        .unwrap_or_else(|| "no node ran".into())
}

/// The nodes left and the participants a round needs, when so many nodes have failed or
/// been stopped (a node that finished still counts) that the nodes still running can no
/// longer close a round; `None` while they can, or once none is running.
fn too_few_left(
    plan: &Plan,
    outcomes: &BTreeMap<usize, Result<Cid, String>>,
) -> Option<(usize, usize)> {
    let failed = outcomes.values().filter(|o| o.is_err()).count();
    let left = plan.nodes.saturating_sub(failed);
    let needed = plan.min_participants as usize;
    let running = outcomes.len() < plan.nodes;
    (running && left < needed).then_some((left, needed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(outcomes: &[(usize, bool)]) -> BTreeMap<usize, Result<Cid, String>> {
        outcomes
            .iter()
            .map(|&(n, ok)| {
                (
                    n,
                    if ok {
                        Ok(Cid::default())
                    } else {
                        Err("diverged".into())
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_run_ends_once_too_few_nodes_are_left_to_close_a_round() {
        let mut plan = Plan::new(10, 3);
        plan.min_participants = 5;
        // Five of ten failed: five left, a round can still close.
        let five = ended(&[(0, false), (1, false), (2, false), (3, false), (4, false)]);
        assert_eq!(too_few_left(&plan, &five), None);
        // Six failed: four left of the five a round needs.
        let mut six = five.clone();
        six.insert(5, Err("stopped".into()));
        assert_eq!(too_few_left(&plan, &six), Some((4, 5)));
        // Nodes that finished still count: the last ones are only lingering.
        let finished = ended(&[
            (0, true),
            (1, true),
            (2, true),
            (3, true),
            (4, true),
            (5, true),
        ]);
        assert_eq!(too_few_left(&plan, &finished), None);
        // Once every node has ended there is nothing left to stop.
        let all = ended(&(0..10).map(|n| (n, false)).collect::<Vec<_>>());
        assert_eq!(too_few_left(&plan, &all), None);
    }

    #[test]
    fn the_reason_given_is_a_failure_not_a_stop() {
        let mut outcomes = ended(&[(3, false)]);
        outcomes.insert(0, Err(STOPPED.into()));
        assert_eq!(first_error(&outcomes), "diverged");
        let stopped: BTreeMap<_, _> = [(1, Err(STOPPED.to_string()))].into_iter().collect();
        assert_eq!(first_error(&stopped), STOPPED);
    }
}
