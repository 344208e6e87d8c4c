//! Fault injection: stopping the nodes a plan's failures name at their moment.

use std::time::Instant;

use fl_node::round::Event;
use tokio::sync::broadcast;

use crate::{Failure, Plan, Progress, Victim};

/// The failures still to happen, each with when its clock started (the round opening, or
/// its aggregator starting) and on which node.
pub(crate) struct Faults {
    pending: Vec<(Failure, Option<(usize, Instant)>)>,
    stop: broadcast::Sender<usize>,
}

impl Faults {
    /// The plan's failures, none started; `stop` stops a node by index.
    pub(crate) fn new(plan: &Plan, stop: broadcast::Sender<usize>) -> Self {
        Self {
            pending: plan.failures.iter().map(|f| (*f, None)).collect(),
            stop,
        }
    }

    /// Starts the clock of an aggregator failure when `node` starts aggregating its round,
    /// and stops the nodes whose failure is then due.
    pub(crate) fn note(
        &mut self,
        node: usize,
        event: &Event,
        open: u32,
        emit: &mut dyn FnMut(&Progress),
    ) {
        let Event::Aggregating { round, .. } = event else {
            return;
        };
        for (f, started) in &mut self.pending {
            if f.victim == Victim::Aggregator && f.round == *round && started.is_none() {
                *started = Some((node, Instant::now()));
            }
        }
        self.stop_due(open, *round, emit);
    }

    /// Starts the clock of each node failure whose round has opened, and stops the nodes
    /// whose failure is due.
    pub(crate) fn tick(&mut self, open: u32, emit: &mut dyn FnMut(&Progress)) {
        for (f, started) in &mut self.pending {
            if let Victim::Node(n) = f.victim
                && f.round <= open
                && started.is_none()
            {
                *started = Some((n, Instant::now()));
            }
        }
        self.stop_due(open, open, emit);
    }

    /// Stops the nodes whose failure is due in round `open` (their clock ran out, or their
    /// round is past), reporting them as failed in `round`.
    fn stop_due(&mut self, open: u32, round: u32, emit: &mut dyn FnMut(&Progress)) {
        let mut due = Vec::new();
        self.pending.retain(|(f, started)| match started {
            Some((node, at)) if f.round < open || at.elapsed() >= f.after => {
                due.push(*node);
                false
            }
            _ => true,
        });
        for node in due {
            let _ = self.stop.send(node);
            emit(&Progress::Failed { node, round });
        }
    }
}
