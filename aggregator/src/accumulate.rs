//! Weighted sums of updates in `f64`, in sender order: one update at a time
//! ([`WeightedMean`], for streaming) or all at once (tiled, when they are all in memory).
//!
//! Both paths perform, for every coordinate, the same operations in the same order
//! (`acc += w_i * x_i` for the updates in sender order, starting from `0.0`, then one
//! multiplication by `1 / total weight`), so they give the same bits, whatever the thread count:
//! threads only split coordinates, never one coordinate's sum.

use cid::Cid;
use fl_core::tensors::{Bundle, TensorError};
use rayon::prelude::*;

use crate::contribution::NodeId;
use crate::error::AggregateError;
use crate::math::{PAR_CHUNK, tensor_slices};

/// Coordinates summed over all updates before moving on, when they are all in memory
/// (64 KiB of `f64` accumulator: stays in L2 while the updates stream past; longer runs
/// per update than an L1-sized tile keep the hardware prefetchers going).
const TILE: usize = 8192;

/// An update's weight in the sum: its samples times its scale (1 unless a rule clips it).
pub(crate) fn weight(samples: u64, scale: f64) -> f64 {
    samples as f64 * scale
}

/// The scale that brings an update of L2 norm `norm` within `bound` (1 if it is already).
pub(crate) fn clip_scale(bound: f64, norm: f64) -> f64 {
    if norm > bound { bound / norm } else { 1.0 }
}

/// A running sample-weighted mean of updates, one update in memory at a time.
///
/// Updates must be added in sender order (strictly increasing [`NodeId`]); the sum for
/// each coordinate is then the same sequence of `f64` operations as
/// [`crate::Strategy::aggregate`] performs on the same updates, so the two give the same bytes.
#[derive(Debug)]
pub struct WeightedMean<'g> {
    global: &'g Bundle,
    sums: Vec<f64>,
    total_samples: u64,
    last: Option<(NodeId, Cid)>,
    count: usize,
}

impl<'g> WeightedMean<'g> {
    /// An empty sum over updates of `global`'s layout.
    pub fn new(global: &'g Bundle) -> Self {
        Self {
            global,
            sums: vec![0.0; global.num_values()],
            total_samples: 0,
            last: None,
            count: 0,
        }
    }

    /// Adds `delta` (from `sender`, file `update`) with weight `samples * scale`.
    pub fn add(
        &mut self,
        sender: &NodeId,
        update: &Cid,
        samples: u64,
        scale: f64,
        delta: &Bundle,
    ) -> Result<(), AggregateError> {
        if let Some((last, first)) = &self.last {
            if sender == last {
                return Err(AggregateError::DuplicateSender {
                    sender: sender.clone(),
                    first: *first,
                    second: *update,
                });
            }
            if sender < last {
                return Err(AggregateError::OutOfOrder {
                    sender: sender.clone(),
                    update: *update,
                    previous: last.clone(),
                });
            }
        }
        if samples == 0 {
            return Err(AggregateError::ZeroSamples {
                sender: sender.clone(),
                update: *update,
            });
        }
        self.global
            .check_layout(delta)
            .map_err(|problem| AggregateError::Layout {
                sender: sender.clone(),
                update: *update,
                problem,
            })?;
        let total = self
            .total_samples
            .checked_add(samples)
            .ok_or(AggregateError::SamplesOverflow)?;
        let w = weight(samples, scale);
        let mut at = 0;
        for x in tensor_slices(delta) {
            let acc = &mut self.sums[at..at + x.len()];
            acc.par_chunks_mut(PAR_CHUNK)
                .zip(x.par_chunks(PAR_CHUNK))
                .for_each(|(a, x)| axpy(a, w, x));
            at += x.len();
        }
        self.total_samples = total;
        self.last = Some((sender.clone(), *update));
        self.count += 1;
        Ok(())
    }

    /// Updates added so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Samples behind the updates added so far.
    pub fn total_samples(&self) -> u64 {
        self.total_samples
    }

    /// The weighted mean, flat, tensors in name order.
    pub fn finish(self) -> Result<Vec<f64>, AggregateError> {
        self.finish_over(None)
    }

    /// The weighted sum over `total` (the total weight when `None`), flat, tensors in name
    /// order.
    pub fn finish_over(self, total: Option<u64>) -> Result<Vec<f64>, AggregateError> {
        if self.count == 0 {
            return Err(AggregateError::NoContributions);
        }
        let mut sums = self.sums;
        divide(&mut sums, total.unwrap_or(self.total_samples) as f64);
        Ok(sums)
    }
}

/// `acc += w * x`, coordinate by coordinate.
#[inline]
fn axpy(acc: &mut [f64], w: f64, x: &[f32]) {
    for (a, &x) in acc.iter_mut().zip(x) {
        *a += w * f64::from(x);
    }
}

/// `acc += w0 x0; acc += w1 x1; acc += w2 x2; acc += w3 x3`, coordinate by coordinate: the
/// same roundings in the same order as four [`axpy`] calls, with a quarter of the
/// accumulator traffic and four input streams in flight.
#[inline]
fn axpy4(acc: &mut [f64], w: [f64; 4], x: [&[f32]; 4]) {
    for ((((a, &x0), &x1), &x2), &x3) in acc.iter_mut().zip(x[0]).zip(x[1]).zip(x[2]).zip(x[3]) {
        let mut s = *a;
        s += w[0] * f64::from(x0);
        s += w[1] * f64::from(x1);
        s += w[2] * f64::from(x2);
        s += w[3] * f64::from(x3);
        *a = s;
    }
}

/// `acc += Σ w_i x_i[from..]` over `inputs` in order, four inputs per pass.
fn accumulate_tile(acc: &mut [f64], inputs: &[(f64, &[f32])], from: usize) {
    let range = from..from + acc.len();
    let mut groups = inputs.chunks_exact(4);
    for g in &mut groups {
        if let (Some(x0), Some(x1), Some(x2), Some(x3)) = (
            g[0].1.get(range.clone()),
            g[1].1.get(range.clone()),
            g[2].1.get(range.clone()),
            g[3].1.get(range.clone()),
        ) {
            axpy4(acc, [g[0].0, g[1].0, g[2].0, g[3].0], [x0, x1, x2, x3]);
        }
    }
    for (w, x) in groups.remainder() {
        if let Some(x) = x.get(range.clone()) {
            axpy(acc, *w, x);
        }
    }
}

/// `Σ w_i * x_i` over `inputs` in the order given, flat in `global`'s tensor order; the
/// inputs must have `global`'s layout (checked by the caller).
///
/// Tiled: each tile of coordinates is summed over every input before the next tile, so the
/// accumulator stays in cache and each update is read once.
pub(crate) fn weighted_sum(global: &Bundle, inputs: &[(f64, &Bundle)]) -> Vec<f64> {
    let per_input: Vec<Vec<&[f32]>> = inputs.iter().map(|(_, b)| tensor_slices(b)).collect();
    let mut sums = vec![0f64; global.num_values()];
    let mut at = 0;
    for (ti, (_, t)) in global.iter().enumerate() {
        let len = t.data.len();
        let slices: Vec<(f64, &[f32])> = inputs
            .iter()
            .zip(&per_input)
            .filter_map(|((w, _), s)| s.get(ti).map(|s| (*w, *s)))
            .collect();
        sums[at..at + len]
            .par_chunks_mut(PAR_CHUNK)
            .enumerate()
            .for_each(|(ci, acc)| {
                let start = ci * PAR_CHUNK;
                for (k, tile) in acc.chunks_mut(TILE).enumerate() {
                    accumulate_tile(tile, &slices, start + k * TILE);
                }
            });
        at += len;
    }
    sums
}

/// `global + Σ w_i x_i / total`, rounded to `f32`, with `global`'s layout and metadata: the
/// same bits as [`weighted_sum`], [`divide`] and [`crate::math::apply_delta`] in turn, fused
/// tile by tile so that no `f64` vector the size of the model is ever written.
pub(crate) fn weighted_mean_applied(
    global: &Bundle,
    inputs: &[(f64, &Bundle)],
    total: f64,
) -> Result<Bundle, TensorError> {
    let per_input: Vec<Vec<&[f32]>> = inputs.iter().map(|(_, b)| tensor_slices(b)).collect();
    let inv = 1.0 / total;
    let mut out = Bundle::new();
    for (k, v) in global.metadata() {
        out.set_metadata(k.clone(), v.clone());
    }
    for (ti, (name, t)) in global.iter().enumerate() {
        let slices: Vec<(f64, &[f32])> = inputs
            .iter()
            .zip(&per_input)
            .filter_map(|((w, _), s)| s.get(ti).map(|s| (*w, *s)))
            .collect();
        let mut data = vec![0f32; t.data.len()];
        data.par_chunks_mut(PAR_CHUNK)
            .zip(t.data.par_chunks(PAR_CHUNK))
            .enumerate()
            .for_each(|(ci, (out, g))| {
                let start = ci * PAR_CHUNK;
                let mut acc = vec![0f64; TILE.min(out.len())];
                for (k, (out, g)) in out.chunks_mut(TILE).zip(g.chunks(TILE)).enumerate() {
                    let acc = &mut acc[..out.len()];
                    acc.fill(0.0);
                    accumulate_tile(acc, &slices, start + k * TILE);
                    for ((o, &a), &g) in out.iter_mut().zip(acc.iter()).zip(g) {
                        *o = (f64::from(g) + a * inv) as f32;
                    }
                }
            });
        out.insert(name, t.shape.clone(), data)?;
    }
    Ok(out)
}

/// `sums[i] *= 1 / total`, coordinate by coordinate (a multiplication: a division per
/// coordinate costs as much as the whole sum of a few updates).
pub(crate) fn divide(sums: &mut [f64], total: f64) {
    let inv = 1.0 / total;
    sums.par_chunks_mut(PAR_CHUNK).for_each(|c| {
        for v in c {
            *v *= inv;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(values: &[f32]) -> Bundle {
        let mut b = Bundle::new();
        b.insert("w", vec![values.len()], values.to_vec()).unwrap();
        b
    }

    fn cid(n: u8) -> Cid {
        fl_core::content::Block::hashed(0x55, vec![n])
            .cid()
            .to_owned()
    }

    #[test]
    fn streaming_and_tiled_sums_give_the_same_bits() {
        // Six inputs: one pass of four at a time, then two one at a time.
        let global = bundle(&[0.0; 20_000]);
        let inputs: Vec<Bundle> = (0..6)
            .map(|k| {
                let v: Vec<f32> = (0..20_000)
                    .map(|i| ((i * (k + 1)) as f32 * 0.37).sin() * 10f32.powi(k - 3))
                    .collect();
                bundle(&v)
            })
            .collect();
        let samples = [3, 7, 1, 100, 12, 5];
        let scales = [1.0, 0.5, 1.0, 0.25, 1.0, 0.9];
        let mut s = WeightedMean::new(&global);
        for (k, b) in inputs.iter().enumerate() {
            let sender = NodeId::new(format!("n{k}"));
            s.add(&sender, &cid(k as u8), samples[k], scales[k], b)
                .unwrap();
        }
        let streamed = s.finish().unwrap();
        let weighted: Vec<(f64, &Bundle)> = inputs
            .iter()
            .enumerate()
            .map(|(k, b)| (weight(samples[k], scales[k]), b))
            .collect();
        let mut tiled = weighted_sum(&global, &weighted);
        divide(&mut tiled, samples.iter().sum::<u64>() as f64);
        assert_eq!(
            streamed.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            tiled.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_fused_batch_path_gives_the_same_bits_as_sum_divide_apply() {
        let global = bundle(&(0..5000).map(|i| (i as f32).cos()).collect::<Vec<_>>());
        let a = bundle(&(0..5000).map(|i| (i as f32).sin()).collect::<Vec<_>>());
        let b = bundle(
            &(0..5000)
                .map(|i| (i as f32 * 0.3).cos())
                .collect::<Vec<_>>(),
        );
        let inputs = [(weight(3, 1.0), &a), (weight(7, 0.5), &b)];
        let mut mean = weighted_sum(&global, &inputs);
        divide(&mut mean, 10.0);
        let stepwise = crate::math::apply_delta(&global, &mean).unwrap();
        let fused = weighted_mean_applied(&global, &inputs, 10.0).unwrap();
        assert_eq!(fused, stepwise);
    }

    #[test]
    fn streaming_refuses_disorder_duplicates_and_zero_samples() {
        let global = bundle(&[0.0; 2]);
        let d = bundle(&[1.0, 2.0]);
        let mut s = WeightedMean::new(&global);
        s.add(&"b".into(), &cid(1), 1, 1.0, &d).unwrap();
        assert!(matches!(
            s.add(&"a".into(), &cid(2), 1, 1.0, &d),
            Err(AggregateError::OutOfOrder { .. })
        ));
        assert!(matches!(
            s.add(&"b".into(), &cid(3), 1, 1.0, &d),
            Err(AggregateError::DuplicateSender { .. })
        ));
        assert!(matches!(
            s.add(&"c".into(), &cid(4), 0, 1.0, &d),
            Err(AggregateError::ZeroSamples { .. })
        ));
        assert_eq!(s.count(), 1);
        assert_eq!(s.finish().unwrap(), vec![1.0, 2.0]);
    }
}
