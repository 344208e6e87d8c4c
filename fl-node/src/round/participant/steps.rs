//! A round's local steps in a task of steps: where they start in the node's data, how many
//! it takes (capacity load shares them out and stops them early), the pace that emulates a
//! machine's speed, and the update normalised to the task's steps (FedNova).

use super::*;

impl Participant {
    /// Under capacity load: when this node's training of `round` stops before its share,
    /// because half the members it expects have announced (the median member is done, so
    /// the round could close); never before a quarter of the task's `steps`.
    pub(super) fn early_stop(&self, ctx: &Ctx, round: u32, steps: u32) -> EarlyStop {
        let task = &ctx.terms.task;
        let least_expected = [
            ctx.inbox.announcers(round.saturating_sub(1)),
            task.members.as_ref().map_or(0, Vec::len),
            task.min_participants as usize,
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        EarlyStop {
            inbox: ctx.inbox.clone(),
            me: self.node.peer_id(),
            round,
            least_expected,
            least: fl_core::records::Load::least_steps(steps),
        }
    }
}

/// The local steps of one round in a task of steps: where in the node's stream of batches
/// they start, how many this node takes, and how many the task sets.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    pub(super) first: u64,
    pub(super) steps: u32,
    pub(super) nominal: u32,
}

impl Span {
    /// The update of `self.steps` steps over `samples` images, as the task's steps would
    /// have made it (FedNova, with the task's steps as the effective count): scaled by
    /// nominal / steps, its samples too, so the weight it claims is that of the task's
    /// steps whatever this node's share was; at most `most`, what an honest update of this
    /// node may claim ([`Terms::sample_bound`] for its shard).
    /// An update of the task's steps within that bound stays as trained, bit for bit.
    pub(super) fn normalise(&self, update: Bundle, samples: u64, most: u64) -> (Bundle, u64) {
        let most = most.max(1);
        let as_set = self.steps == self.nominal || self.steps == 0;
        if as_set && samples <= most {
            return (update, samples);
        }
        let (mut update, claimed) = match as_set {
            // Steps past the end of a small shard: no more than the whole shard is claimed.
            true => (update, samples),
            false => {
                let factor = f64::from(self.nominal) / f64::from(self.steps);
                let claimed = (samples as f64 * factor).round() as u64;
                (update.scaled(factor as f32), claimed)
            }
        };
        let claimed = claimed.clamp(1, most);
        update.set_metadata(fl_core::model::train::META_SAMPLES, claimed.to_string());
        (update, claimed)
    }
}

/// Under capacity load, when a node's local steps stop before its share: once half the
/// members it expects (the most of `least_expected` and the live peers, itself included)
/// announced for `round`, and at least `least` steps were taken.
pub(super) struct EarlyStop {
    inbox: Inbox,
    me: libp2p::PeerId,
    round: u32,
    least_expected: usize,
    least: u32,
}

impl EarlyStop {
    /// Whether to stop after `taken` steps.
    pub(super) fn now(&self, taken: u32) -> bool {
        if taken < self.least {
            return false;
        }
        let announced = self.inbox.announcers(self.round);
        if announced == 0 {
            return false;
        }
        let live = self
            .inbox
            .live_peers()
            .iter()
            .filter(|p| **p != self.me)
            .count()
            + 1;
        announced >= self.least_expected.max(live).div_ceil(2)
    }
}

/// Where a node's training of local steps ended, for its next round to go on from.
pub(super) struct Carry {
    pub(super) round: u32,
    pub(super) momentum: fl_core::model::Momentum,
    pub(super) next_batch: u64,
    /// Images a second this training ran at.
    pub(super) capacity: f64,
}

/// After `done` local steps begun at `began`: with a pace, sleeps out what is left of their
/// time (a machine of that speed, emulated on a shared host).
pub(super) fn sleep_out(pace: Option<Duration>, began: Instant, done: u32) {
    let Some(pace) = pace else { return };
    let left = (began + pace.saturating_mul(done)).saturating_duration_since(Instant::now());
    if !left.is_zero() {
        std::thread::sleep(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(values: Vec<f32>) -> Bundle {
        let mut bundle = Bundle::new();
        bundle
            .insert("w", vec![values.len()], values)
            .expect("the values fill the shape");
        bundle
    }

    #[test]
    fn an_update_of_other_steps_is_scaled_to_the_tasks_with_the_tasks_weight() {
        let span = |steps| Span {
            first: 0,
            steps,
            nominal: 10,
        };
        // Half the steps: twice the update, the samples of 10 steps.
        let (scaled, samples) = span(5).normalise(update(vec![1.0, -0.5]), 160, 320);
        assert_eq!(scaled.flatten(), vec![2.0, -1.0]);
        assert_eq!(samples, 320);
        assert_eq!(scaled.metadata()["samples"], "320");
        // 4/3 of the steps: 3/4 of the update.
        let (scaled, samples) = span(40).normalise(update(vec![4.0]), 1280, 320);
        assert_eq!(scaled.flatten(), vec![1.0]);
        assert_eq!(samples, 320);
        // A shard of 300 images: never more than an honest update of the task's steps claims
        // (13 steps crossing into a new epoch: 396 images, 305 scaled).
        let (_, samples) = span(13).normalise(update(vec![1.0]), 396, 300);
        assert_eq!(samples, 300);
        // The task's steps over more images than the shard holds (11 steps of 32 on 300
        // images): the values as trained, the whole shard claimed, as the bound allows.
        let (same, samples) = span(10).normalise(update(vec![1.0]), 332, 300);
        assert_eq!((same.flatten(), samples), (vec![1.0], 300));
        assert_eq!(same.metadata()["samples"], "300");
        // The task's steps: the update as it is, bit for bit.
        let exact = update(vec![0.1, 0.2, 0.3]);
        let (same, samples) = span(10).normalise(exact.clone(), 320, 320);
        assert_eq!(same, exact);
        assert_eq!(samples, 320);
    }

    #[test]
    fn a_paced_step_takes_at_least_the_pace_and_an_unpaced_one_does_not_wait() {
        let began = Instant::now();
        sleep_out(Some(Duration::from_millis(30)), began, 1);
        sleep_out(Some(Duration::from_millis(30)), began, 2);
        assert!(began.elapsed() >= Duration::from_millis(60));
        let began = Instant::now();
        for done in 1..=1000 {
            sleep_out(None, began, done);
        }
        assert!(began.elapsed() < Duration::from_millis(60));
    }
}
