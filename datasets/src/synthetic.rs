//! Synthetic CIFAR-shaped images: random pixels whose class shifts the mean of one
//! colour channel, so a model can learn something. For smoke tests only; every name
//! that uses them says "synthetic".

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cifar10::{IMAGE_BYTES, Images, NUM_CLASSES};

/// `n` synthetic images with balanced labels, the same for the same seed.
pub fn synthetic_images(n: usize, seed: u64) -> Images {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let labels: Vec<u8> = (0..n).map(|i| (i % NUM_CLASSES) as u8).collect();
    let mut pixels = Vec::with_capacity(n * IMAGE_BYTES);
    for &label in &labels {
        let channel = label as usize % 3;
        let bright = 60 + 18 * label as u32;
        for c in 0..3 {
            for _ in 0..1024 {
                let noise: u32 = rng.random_range(0..64);
                let base = if c == channel { bright } else { 96 };
                pixels.push((base + noise).min(255) as u8);
            }
        }
    }
    // Labels are < 10 and pixels fill n images by construction.
    Images::new(labels, pixels).unwrap_or_default()
}
