//! Shared math: norms, distances, coordinate-wise order statistics and building the new
//! model, all in `f64` and in fixed orders.
//!
//! Every reduction here runs in an order set by the data's layout alone (tensors in name
//! order, coordinates in order, eight interleaved partial sums added in order), never by
//! how work is split between threads: parallel loops only split *independent* coordinates.

use fl_core::tensors::{Bundle, TensorError};
use rayon::prelude::*;

/// Coordinates per parallel work item. Fixed, so that nothing depends on the thread count.
pub(crate) const PAR_CHUNK: usize = 1 << 14;

/// Interleaved partial sums in [`sum_squares`] and [`squared_distance`].
const LANES: usize = 8;

/// `Σ x²` in `f64`: eight interleaved partial sums, added in lane order at the end.
pub fn sum_squares(x: &[f32]) -> f64 {
    let mut lanes = [0f64; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            let v = f64::from(v);
            *l += v * v;
        }
    }
    for (l, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        let v = f64::from(v);
        *l += v * v;
    }
    lanes.iter().sum()
}

/// `Σ (a - b)²` in `f64` over the common length, in the order of [`sum_squares`].
pub fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [0f64; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((l, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            let d = f64::from(x) - f64::from(y);
            *l += d * d;
        }
    }
    for ((l, &x), &y) in lanes.iter_mut().zip(ca.remainder()).zip(cb.remainder()) {
        let d = f64::from(x) - f64::from(y);
        *l += d * d;
    }
    lanes.iter().sum()
}

/// The L2 norm of a bundle. Not finite if any value is not finite.
///
/// Order: each tensor (in name order) is cut into fixed chunks of 16,384 values, each
/// chunk's [`sum_squares`] is computed (in parallel), and the chunk sums are added in order.
pub fn norm(bundle: &Bundle) -> f64 {
    bundle
        .iter()
        .map(|(_, t)| {
            let chunks: Vec<f64> = t.data.par_chunks(PAR_CHUNK).map(sum_squares).collect();
            chunks.iter().sum::<f64>()
        })
        .sum::<f64>()
        .sqrt()
}

/// The squared L2 distance between two bundles of one layout, tensors in name order.
pub fn bundle_squared_distance(a: &Bundle, b: &Bundle) -> f64 {
    a.iter()
        .zip(b.iter())
        .map(|((_, x), (_, y))| squared_distance(&x.data, &y.data))
        .sum()
}

/// The first value that is NaN or infinite: its tensor, index within the tensor, and value.
pub fn first_non_finite(bundle: &Bundle) -> Option<(&str, usize, f32)> {
    bundle.iter().find_map(|(name, t)| {
        t.data
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| (name, i, t.data[i]))
    })
}

/// The median of `values` in `f64` (mean of the two middle ones for an even count); sorts
/// `values` by IEEE total order, so NaNs go to the ends instead of poisoning the result.
/// `NaN` for an empty slice.
pub fn median(values: &mut [f32]) -> f64 {
    values.sort_unstable_by(f32::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        f64::from(values[n / 2])
    } else {
        (f64::from(values[n / 2 - 1]) + f64::from(values[n / 2])) / 2.0
    }
}

/// The mean of `values` after dropping the `trim` smallest and `trim` largest (IEEE total
/// order), summed in sorted order in `f64`. `NaN` if nothing is left.
pub fn trimmed_mean(values: &mut [f32], trim: usize) -> f64 {
    values.sort_unstable_by(f32::total_cmp);
    let n = values.len();
    if n <= 2 * trim {
        return f64::NAN;
    }
    let kept = &values[trim..n - trim];
    kept.iter().map(|&v| f64::from(v)).sum::<f64>() / kept.len() as f64
}

/// Applies `f` to each coordinate's values across `deltas` (in the order given), tensors in
/// the order of `global`. The deltas must have `global`'s layout (checked by the caller).
pub(crate) fn coordinatewise<F>(global: &Bundle, deltas: &[&Bundle], f: F) -> Vec<f64>
where
    F: Fn(&mut [f32]) -> f64 + Sync,
{
    let per_delta: Vec<Vec<&[f32]>> = deltas.iter().map(|b| tensor_slices(b)).collect();
    let mut out = vec![0f64; global.num_values()];
    let mut at = 0;
    for (ti, (_, t)) in global.iter().enumerate() {
        let len = t.data.len();
        let slices: Vec<&[f32]> = per_delta
            .iter()
            .filter_map(|d| d.get(ti).copied())
            .collect();
        out[at..at + len]
            .par_chunks_mut(PAR_CHUNK)
            .enumerate()
            .for_each(|(ci, o)| {
                let start = ci * PAR_CHUNK;
                let mut buf = vec![0f32; slices.len()];
                for (j, o) in o.iter_mut().enumerate() {
                    for (b, s) in buf.iter_mut().zip(&slices) {
                        *b = s.get(start + j).copied().unwrap_or(f32::NAN);
                    }
                    *o = f(&mut buf);
                }
            });
        at += len;
    }
    out
}

/// The tensors' value slices, in name order.
pub(crate) fn tensor_slices(bundle: &Bundle) -> Vec<&[f32]> {
    bundle.iter().map(|(_, t)| t.data.as_slice()).collect()
}

/// A bundle with `global`'s layout and metadata whose values are `f(global value, flat value)`.
pub(crate) fn combine<F>(global: &Bundle, flat: &[f64], f: F) -> Result<Bundle, TensorError>
where
    F: Fn(f32, f64) -> f32 + Sync,
{
    if flat.len() != global.num_values() {
        return Err(TensorError::FlatLength {
            expected: global.num_values(),
            actual: flat.len(),
        });
    }
    let mut out = Bundle::new();
    for (k, v) in global.metadata() {
        out.set_metadata(k.clone(), v.clone());
    }
    let mut at = 0;
    for (name, t) in global.iter() {
        let n = t.data.len();
        let d = &flat[at..at + n];
        let mut data = vec![0f32; n];
        data.par_chunks_mut(PAR_CHUNK)
            .zip(t.data.par_chunks(PAR_CHUNK))
            .zip(d.par_chunks(PAR_CHUNK))
            .for_each(|((o, g), d)| {
                for ((o, &g), &d) in o.iter_mut().zip(g).zip(d) {
                    *o = f(g, d);
                }
            });
        out.insert(name, t.shape.clone(), data)?;
        at += n;
    }
    Ok(out)
}

/// `global + delta`, each coordinate computed in `f64` and rounded once to `f32`.
pub(crate) fn apply_delta(global: &Bundle, delta: &[f64]) -> Result<Bundle, TensorError> {
    combine(global, delta, |g, d| (f64::from(g) + d) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_of_squares_match_the_definition_on_exact_values() {
        let x: Vec<f32> = (1..=19).map(|v| v as f32).collect();
        let want: f64 = (1..=19).map(|v| (v * v) as f64).sum();
        assert_eq!(sum_squares(&x), want);
        let y = vec![0f32; 19];
        assert_eq!(squared_distance(&x, &y), want);
    }

    #[test]
    fn median_and_trimmed_mean_push_nans_to_the_ends() {
        let mut v = [3.0, f32::NAN, 1.0, 2.0, -f32::NAN];
        assert_eq!(median(&mut v), 2.0);
        let mut v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(median(&mut v), 2.5);
        let mut v = [100.0, 1.0, 2.0, 3.0, f32::NAN];
        assert_eq!(trimmed_mean(&mut v, 1), 35.0);
        let mut v = [1.0, 2.0];
        assert!(trimmed_mean(&mut v, 1).is_nan());
    }
}
