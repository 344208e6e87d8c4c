//! Helpers shared by the integration tests: CIDs, bundles, a seeded Gaussian generator.
#![allow(dead_code)]

use aggregator::Contribution;
use cid::Cid;
use fl_core::content::Block;
use fl_core::tensors::Bundle;

/// The reference CNN's tensors (../shared/REFERENCE_CNN.md), PyTorch names and shapes.
pub const REFERENCE_CNN: &[(&str, &[usize])] = &[
    ("conv1.weight", &[64, 3, 5, 5]),
    ("conv1.bias", &[64]),
    ("conv2.weight", &[64, 64, 5, 5]),
    ("conv2.bias", &[64]),
    ("fc1.weight", &[384, 4096]),
    ("fc1.bias", &[384]),
    ("fc2.weight", &[192, 384]),
    ("fc2.bias", &[192]),
    ("fc3.weight", &[10, 192]),
    ("fc3.bias", &[10]),
];

/// A CID standing for `tag` (a raw block of its bytes).
pub fn cid(tag: &str) -> Cid {
    *Block::hashed(0x55, tag.as_bytes().to_vec()).cid()
}

/// A bundle of `layout` filled from `flat`, tensors in name order.
pub fn bundle(layout: &[(&str, &[usize])], flat: &[f32]) -> Bundle {
    let mut names: Vec<(&str, &[usize])> = layout.to_vec();
    names.sort_by_key(|(n, _)| *n);
    let mut b = Bundle::new();
    let mut at = 0;
    for (name, shape) in names {
        let n: usize = shape.iter().product();
        b.insert(name, shape.to_vec(), flat[at..at + n].to_vec())
            .expect("test layout");
        at += n;
    }
    b
}

/// Number of values in `layout`.
pub fn size(layout: &[(&str, &[usize])]) -> usize {
    layout
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum()
}

/// A contribution from `sender` to `model` (its update CID derived from sender and `tag`).
pub fn contribution(
    sender: &str,
    tag: &str,
    model: Cid,
    samples: u64,
    delta: Bundle,
) -> Contribution {
    Contribution::new(
        sender,
        cid(&format!("{sender}/{tag}")),
        model,
        samples,
        delta,
    )
}

/// SplitMix64 plus Box-Muller: a seeded, portable Gaussian source for test data.
pub struct Gauss {
    state: u64,
    spare: Option<f64>,
}

impl Gauss {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let r = (-2.0 * self.uniform().ln()).sqrt();
        let t = std::f64::consts::TAU * self.uniform();
        self.spare = Some(r * t.sin());
        r * t.cos()
    }

    /// `n` values of N(mean, sd²) as f32.
    pub fn vector(&mut self, n: usize, sd: f64) -> Vec<f32> {
        (0..n).map(|_| (sd * self.normal()) as f32).collect()
    }
}

/// The bytes of a bundle (safetensors), for byte-identity checks.
pub fn bytes(b: &Bundle) -> Vec<u8> {
    b.to_safetensors().expect("serialises")
}
