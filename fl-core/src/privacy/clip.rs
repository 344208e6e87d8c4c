//! L2 clipping of an update: the bound on one node's influence that client-level
//! differential privacy rests on.
//!
//! DP-FedAvg (McMahan et al. 2018, <https://arxiv.org/abs/1710.06963>) scales a node's
//! update `u` by `min(1, C / ‖u‖₂)`, so that adding or removing one node moves the sum of
//! updates by at most `C` in L2 norm; [`noise`](super::noise) then adds Gaussian noise
//! scaled to `C`.
//!
//! - The norm is accumulated in `f64` (an `f32` sum of 1.7 million squares loses digits,
//!   and squares above about 1.8e19 overflow `f32`).
//! - Scaled values are rounded back to `f32`, which may round up. The factor is therefore
//!   shrunk by [`CLIP_MARGIN`] (2⁻²² relative), which covers that rounding (2⁻²⁴) and the
//!   rounding of an `f64` sum of up to 2³⁰ squares in any order: the clipped update's norm
//!   is at most `C` however a verifier computes it.
//! - An update whose norm is already at most `C` is left bit for bit unchanged.
//! - A NaN or infinite value is an error naming the tensor (or position), never a
//!   silently NaN norm: NaN compares false with every bound, so it would pass any check.

use crate::tensors::{Bundle, TensorError};

/// Factor by which the clip scale `C / ‖u‖` is shrunk so that `f32` rounding and `f64` summation never leave the norm above `C`.
pub const CLIP_MARGIN: f64 = 1.0 - 1.0 / (1u64 << 22) as f64;

/// Smallest clip norm accepted: below it, clipped values fall among `f32` subnormals, whose rounding [`CLIP_MARGIN`] does not cover.
pub const MIN_CLIP_NORM: f64 = 1e-30;

/// Why an update cannot be clipped.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// The clip norm is not a finite number of at least [`MIN_CLIP_NORM`].
    #[error("clip norm {value} must be finite and at least {MIN_CLIP_NORM:e}")]
    ClipNorm {
        /// The norm given.
        value: f64,
    },
    /// A value of a flat update is NaN or infinite.
    #[error("update value {index} is {value}: only finite updates can be clipped")]
    NonFinite {
        /// Its position in the flat update.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A value of a tensor of the update is NaN or infinite.
    #[error("tensor {tensor}: value {index} is {value}: only finite updates can be clipped")]
    NonFiniteTensor {
        /// The tensor's name.
        tensor: String,
        /// The value's position in the tensor (row-major).
        index: usize,
        /// The value.
        value: f32,
    },
    /// The clipped values do not fit the update's layout (a bug, not a property of the input).
    #[error(transparent)]
    Layout(#[from] TensorError),
}

/// What clipping did to one update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clipped {
    /// The L2 norm before clipping (accumulated in `f64`).
    pub norm: f64,
    /// The factor applied to every value: 1 when the norm was at most `C`, else `C / norm × CLIP_MARGIN`.
    pub scale: f64,
}

impl Clipped {
    /// Whether the update was scaled down.
    pub fn was_clipped(&self) -> bool {
        self.scale < 1.0
    }
}

/// The L2 norm of `values`, accumulated in `f64` in a fixed order (NaN or infinite if a value is).
pub fn l2_norm(values: &[f32]) -> f64 {
    // Four independent sums let the compiler vectorise; the order is fixed, so the
    // result does not depend on the machine.
    let mut acc = [0.0f64; 4];
    let mut chunks = values.chunks_exact(4);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            let v = f64::from(v);
            *a += v * v;
        }
    }
    let mut tail = 0.0f64;
    for &v in chunks.remainder() {
        let v = f64::from(v);
        tail += v * v;
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3]) + tail).sqrt()
}

/// Checks that `clip_norm` is usable as a bound.
pub(crate) fn check_clip_norm(clip_norm: f64) -> Result<(), ClipError> {
    if clip_norm.is_finite() && clip_norm >= MIN_CLIP_NORM {
        Ok(())
    } else {
        Err(ClipError::ClipNorm { value: clip_norm })
    }
}

/// The first NaN or infinite value and its position.
pub(crate) fn first_non_finite(values: &[f32]) -> Option<(usize, f32)> {
    values
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite())
        .map(|(i, v)| (i, *v))
}

/// Clips a flat update in place to L2 norm `clip_norm`; returns the norm before clipping.
pub fn clip_flat(values: &mut [f32], clip_norm: f64) -> Result<Clipped, ClipError> {
    check_clip_norm(clip_norm)?;
    let norm = l2_norm(values);
    // Squares of f32 values cannot overflow an f64 sum, so a non-finite norm means a
    // non-finite value.
    if !norm.is_finite()
        && let Some((index, value)) = first_non_finite(values)
    {
        return Err(ClipError::NonFinite { index, value });
    }
    Ok(scale_to(values, norm, clip_norm))
}

/// Scales `values`, whose finite norm is `norm`, to at most `clip_norm`.
fn scale_to(values: &mut [f32], norm: f64, clip_norm: f64) -> Clipped {
    if norm <= clip_norm {
        return Clipped { norm, scale: 1.0 };
    }
    let scale = clip_norm / norm * CLIP_MARGIN;
    for v in values.iter_mut() {
        *v = (f64::from(*v) * scale) as f32;
    }
    Clipped { norm, scale }
}

/// Clips an update bundle to L2 norm `clip_norm` (over all its tensors); returns the clipped bundle and the norm before.
pub fn clip_bundle(update: &Bundle, clip_norm: f64) -> Result<(Bundle, Clipped), ClipError> {
    let mut flat = clip_bundle_flat(update, clip_norm)?;
    let clipped = flat.1;
    if !clipped.was_clipped() {
        return Ok((update.clone(), clipped));
    }
    let out = update.with_flat(&std::mem::take(&mut flat.0))?;
    Ok((out, clipped))
}

/// Flattens and clips a bundle, naming the tensor of the first non-finite value.
pub(crate) fn clip_bundle_flat(
    update: &Bundle,
    clip_norm: f64,
) -> Result<(Vec<f32>, Clipped), ClipError> {
    check_clip_norm(clip_norm)?;
    let mut flat = update.flatten();
    let norm = l2_norm(&flat);
    if !norm.is_finite() {
        for (name, tensor) in update.iter() {
            if let Some((index, value)) = first_non_finite(&tensor.data) {
                return Err(ClipError::NonFiniteTensor {
                    tensor: name.to_string(),
                    index,
                    value,
                });
            }
        }
    }
    let clipped = scale_to(&mut flat, norm, clip_norm);
    Ok((flat, clipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_is_accumulated_in_f64() {
        // Squares of 1e20 overflow f32; the f64 norm is exact enough.
        let n = l2_norm(&[1e20, 1e20, 0.0, 0.0, 0.0]);
        assert!((n / (2f64.sqrt() * 1e20) - 1.0).abs() < 1e-7, "{n}");
        assert_eq!(l2_norm(&[3.0, 4.0]), 5.0);
        assert_eq!(l2_norm(&[]), 0.0);
        assert!(l2_norm(&[1.0, f32::NAN]).is_nan());
    }

    #[test]
    fn large_update_is_scaled_to_just_under_c() {
        let mut v = vec![3.0f32, 4.0, 0.0, 0.0, 0.0];
        let c = clip_flat(&mut v, 1.0).unwrap();
        assert_eq!(c.norm, 5.0);
        assert!(c.was_clipped());
        let after = l2_norm(&v);
        assert!(after <= 1.0 && after > 1.0 - 1e-6, "{after}");
        assert!((f64::from(v[0]) - 0.6).abs() < 1e-6);
    }

    #[test]
    fn small_update_is_left_bit_for_bit_unchanged() {
        let orig = vec![0.1f32, -0.2, 0.3];
        let mut v = orig.clone();
        let c = clip_flat(&mut v, 1.0).unwrap();
        assert_eq!(v, orig);
        assert_eq!(c.scale, 1.0);
        assert!(!c.was_clipped());
    }

    #[test]
    fn non_finite_values_are_refused_with_their_position() {
        let mut v = vec![0.0f32, 1.0, f32::INFINITY, f32::NAN];
        let err = clip_flat(&mut v, 1.0).unwrap_err();
        assert!(
            matches!(err, ClipError::NonFinite { index: 2, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "update value 2 is inf: only finite updates can be clipped"
        );
        assert!(v[1] == 1.0, "values are untouched on error");
    }

    #[test]
    fn unusable_clip_norms_are_refused() {
        for c in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-31] {
            assert!(matches!(
                clip_flat(&mut [1.0], c),
                Err(ClipError::ClipNorm { .. })
            ));
        }
    }

    #[test]
    fn bundle_errors_name_the_tensor() {
        let mut b = Bundle::new();
        b.insert("conv1.weight", vec![2], vec![0.5, 0.5]).unwrap();
        b.insert("fc1.bias", vec![3], vec![0.0, f32::NAN, 1.0])
            .unwrap();
        let err = clip_bundle(&b, 1.0).unwrap_err().to_string();
        assert_eq!(
            err,
            "tensor fc1.bias: value 1 is NaN: only finite updates can be clipped"
        );
    }

    #[test]
    fn bundle_is_clipped_over_all_tensors() {
        let mut b = Bundle::new();
        b.insert("a", vec![1], vec![3.0]).unwrap();
        b.insert("b", vec![1], vec![4.0]).unwrap();
        b.set_metadata("round", "7");
        let (out, c) = clip_bundle(&b, 2.5).unwrap();
        assert_eq!(c.norm, 5.0);
        assert!(l2_norm(&out.flatten()) <= 2.5);
        assert_eq!(out.metadata(), b.metadata());
        b.check_layout(&out).unwrap();
        let (same, c) = clip_bundle(&b, 5.0).unwrap();
        assert_eq!(same, b);
        assert!(!c.was_clipped());
    }
}
