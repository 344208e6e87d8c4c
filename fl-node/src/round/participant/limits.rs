//! How many trainings and computations a process runs at once, and on which cores.

use std::sync::{Arc, Mutex};

use super::lock;
use crate::round::RoundError;

/// Bounds on a node's heavy work, shared by the nodes of one process (`fl simulate`) so that
/// many nodes on one machine neither thrash its cores nor hold every update in memory at once.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Trainings at once (one left running after its base was refuted included).
    training: Arc<tokio::sync::Semaphore>,
    /// Where trainings at once split the machine: each takes one of these thread pools for
    /// its kernels (its share of the cores), so trainings run side by side instead of
    /// taking turns on every core. Empty where one training at a time has all the cores.
    cores: Arc<Mutex<Vec<Arc<rayon::ThreadPool>>>>,
    /// Aggregations and recomputations at once (each holds a round's updates in memory).
    pub computing: Arc<tokio::sync::Semaphore>,
}

impl Limits {
    /// One node alone in its process: one training at a time on every core, two
    /// computations.
    pub fn per_node() -> Self {
        Self::shared(1, 2)
    }

    /// Limits to share among the nodes of one process: `trainings` at once, each on its
    /// share of the cores.
    pub fn shared(trainings: usize, computations: usize) -> Self {
        let trainings = trainings.max(1);
        Self {
            training: Arc::new(tokio::sync::Semaphore::new(trainings)),
            cores: Arc::new(Mutex::new(core_shares(trainings))),
            computing: Arc::new(tokio::sync::Semaphore::new(computations.max(1))),
        }
    }

    /// Waits for a training's turn; the slot holds its share of the cores until dropped.
    pub(crate) async fn training_slot(&self) -> Result<TrainingSlot, RoundError> {
        let permit = self.training.clone().acquire_owned().await?;
        // A permit is held for each pool taken, so one is free when a permit is.
        let pool = lock(&self.cores).pop();
        Ok(TrainingSlot {
            _permit: permit,
            pool,
            home: self.cores.clone(),
        })
    }
}

/// Thread pools that split the machine's cores between `trainings` at once: none for one
/// training (it runs on rayon's global pool, every core) or where a pool cannot be made.
/// Two trainings of one thread each train about 1.14x the images a second of one training
/// on both cores of a 2-core machine (docs/decisions.md, "Trainings side by side"), and a
/// kernel's results do not depend on its thread count.
fn core_shares(trainings: usize) -> Vec<Arc<rayon::ThreadPool>> {
    if trainings < 2 {
        return Vec::new();
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / trainings).max(1);
    let pools: Result<Vec<_>, _> = (0..trainings)
        .map(|i| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(move |t| format!("training-{i}-{t}"))
                .build()
                .map(Arc::new)
        })
        .collect();
    pools.unwrap_or_else(|error| {
        tracing::warn!(%error, "trainings share every core: no thread pool of their own");
        Vec::new()
    })
}

/// A training's turn: its share of the cores, given back when it is dropped.
pub(crate) struct TrainingSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    pool: Option<Arc<rayon::ThreadPool>>,
    home: Arc<Mutex<Vec<Arc<rayon::ThreadPool>>>>,
}

impl TrainingSlot {
    /// Runs `work` (blocking) on this slot's cores.
    pub(crate) fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        match &self.pool {
            Some(pool) => pool.install(work),
            None => work(),
        }
    }
}

impl Drop for TrainingSlot {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            lock(&self.home).push(pool);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trainings_at_once_each_run_on_their_own_share_of_the_cores() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let limits = Limits::shared(2, 1);
        let first = limits.training_slot().await.unwrap();
        let second = limits.training_slot().await.unwrap();
        let threads = |slot: &TrainingSlot| slot.run(rayon::current_num_threads);
        assert_eq!(threads(&first), (cores / 2).max(1));
        assert_eq!(threads(&second), (cores / 2).max(1));
        let names =
            |slot: &TrainingSlot| slot.run(|| std::thread::current().name().map(String::from));
        assert_ne!(names(&first), names(&second), "the two slots share a pool");
        // A third waits until a slot is given back, and then takes its pool.
        let third =
            tokio::time::timeout(std::time::Duration::from_millis(50), limits.training_slot())
                .await;
        assert!(third.is_err(), "a third training started beside two");
        let freed = names(&first);
        drop(first);
        let third = limits.training_slot().await.unwrap();
        assert_eq!(names(&third), freed);
    }

    #[tokio::test]
    async fn one_training_at_a_time_has_every_core() {
        let limits = Limits::per_node();
        let slot = limits.training_slot().await.unwrap();
        assert!(
            slot.run(rayon::current_thread_index).is_none(),
            "ran on a pool of its own"
        );
    }
}
