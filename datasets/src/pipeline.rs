//! The input pipeline for training: shuffled, augmented, normalised batches, decoded on
//! worker threads ahead of the trainer so that feeding a device is never the bottleneck.
//!
//! Everything random is a function of (seed, epoch, sample): the batches of an epoch are
//! the same whatever the number of workers, and differ from epoch to epoch.
//! Augmentation is the standard CIFAR recipe, as torchvision's `RandomCrop(32, padding=4)`
//! and `RandomHorizontalFlip()` apply it before `Normalize`: a random 32x32 crop of the
//! image padded by 4 black pixels, and a horizontal flip with probability 1/2.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use fl_core::model::{Batch, IMAGE_LEN, Normalization};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cifar10::Images;

/// Pixels of black padding around an image before the random crop.
pub const CROP_PADDING: usize = 4;
const SIDE: usize = 32;

/// How batches are made.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Shuffle the order every epoch.
    pub shuffle: bool,
    /// Random crop (pad 4) and horizontal flip.
    pub augment: bool,
    /// Seed of shuffling and augmentation.
    pub seed: u64,
    /// Decoding threads (at least 1).
    pub workers: usize,
    /// Batches decoded ahead of the consumer, per worker.
    pub prefetch: usize,
    /// Per-channel normalisation.
    pub normalization: Normalization,
}

impl PipelineConfig {
    /// Training defaults: shuffled, augmented, CIFAR-10 statistics, one worker per core.
    pub fn training(batch_size: usize, seed: u64) -> Self {
        Self {
            batch_size,
            shuffle: true,
            augment: true,
            seed,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            prefetch: 2,
            normalization: fl_core::model::CIFAR10_NORMALIZATION,
        }
    }

    /// Evaluation: in order, no augmentation.
    pub fn evaluation(batch_size: usize) -> Self {
        Self {
            shuffle: false,
            augment: false,
            ..Self::training(batch_size, 0)
        }
    }
}

/// Images to batches, epoch after epoch.
#[derive(Debug, Clone)]
pub struct Pipeline {
    images: Arc<Images>,
    config: PipelineConfig,
}

impl Pipeline {
    /// A pipeline over `images`.
    pub fn new(images: Images, config: PipelineConfig) -> Self {
        Self {
            images: Arc::new(images),
            config,
        }
    }

    /// Number of images per epoch.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The order of epoch `epoch`'s samples.
    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.images.len()).collect();
        if self.config.shuffle {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(
                self.config.seed,
                epoch,
                u64::MAX,
            )));
        }
        order
    }

    /// Decodes batch `index` of an epoch whose sample order is `order`.
    fn decode(
        images: &Images,
        config: &PipelineConfig,
        epoch: u64,
        order: &[usize],
        index: usize,
    ) -> Batch {
        let bs = config.batch_size.max(1);
        let ids = &order[index * bs..((index + 1) * bs).min(order.len())];
        let mut values = Vec::with_capacity(ids.len() * IMAGE_LEN);
        let mut labels = Vec::with_capacity(ids.len());
        for &i in ids {
            labels.push(images.labels()[i]);
            let image = images.image(i);
            if config.augment {
                let mut rng = ChaCha8Rng::seed_from_u64(mix(config.seed, epoch, i as u64));
                let dx = rng.random_range(0..=2 * CROP_PADDING) as isize - CROP_PADDING as isize;
                let dy = rng.random_range(0..=2 * CROP_PADDING) as isize - CROP_PADDING as isize;
                let flip = rng.random_bool(0.5);
                augmented(image, dx, dy, flip, &config.normalization, &mut values);
            } else {
                for (c, plane) in image.chunks_exact(SIDE * SIDE).enumerate() {
                    values.extend(plane.iter().map(|&p| config.normalization.apply(c, p)));
                }
            }
        }
        Batch {
            images: values,
            labels,
        }
    }

    /// The batches of epoch `epoch`, decoded ahead by the worker threads.
    pub fn epoch(&self, epoch: u64) -> Batches {
        let order = Arc::new(self.order(epoch));
        let bs = self.config.batch_size.max(1);
        let count = order.len().div_ceil(bs);
        let workers = self.config.workers.clamp(1, count.max(1));
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel(self.config.prefetch.max(1));
            let (images, config, order) = (self.images.clone(), self.config.clone(), order.clone());
            handles.push(std::thread::spawn(move || {
                for index in (w..count).step_by(workers) {
                    let batch = Self::decode(&images, &config, epoch, &order, index);
                    if tx.send(batch).is_err() {
                        return; // the consumer stopped early
                    }
                }
            }));
            receivers.push(rx);
        }
        Batches {
            receivers,
            handles,
            next: 0,
            count,
        }
    }

    /// Every batch of epoch `epoch`, collected.
    pub fn collect_epoch(&self, epoch: u64) -> Vec<Batch> {
        self.epoch(epoch).collect()
    }

    /// Batches `first..first + count` of the stream that runs through epochs 0, 1, 2, ...
    /// in turn: for training a few steps at a time that picks up where it stopped.
    pub fn steps(&self, first: u64, count: usize) -> Vec<Batch> {
        let per_epoch = self.images.len().div_ceil(self.config.batch_size.max(1)) as u64;
        if per_epoch == 0 {
            return Vec::new();
        }
        let mut batches = Vec::with_capacity(count);
        let mut order = (u64::MAX, Vec::new());
        for step in first..first.saturating_add(count as u64) {
            let epoch = step / per_epoch;
            if order.0 != epoch {
                order = (epoch, self.order(epoch));
            }
            let index = (step % per_epoch) as usize;
            batches.push(Self::decode(
                &self.images,
                &self.config,
                epoch,
                &order.1,
                index,
            ));
        }
        batches
    }
}

/// The batches of one epoch, in order.
pub struct Batches {
    receivers: Vec<Receiver<Batch>>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
    count: usize,
}

impl Iterator for Batches {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.count {
            return None;
        }
        let worker = self.next % self.receivers.len();
        self.next += 1;
        // A worker only stops early if it panicked; then the epoch ends here.
        self.receivers[worker].recv().ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.count - self.next;
        (left, Some(left))
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        self.receivers.clear(); // unblocks workers waiting to send
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Writes the normalised values of `image` shifted by (dx, dy) inside a black-padded
/// frame, optionally mirrored.
fn augmented(
    image: &[u8],
    dx: isize,
    dy: isize,
    flip: bool,
    norm: &Normalization,
    out: &mut Vec<f32>,
) {
    for (c, plane) in image.chunks_exact(SIDE * SIDE).enumerate() {
        let black = norm.apply(c, 0); // padding pixels are black, then normalised
        for y in 0..SIDE as isize {
            let sy = y + dy;
            for x in 0..SIDE as isize {
                let xx = if flip { SIDE as isize - 1 - x } else { x };
                let sx = xx + dx;
                let v = if (0..SIDE as isize).contains(&sy) && (0..SIDE as isize).contains(&sx) {
                    norm.apply(c, plane[sy as usize * SIDE + sx as usize])
                } else {
                    black
                };
                out.push(v);
            }
        }
    }
}

/// A 64-bit mix of (seed, epoch, sample) for independent per-sample streams (SplitMix64).
fn mix(seed: u64, epoch: u64, sample: u64) -> u64 {
    let mut z = seed
        ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ sample.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::synthetic_images;

    #[test]
    fn batches_do_not_depend_on_the_number_of_workers() {
        let images = synthetic_images(300, 1);
        let mut config = PipelineConfig::training(64, 9);
        config.workers = 1;
        let one = Pipeline::new(images.clone(), config.clone()).collect_epoch(3);
        config.workers = 3;
        let three = Pipeline::new(images, config).collect_epoch(3);
        assert_eq!(one, three);
        assert_eq!(one.len(), 5);
        assert_eq!(one.iter().map(|b| b.len()).sum::<usize>(), 300);
    }

    #[test]
    fn steps_run_through_the_epochs_in_turn() {
        let images = synthetic_images(100, 3);
        let pipeline = Pipeline::new(images, PipelineConfig::training(32, 7));
        let stream: Vec<Batch> = (0..3).flat_map(|e| pipeline.collect_epoch(e)).collect();
        assert_eq!(stream.len(), 12);
        // Three steps at a time cross the epochs' ends (the 4th batch of each holds 4 images).
        let picked: Vec<Batch> = (0..4).flat_map(|r| pipeline.steps(r * 3, 3)).collect();
        assert_eq!(picked, stream);
        assert_eq!(pipeline.steps(5, 2), stream[5..7].to_vec());
        assert!(
            Pipeline::new(synthetic_images(0, 1), PipelineConfig::training(8, 1))
                .steps(0, 4)
                .is_empty()
        );
    }

    #[test]
    fn epochs_differ_and_evaluation_is_in_order_and_unaugmented() {
        let images = synthetic_images(100, 2);
        let train = Pipeline::new(images.clone(), PipelineConfig::training(50, 1));
        assert_ne!(train.collect_epoch(0), train.collect_epoch(1));
        let eval = Pipeline::new(images.clone(), PipelineConfig::evaluation(50)).collect_epoch(0);
        let expected = Batch::from_cifar_records(
            &images.to_binary()[..50 * 3073],
            &fl_core::model::CIFAR10_NORMALIZATION,
        )
        .unwrap();
        assert_eq!(eval[0], expected);
    }

    #[test]
    fn a_shuffled_epoch_holds_every_image_once_with_its_own_label() {
        let images = synthetic_images(500, 4);
        let mut config = PipelineConfig::training(64, 5);
        config.augment = false;
        let key = |batches: Vec<Batch>| {
            let mut pairs: Vec<(u8, Vec<u32>)> = batches
                .iter()
                .flat_map(|b| {
                    (0..b.len()).map(move |i| {
                        (
                            b.labels[i],
                            b.image(i).iter().map(|v| v.to_bits()).collect(),
                        )
                    })
                })
                .collect();
            pairs.sort();
            pairs
        };
        let shuffled = Pipeline::new(images.clone(), config).collect_epoch(2);
        let in_order = Pipeline::new(images, PipelineConfig::evaluation(64)).collect_epoch(0);
        assert_ne!(shuffled, in_order);
        assert_eq!(key(shuffled), key(in_order));
    }

    #[test]
    fn crop_shifts_and_flip_mirrors() {
        let mut image = vec![0u8; 3 * 1024];
        image[5 * 32 + 7] = 255; // R plane, row 5, column 7
        let norm = fl_core::model::CIFAR10_NORMALIZATION;
        let bright = norm.apply(0, 255);
        let mut out = Vec::new();
        augmented(&image, 2, 1, false, &norm, &mut out);
        // Shifted by (dx, dy): output (x, y) reads source (x + 2, y + 1).
        assert_eq!(out[4 * 32 + 5], bright);
        out.clear();
        augmented(&image, 0, 0, true, &norm, &mut out);
        assert_eq!(out[5 * 32 + (31 - 7)], bright);
        out.clear();
        augmented(&image, 4, 0, false, &norm, &mut out);
        assert_eq!(out[5 * 32 + 31], norm.apply(0, 0), "padding is black");
    }

    #[test]
    fn dropping_an_epoch_early_stops_the_workers() {
        let images = synthetic_images(1000, 3);
        let pipeline = Pipeline::new(images, PipelineConfig::training(10, 1));
        let mut epoch = pipeline.epoch(0);
        assert!(epoch.next().is_some());
        drop(epoch); // must not hang
    }
}
