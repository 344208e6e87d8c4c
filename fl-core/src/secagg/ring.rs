//! Updates as vectors of the ring `Z/2^k`: quantisation with a stated bound, and the ring's
//! arithmetic.
//!
//! A value `x` is clamped to `[-c, c]` and stored as `q = round((x + c) / Δ)` with
//! `Δ = 2c / (2^b - 1)`, so `q` lies in `[0, 2^b - 1]`. With `k = b + ⌈log2 n⌉` the sum of
//! `m ≤ n` inputs is below `2^k` and never wraps, so the unmasked sum is the exact integer
//! sum; the mean is read back as `Σq · Δ / m - c`. Rounding is to nearest, so for values
//! within the range the mean read back is within `Δ / 2` of the true mean (the mean is
//! read back in `f64`, whose rounding is far below `Δ`). Values outside the range are clamped, which is a change the
//! bound does not cover: choose the range to hold every update (under client-level DP, the
//! clip norm does: no coordinate exceeds the L2 norm).

use super::{Params, SecAggError, Slot};

/// Float updates to ring vectors and sums back to a float mean, for one round's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantiser {
    range: f64,
    levels: u32,
    ring_bits: u32,
}

impl Quantiser {
    /// The quantiser of checked settings.
    pub fn new(params: &Params) -> Self {
        Self {
            range: params.range,
            levels: (1u32 << params.bits) - 1,
            ring_bits: params.ring_bits(),
        }
    }

    /// The quantisation step `Δ`.
    pub fn step(&self) -> f64 {
        2.0 * self.range / f64::from(self.levels)
    }

    /// The most a coordinate of the mean read back differs from the true mean of inputs
    /// within the range: `Δ / 2` (read back in `f64`).
    pub fn bound(&self) -> f64 {
        self.step() / 2.0
    }

    /// Bits `k` of the ring.
    pub fn ring_bits(&self) -> u32 {
        self.ring_bits
    }

    /// One member's update as ring elements; refuses NaN and infinities.
    pub fn encode(&self, update: &[f32]) -> Result<Vec<u32>, SecAggError> {
        let scale = f64::from(self.levels) / (2.0 * self.range);
        update
            .iter()
            .enumerate()
            .map(|(index, &value)| {
                if !value.is_finite() {
                    return Err(SecAggError::NonFinite { index, value });
                }
                let clamped = f64::from(value).clamp(-self.range, self.range);
                // In [0, levels] by the clamp; the min guards rounding at the top.
                Ok(((clamped + self.range) * scale)
                    .round()
                    .min(f64::from(self.levels)) as u32)
            })
            .collect()
    }

    /// The mean of `count` inputs from their unmasked sum, in `f64` (what a mean rule's
    /// server step takes).
    pub fn mean(&self, sum: &[u32], count: usize) -> Vec<f64> {
        let step = self.step();
        let count = count.max(1) as f64;
        sum.iter()
            .map(|&s| f64::from(s) * step / count - self.range)
            .collect()
    }
}

/// The mask that keeps a value within `k` bits.
pub(crate) fn modulus_mask(ring_bits: u32) -> u32 {
    if ring_bits >= 32 {
        u32::MAX
    } else {
        (1u32 << ring_bits) - 1
    }
}

/// `acc += other` in the ring.
pub(crate) fn add_assign(acc: &mut [u32], other: &[u32], ring_bits: u32) {
    let mask = modulus_mask(ring_bits);
    for (a, b) in acc.iter_mut().zip(other) {
        *a = a.wrapping_add(*b) & mask;
    }
}

/// Checks a member's ring vector: its length and that every value is below `2^k`.
pub(crate) fn check(
    member: Slot,
    values: &[u32],
    len: usize,
    ring_bits: u32,
) -> Result<(), SecAggError> {
    if values.len() != len {
        return Err(SecAggError::Length {
            member,
            expected: len,
            got: values.len(),
        });
    }
    let mask = modulus_mask(ring_bits);
    match values.iter().position(|v| v & !mask != 0) {
        Some(index) => Err(SecAggError::OutOfRange {
            member,
            index,
            value: values[index],
            ring_bits,
        }),
        None => Ok(()),
    }
}

/// Ring vectors on the wire: little-endian 32-bit words in one byte string.
pub(crate) mod words {
    use serde::{Deserializer, Serializer};

    /// Writes the words as bytes.
    pub fn serialize<S: Serializer>(values: &[u32], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&to_bytes(values))
    }

    /// Reads bytes whose length is a multiple of four as words.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u32>, D::Error> {
        let bytes: serde_bytes::ByteBuf = serde::Deserialize::deserialize(deserializer)?;
        from_bytes(&bytes).ok_or_else(|| {
            serde::de::Error::custom("a ring vector's bytes must be a multiple of 4")
        })
    }

    /// The words as little-endian bytes.
    pub fn to_bytes(values: &[u32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Little-endian bytes as words, if their length is a multiple of four.
    pub fn from_bytes(bytes: &[u8]) -> Option<Vec<u32>> {
        if !bytes.len().is_multiple_of(4) {
            return None;
        }
        Some(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_bits_leave_room_for_every_members_input() {
        let p = Params::new(10, 7, 1.0, 20).unwrap();
        assert_eq!(p.ring_bits(), 24);
        let p = Params::new(16, 11, 1.0, 20).unwrap();
        assert_eq!(p.ring_bits(), 24);
        let p = Params::new(17, 12, 1.0, 20).unwrap();
        assert_eq!(p.ring_bits(), 25);
        // 255 members of the largest input fill the 32-bit ring and never wrap.
        let p = Params::new(255, 171, 1.0, 24).unwrap();
        assert_eq!(p.ring_bits(), 32);
        let top = u64::from(p.quantiser().encode(&[1.0]).unwrap()[0]);
        assert_eq!(top, (1 << 24) - 1);
        assert!(255 * top < 1u64 << p.ring_bits());
        assert!(matches!(
            Params::new(255, 171, 1.0, 25),
            Err(SecAggError::Bits { .. })
        ));
    }

    #[test]
    fn a_mean_read_back_is_within_half_a_step_of_the_true_mean() {
        let p = Params::new(3, 2, 0.5, 12).unwrap();
        let q = p.quantiser();
        let inputs = [
            vec![0.5f32, -0.5, 0.0, 0.123_456, -0.333],
            vec![0.25f32, 0.1, -0.2, 0.3, 0.499],
            vec![-0.5f32, 0.45, 0.01, -0.123, 0.0001],
        ];
        let mut sum = vec![0u32; 5];
        for input in &inputs {
            add_assign(&mut sum, &q.encode(input).unwrap(), p.ring_bits());
        }
        let mean = q.mean(&sum, 3);
        for (i, m) in mean.iter().enumerate() {
            let truth = inputs.iter().map(|x| f64::from(x[i])).sum::<f64>() / 3.0;
            assert!(
                (m - truth).abs() <= q.bound() * (1.0 + 1e-9),
                "{m} vs {truth}"
            );
        }
        // Out of range values clamp; the ends are exact.
        assert_eq!(q.encode(&[7.0, -7.0]).unwrap(), vec![4095, 0]);
        assert!(matches!(
            q.encode(&[0.0, f32::NAN]),
            Err(SecAggError::NonFinite { index: 1, .. })
        ));
    }

    #[test]
    fn ring_vectors_of_the_wrong_length_or_range_are_refused() {
        let member = Slot(3);
        assert!(check(member, &[1, 2, 3], 3, 8).is_ok());
        assert!(matches!(
            check(member, &[1, 2], 3, 8),
            Err(SecAggError::Length {
                expected: 3,
                got: 2,
                ..
            })
        ));
        assert!(matches!(
            check(member, &[1, 256, 3], 3, 8),
            Err(SecAggError::OutOfRange {
                index: 1,
                value: 256,
                ..
            })
        ));
        assert!(check(member, &[u32::MAX], 1, 32).is_ok());
        let mut a = vec![250u32, 3];
        add_assign(&mut a, &[10, 1], 8);
        assert_eq!(a, vec![4, 4]);
    }
}
