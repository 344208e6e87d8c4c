//! Gaussian noise for client-level differential privacy (DP-FedAvg, McMahan et al. 2018,
//! <https://arxiv.org/abs/1710.06963>): after [clipping](super::clip) its update to L2
//! norm `C`, a node adds noise of standard deviation `z·C` to every coordinate, `z` being
//! the noise multiplier the [accountant](super::accountant) turns into (ε, δ).
//! With secure aggregation the noise can be split: each of `n` nodes adds `z·C/√n`, so
//! that only the sum carries `z·C` ([`NoiseConfig::nodes`]).
//!
//! # What is sampled, and why not `f32` Gaussians
//!
//! Textbook noise (`x + σ·randn()` in floating point) is not differentially private as
//! implemented: Mironov (2012, "On significance of the least significant bits for
//! differential privacy", CCS) showed that the set of floating-point values such a
//! mechanism can output, and their probabilities, depend on `x` in the low-order bits,
//! so an observer can tell neighbouring inputs apart, sometimes with certainty. Secure
//! randomness does not help; the arithmetic is the leak.
//!
//! opendp's vector Gaussian (`make_gaussian` on `f32`) closes this hole exactly: it rounds
//! each input to a multiple of `2^k`, adds an integer drawn from the *discrete* Gaussian
//! `N_Z(0, (σ/2^k)²)` (Canonne, Kamath, Steinke 2020, <https://arxiv.org/abs/2004.00010>)
//! with exact rational arithmetic and random bits from OpenSSL, and only then converts to
//! float. Every output is on the same grid whatever the input, and the output law is
//! exactly the one its privacy proof assumes (zCDP `ρ = Δ²/2σ²`, Δ widened by the
//! rounding). We keep that construction and change how the integer is drawn:
//!
//! - **Grid**: `2^k` with `k = ⌊log₂ σ⌋ − 40` ([`GRID_BITS`]), so σ spans `s ∈ [2⁴⁰, 2⁴¹]`
//!   grid steps; `s = ⌈σ/2^k⌉`, so the noise is never smaller than asked (at most 2⁻⁴⁰
//!   relatively larger). Rounding the input moves it by at most half a step per coordinate,
//!   which widens the L2 sensitivity by at most `2^k·√d` ([`GaussianNoise::rounding_slack`]):
//!   `1.2e-9·σ` for the reference CNN's 1,756,426 parameters.
//! - **Sampler**: CKS20's exact algorithm (discrete Laplace proposals, Bernoulli(exp(−γ))
//!   acceptance), the algorithm of opendp's `sample_discrete_gaussian`, in `u64`/`u128`
//!   arithmetic instead of arbitrary-precision rationals (with Laplace scale `t = s`,
//!   every quantity is an integer that fits `u128`), fed by opendp's secure byte source
//!   `fill_bytes` (OpenSSL `RAND_priv_bytes`) in 64 KiB blocks rather than a call per
//!   byte. Bernoulli(a/b)
//!   compares the binary expansion of `a/b` with random bits lazily (2 bits expected), and
//!   Bernoulli(e⁻¹), the commonest trial, compares them with e⁻¹'s first 128 bits. The
//!   only departures from the exact law: a proposal more than 2⁶⁴ steps (2²³·σ) from the
//!   mean, whose acceptance probability is below `exp(−2⁴⁵)`, is rejected outright, and a
//!   Bernoulli(e⁻¹) whose first 128 random bits all equal e⁻¹'s (probability 2⁻¹²⁸) is drawn
//!   afresh.
//! - **Output**: `(round(x/2^k) + noise)·2^k` is computed in `i128`, then rounded to `f32`:
//!   post-processing of an exact mechanism, so it costs no privacy.
//!
//! Measured on this project's 2-core build machine (x86-64, other builds running), one
//! update of 1,756,426 values, σ = 1.1 (`cargo bench -p benches --bench privacy`):
//!
//! | path | per update | values/s |
//! | --- | --- | --- |
//! | opendp `make_gaussian`, this grid (`k = ⌊log₂ σ⌋ − 40`) | 23 s | 0.08 M |
//! | opendp `make_gaussian`, its default `k` (−149 for `f32`; scratch run) | about 60 s | 0.03 M |
//! | opendp `sample_discrete_gaussian` alone (scratch run) | about 19 s | 0.09 M |
//! | this sampler, 1 thread | 0.31 s | 5.7 M |
//! | this sampler, 2 threads ([`GaussianNoise::add_to`]'s default here) | 0.17 s | 10.4 M |
//! | clip + noise, flat, 2 threads ([`privatize_flat`]) | 0.17 s | 10.1 M |
//! | clip + noise of a [`Bundle`] ([`privatize`]: two more copies) | 0.20 s | 8.8 M |
//! | limit: 8 secure random bytes per value from `fill_bytes` | 2 ms | 890 M |
//!
//! opendp's path is slow because every Bernoulli trial calls `fill_bytes` for a few bytes
//! (0.5 µs per call: 16 MB/s in 8-byte calls, 6.7 GB/s in 64 KiB calls) and works on
//! arbitrary-precision rationals. A Box–Muller `f64` Gaussian from the same bytes took
//! 27 ns per value, but it is exactly the construction Mironov's attack targets.
//! [`GaussianNoise::add_to_with_make_gaussian`] keeps opendp's own path for cross-checks.
//!
//! # Accounting
//!
//! The discrete Gaussian satisfies the same zCDP and Rényi bounds as the continuous one
//! for the same σ and an integer shift (CKS20); at 2⁴⁰ steps per σ, any Gaussian
//! expectation the accountant takes (including those of the subsampled mechanism) differs
//! from its continuous value by a factor `1 ± O(exp(−2π²s²))` (Poisson summation), so the
//! continuous RDP accountant applies. Use `C + rounding_slack(d)` as the sensitivity to be
//! pedantic: it changes `z` by about 1e-9.
//!
//! In the distributed variant the nodes' noises add up to a sum of `n` discrete Gaussians
//! of scale `s` on one shared grid (every node derives the same grid from the same
//! config), which CKS20 show to be within a Rényi divergence of order `exp(−π²s²)` of one
//! discrete Gaussian of variance `n·s²`: nothing at `s ≥ 2⁴⁰`. Each node's own update
//! carries only `σ/√n`: it is protected only as part of a securely aggregated sum.
//!
//! # No seeds
//!
//! There is no way to seed this noise: if the noise can be reproduced it can be
//! subtracted. Tests check its statistics instead.

use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_gaussian;
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::L2Distance;
use opendp::traits::samplers::fill_bytes;
use serde::{Deserialize, Serialize};

use super::clip::{self, ClipError, Clipped};
use crate::tensors::{Bundle, TensorError};

/// σ spans between 2^GRID_BITS and 2^(GRID_BITS+1) grid steps: fine enough that rounding to the grid widens the sensitivity by ~1e-9·σ on millions of coordinates, coarse enough that every integer fits `u128`.
pub const GRID_BITS: i32 = 40;

/// Smallest positive noise multiplier accepted (2⁻⁴⁰): below it, clipped values span more grid steps than `i128` arithmetic allows. Zero (no noise) is accepted.
pub const MIN_NOISE_MULTIPLIER: f64 = 1.0 / (1u64 << 40) as f64;

/// Largest |value| accepted, in standard deviations (2⁶⁰): larger values would overflow the grid arithmetic; clipped values are far below.
pub const MAX_VALUE_IN_STD_DEVS: f64 = (1u64 << 60) as f64;

/// Bytes drawn from opendp's secure source per call: a call costs about 0.5 µs, the time of 3 KB of output, so one call per few bytes would dominate.
const RANDOM_BLOCK: usize = 1 << 16;

/// Fewest coordinates worth a thread of their own.
const MIN_VALUES_PER_THREAD: usize = 1 << 16;

/// Most threads used to add noise.
const MAX_THREADS: usize = 8;

/// Proposals this many grid steps or more from the mean are rejected (acceptance below `exp(−2⁴⁵)`), so squares fit `u128`.
const MAX_DEVIATION: u128 = 1 << 64;

/// ⌊e⁻¹ · 2¹²⁸⌋: the first 128 bits of e⁻¹'s binary expansion (mpmath at 400 bits and the
/// series Σ (−1)ᵏ/k! in exact rationals agree; the test `inverse_e_has_its_bits` checks it).
const INV_E: u128 = 0x5e2d_58d8_b3bc_df1a_bade_c782_9054_f90d;

/// Denominators above this go through the product form of Bernoulli(a/(b·k)), so doubling a numerator never overflows.
const MAX_DENOMINATOR: u128 = 1 << 126;

/// Why noise cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    /// A configuration value is out of range; `field` is its name in the config.
    #[error("noise config: {field} = {value}: {reason}")]
    Config {
        /// The field refused (`clip_norm`, `noise_multiplier`, `nodes`).
        field: &'static str,
        /// Its value, as written.
        value: String,
        /// What it must be.
        reason: &'static str,
    },
    /// The standard deviation given directly is negative, NaN, infinite or subnormal.
    #[error("noise standard deviation {value} must be 0 or a finite normal positive number")]
    StdDev {
        /// The value given.
        value: f64,
    },
    /// A value to be noised is NaN or infinite.
    #[error("update value {index} is {value}: noise is only added to finite values")]
    NonFinite {
        /// Its position in the flat update.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A value is too large for the noise grid (more than 2⁶⁰ standard deviations), or the noised value overflows `f32`.
    #[error(
        "update value {index} is {value}: out of range for noise of standard deviation {std_dev:e}; clip first"
    )]
    OutOfRange {
        /// Its position in the flat update.
        index: usize,
        /// The value.
        value: f32,
        /// The noise's standard deviation.
        std_dev: f64,
    },
    /// Noise drawn ahead was drawn for another number of values.
    #[error("noise was drawn for {drawn} values, not {given}")]
    Length {
        /// Values it was drawn for.
        drawn: usize,
        /// Values given.
        given: usize,
    },
    /// Clipping refused the update.
    #[error(transparent)]
    Clip(#[from] ClipError),
    /// The noised values do not fit the update's layout (a bug, not a property of the input).
    #[error(transparent)]
    Layout(#[from] TensorError),
    /// opendp failed: its secure randomness (OpenSSL) reported an error, or its measurement was refused.
    #[error("opendp: {context}")]
    Opendp {
        /// What was being done.
        context: &'static str,
        /// opendp's error.
        #[source]
        source: opendp::error::Error,
    },
}

/// Client-level DP settings of a task: the `[privacy]` table of `fl.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoiseConfig {
    /// L2 norm every update is clipped to, `C` (default 1.0; the unit of the update's values).
    pub clip_norm: f64,
    /// Noise standard deviation as a multiple of `clip_norm`, `z` (default 1.0; 0 disables noise and privacy).
    pub noise_multiplier: f64,
    /// Number of nodes whose noise adds up in a securely aggregated sum; each adds `z·C/√n` (default absent: each adds `z·C`).
    pub nodes: Option<u32>,
}

impl Default for NoiseConfig {
    fn default() -> Self {
        NoiseConfig {
            clip_norm: 1.0,
            noise_multiplier: 1.0,
            nodes: None,
        }
    }
}

impl NoiseConfig {
    /// Clip norm `C` and noise multiplier `z`, noise added in full by each node.
    pub fn new(clip_norm: f64, noise_multiplier: f64) -> Self {
        NoiseConfig {
            clip_norm,
            noise_multiplier,
            nodes: None,
        }
    }

    /// The same settings with the noise split over `nodes` nodes (secure aggregation).
    pub fn distributed(self, nodes: u32) -> Self {
        NoiseConfig {
            nodes: Some(nodes),
            ..self
        }
    }

    /// Refuses a config that cannot be applied, naming the field.
    pub fn validate(&self) -> Result<(), NoiseError> {
        let refuse = |field, value: String, reason| {
            Err(NoiseError::Config {
                field,
                value,
                reason,
            })
        };
        if clip::check_clip_norm(self.clip_norm).is_err() {
            return refuse(
                "clip_norm",
                self.clip_norm.to_string(),
                "must be finite and at least 1e-30",
            );
        }
        let z = self.noise_multiplier;
        if !z.is_finite() || z < 0.0 {
            return refuse(
                "noise_multiplier",
                z.to_string(),
                "must be finite and at least 0",
            );
        }
        if z > 0.0 && z < MIN_NOISE_MULTIPLIER {
            return refuse(
                "noise_multiplier",
                z.to_string(),
                "must be 0 or at least 2^-40",
            );
        }
        if !(z * self.clip_norm).is_finite() {
            return refuse(
                "noise_multiplier",
                z.to_string(),
                "times clip_norm must be finite",
            );
        }
        if self.nodes == Some(0) {
            return refuse("nodes", "0".into(), "must be at least 1, or absent");
        }
        Ok(())
    }

    /// Standard deviation of the noise in the aggregate, `z·C`.
    pub fn total_std_dev(&self) -> f64 {
        self.noise_multiplier * self.clip_norm
    }

    /// Standard deviation each node adds, `z·C/√n` (`z·C` without `nodes`).
    pub fn node_std_dev(&self) -> f64 {
        match self.nodes {
            Some(n) if n > 1 => self.total_std_dev() / f64::from(n).sqrt(),
            _ => self.total_std_dev(),
        }
    }
}

/// What privatising one update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Privatized {
    /// Clipping: the norm before and the factor applied.
    pub clip: Clipped,
    /// Standard deviation of the noise this node added per coordinate (at most 2⁻⁴⁰ relatively above the config's).
    pub noise_std_dev: f64,
    /// Spacing of the grid the noise lives on (0 without noise).
    pub granularity: f64,
}

/// Clips a flat update in place to `config.clip_norm` and adds this node's Gaussian noise.
pub fn privatize_flat(values: &mut [f32], config: &NoiseConfig) -> Result<Privatized, NoiseError> {
    let noise = GaussianNoise::from_config(config)?;
    let clip = clip::clip_flat(values, config.clip_norm)?;
    noise.add_to(values)?;
    Ok(noise.report(clip))
}

/// Clips an update bundle to `config.clip_norm` and adds this node's Gaussian noise; names and metadata are kept.
pub fn privatize(
    update: &Bundle,
    config: &NoiseConfig,
) -> Result<(Bundle, Privatized), NoiseError> {
    let noise = GaussianNoise::from_config(config)?;
    let (mut flat, clip) = clip::clip_bundle_flat(update, config.clip_norm)?;
    noise.add_to(&mut flat)?;
    Ok((update.with_flat(&flat)?, noise.report(clip)))
}

/// Discrete Gaussian noise on a power-of-two grid, drawn from opendp's secure randomness.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaussianNoise {
    /// `None` when the standard deviation is 0.
    grid: Option<Grid>,
    /// Most threads [`GaussianNoise::add_to`] may use.
    max_threads: usize,
}

/// The grid `2^exp` and the noise's scale `steps` in grid steps.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Grid {
    exp: i32,
    steps: u64,
}

impl GaussianNoise {
    /// Noise of standard deviation `std_dev` (0: none) per coordinate.
    pub fn new(std_dev: f64) -> Result<Self, NoiseError> {
        if std_dev == 0.0 {
            return Ok(GaussianNoise {
                grid: None,
                max_threads: MAX_THREADS,
            });
        }
        if !std_dev.is_normal() || std_dev < 0.0 {
            return Err(NoiseError::StdDev { value: std_dev });
        }
        // A normal positive f64's binary exponent is ⌊log₂ σ⌋.
        let log2 = ((std_dev.to_bits() >> 52) & 0x7ff) as i32 - 1023;
        let exp = log2 - GRID_BITS;
        // σ·2^-exp is in [2^40, 2^41): exact (a power-of-two scaling), and so is its ceiling.
        let steps = pow2_scale(std_dev, -exp).ceil() as u64;
        Ok(GaussianNoise {
            grid: Some(Grid { exp, steps }),
            max_threads: MAX_THREADS,
        })
    }

    /// The same noise drawn on at most `threads` threads (default: the available parallelism, at most 8; 0 and 1 mean the calling thread).
    pub fn with_threads(self, threads: usize) -> Self {
        GaussianNoise {
            max_threads: threads.max(1),
            ..self
        }
    }

    /// The noise one node adds under `config` (validated first).
    pub fn from_config(config: &NoiseConfig) -> Result<Self, NoiseError> {
        config.validate()?;
        Self::new(config.node_std_dev())
    }

    /// The standard deviation actually used: `⌈σ/2^k⌉·2^k`.
    pub fn std_dev(&self) -> f64 {
        self.grid.map_or(0.0, |g| pow2_scale(g.steps as f64, g.exp))
    }

    /// The grid spacing `2^k` (0 without noise).
    pub fn granularity(&self) -> f64 {
        self.grid.map_or(0.0, |g| pow2_scale(1.0, g.exp))
    }

    /// How much rounding `len` values to the grid can widen their L2 sensitivity: `2^k·√len`.
    pub fn rounding_slack(&self, len: usize) -> f64 {
        self.granularity() * (len as f64).sqrt()
    }

    /// Adds noise to every value in place (threads for large inputs); on an error the values are left as they were.
    pub fn add_to(&self, values: &mut [f32]) -> Result<(), NoiseError> {
        self.check(values)?;
        self.draw(values.len())?.add_to(values)
    }

    /// Refuses values the grid cannot hold: NaN, infinite, or beyond 2⁶⁰ standard deviations.
    fn check(&self, values: &[f32]) -> Result<(), NoiseError> {
        if self.grid.is_none() {
            return Ok(());
        }
        let limit = MAX_VALUE_IN_STD_DEVS * self.std_dev();
        for (index, &value) in values.iter().enumerate() {
            if !value.is_finite() {
                return Err(NoiseError::NonFinite { index, value });
            }
            if f64::from(value).abs() > limit {
                return Err(NoiseError::OutOfRange {
                    index,
                    value,
                    std_dev: self.std_dev(),
                });
            }
        }
        Ok(())
    }

    /// Draws the noise for `len` values ahead of the values themselves (threads for large
    /// inputs), so that it can be drawn while they are still being computed.
    pub fn draw(&self, len: usize) -> Result<DrawnNoise, NoiseError> {
        let Some(grid) = self.grid else {
            return Ok(DrawnNoise {
                grid: None,
                std_dev: 0.0,
                steps: Vec::new(),
                len,
            });
        };
        let mut steps = vec![0i128; len];
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(self.max_threads)
            .min(len / MIN_VALUES_PER_THREAD)
            .max(1);
        if threads == 1 {
            draw_chunk(&mut steps, grid)?;
        } else {
            let chunk = len.div_ceil(threads);
            std::thread::scope(|scope| {
                let handles: Vec<_> = steps
                    .chunks_mut(chunk)
                    .map(|part| scope.spawn(move || draw_chunk(part, grid)))
                    .collect();
                let mut result = Ok(());
                for handle in handles {
                    let r = handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    if result.is_ok() {
                        result = r;
                    }
                }
                result
            })?;
        }
        Ok(DrawnNoise {
            grid: Some(grid),
            std_dev: self.std_dev(),
            steps,
            len,
        })
    }

    /// Adds the same noise through opendp's own `make_gaussian` (exact rationals, about 13 µs per value): the reference for cross-checks.
    pub fn add_to_with_make_gaussian(&self, values: &mut [f32]) -> Result<(), NoiseError> {
        let Some(grid) = self.grid else {
            return Ok(());
        };
        if let Some((index, value)) = clip::first_non_finite(values) {
            return Err(NoiseError::NonFinite { index, value });
        }
        let domain = VectorDomain::new(AtomDomain::<f32>::new_non_nan()).with_size(values.len());
        let measurement = make_gaussian::<_, _, ZeroConcentratedDivergence>(
            domain,
            L2Distance::<f64>::default(),
            self.std_dev(),
            Some(grid.exp),
        )
        .map_err(|source| NoiseError::Opendp {
            context: "building make_gaussian",
            source,
        })?;
        let noised = measurement
            .invoke(&values.to_vec())
            .map_err(|source| NoiseError::Opendp {
                context: "sampling make_gaussian",
                source,
            })?;
        values.copy_from_slice(&noised);
        Ok(())
    }

    fn report(&self, clip: Clipped) -> Privatized {
        Privatized {
            clip,
            noise_std_dev: self.std_dev(),
            granularity: self.granularity(),
        }
    }
}

/// `x·2^e`, exact unless the result overflows or is subnormal; `e` may exceed the `f64` exponent range.
fn pow2_scale(x: f64, e: i32) -> f64 {
    let half = e / 2;
    x * pow2(half) * pow2(e - half)
}

/// `2^e` for `e` in `-1022..=1023`.
fn pow2(e: i32) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// Fills `out` with discrete-Gaussian integers of scale `grid.steps`.
fn draw_chunk(out: &mut [i128], grid: Grid) -> Result<(), NoiseError> {
    let mut bits = RandomBits::new();
    for v in out.iter_mut() {
        *v = bits.discrete_gaussian(grid.steps)?;
    }
    Ok(())
}

/// Noise drawn for a number of values before they are known ([`GaussianNoise::draw`]): one
/// discrete-Gaussian integer of grid steps per value. It is added once ([`DrawnNoise::add_to`]
/// consumes it) and zeroed when dropped: noise that can be read back can be subtracted.
pub struct DrawnNoise {
    /// `None` when the standard deviation is 0.
    grid: Option<Grid>,
    std_dev: f64,
    steps: Vec<i128>,
    len: usize,
}

impl std::fmt::Debug for DrawnNoise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrawnNoise")
            .field("len", &self.len)
            .field("std_dev", &self.std_dev)
            .finish_non_exhaustive()
    }
}

impl DrawnNoise {
    /// The number of values it was drawn for.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it was drawn for no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds it to `values` (exactly as many as it was drawn for): each value rounded to the
    /// grid, its integer added, the sum converted back. On an error the values are left as
    /// they were.
    pub fn add_to(self, values: &mut [f32]) -> Result<(), NoiseError> {
        if values.len() != self.len {
            return Err(NoiseError::Length {
                drawn: self.len,
                given: values.len(),
            });
        }
        let Some(grid) = self.grid else {
            return Ok(());
        };
        GaussianNoise {
            grid: Some(grid),
            max_threads: 1,
        }
        .check(values)?;
        let (down, up) = (-grid.exp, grid.exp);
        let mut out = Vec::with_capacity(values.len());
        for (i, (&v, &noise)) in values.iter().zip(&self.steps).enumerate() {
            // Exact: a power-of-two scaling of a value below 2^101 steps, then rounding.
            let x = pow2_scale(f64::from(v), down).round() as i128;
            let noised = pow2_scale((x + noise) as f64, up) as f32;
            if !noised.is_finite() {
                return Err(NoiseError::OutOfRange {
                    index: i,
                    value: v,
                    std_dev: self.std_dev,
                });
            }
            out.push(noised);
        }
        values.copy_from_slice(&out);
        Ok(())
    }
}

impl Drop for DrawnNoise {
    fn drop(&mut self) {
        self.steps.fill(0);
        std::hint::black_box(&self.steps);
    }
}

/// Random bits from opendp's secure source (`fill_bytes`, OpenSSL's `RAND_priv_bytes`), drawn in blocks.
struct RandomBits {
    block: Box<[u8]>,
    at: usize,
    word: u64,
    left: u32,
}

impl RandomBits {
    fn new() -> Self {
        RandomBits {
            block: vec![0; RANDOM_BLOCK].into_boxed_slice(),
            at: RANDOM_BLOCK,
            word: 0,
            left: 0,
        }
    }

    /// 64 fresh random bits.
    #[inline]
    fn word(&mut self) -> Result<u64, NoiseError> {
        if self.at == self.block.len() {
            fill_bytes(&mut self.block).map_err(|source| NoiseError::Opendp {
                context: "drawing secure random bytes",
                source,
            })?;
            self.at = 0;
        }
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.block[self.at..self.at + 8]);
        self.at += 8;
        Ok(u64::from_le_bytes(w))
    }

    /// One fresh random bit.
    #[inline]
    fn bit(&mut self) -> Result<bool, NoiseError> {
        if self.left == 0 {
            self.word = self.word()?;
            self.left = 64;
        }
        let b = self.word & 1 == 1;
        self.word >>= 1;
        self.left -= 1;
        Ok(b)
    }

    /// Uniform on `[0, m)`, `m ≥ 1` (Lemire 2019: multiply, reject the biased low part).
    #[inline]
    fn below(&mut self, m: u64) -> Result<u64, NoiseError> {
        let mut product = u128::from(self.word()?) * u128::from(m);
        if (product as u64) < m {
            let threshold = m.wrapping_neg() % m;
            while (product as u64) < threshold {
                product = u128::from(self.word()?) * u128::from(m);
            }
        }
        Ok((product >> 64) as u64)
    }

    /// Bernoulli(a/b) for `b ≤ 2^126`: compares the binary expansion of a/b with random bits until they differ.
    #[inline]
    fn ratio(&mut self, a: u128, b: u128) -> Result<bool, NoiseError> {
        if a >= b {
            return Ok(true);
        }
        let mut rest = a;
        while rest != 0 {
            rest <<= 1;
            let p_bit = rest >= b;
            if p_bit {
                rest -= b;
            }
            if self.bit()? != p_bit {
                // The uniform is below a/b exactly when a/b has the 1.
                return Ok(p_bit);
            }
        }
        // a/b's expansion ended: the uniform is not below it (equality has probability 0).
        Ok(false)
    }

    /// Bernoulli(exp(−a/b)) for `a ≤ b` (CKS20, Algorithm 1).
    #[inline]
    fn exp_minus_frac(&mut self, a: u128, b: u128) -> Result<bool, NoiseError> {
        let mut k: u128 = 1;
        loop {
            let hit = match b.checked_mul(k) {
                Some(bk) if bk <= MAX_DENOMINATOR => self.ratio(a, bk)?,
                _ => self.ratio(a, b)? && self.ratio(1, k)?,
            };
            if !hit {
                return Ok(k % 2 == 1);
            }
            k += 1;
        }
    }

    /// Bernoulli(e⁻¹): compares fresh random bits with e⁻¹'s binary expansion ([`INV_E`]),
    /// most significant first, until they differ (2 bits expected, against about 7 for
    /// [`RandomBits::exp_minus_frac`]`(1, 1)`). Should the first 128 bits all agree
    /// (probability 2⁻¹²⁸) it draws Bernoulli(e⁻¹) afresh by CKS20, a departure from the exact
    /// law of at most 2⁻¹²⁸ in total variation.
    #[inline]
    fn inverse_e(&mut self) -> Result<bool, NoiseError> {
        for at in (0..128).rev() {
            let p_bit = (INV_E >> at) & 1 == 1;
            if self.bit()? != p_bit {
                // The uniform is below e⁻¹ exactly when e⁻¹ has the 1.
                return Ok(p_bit);
            }
        }
        self.exp_minus_frac(1, 1)
    }

    /// Bernoulli(exp(−num/den)) for any `num`, `den ≥ 1` (CKS20, Algorithm 1).
    fn exp_minus(&mut self, num: u128, den: u128) -> Result<bool, NoiseError> {
        let (whole, rest) = (num / den, num % den);
        let mut i = 0;
        while i < whole {
            if !self.inverse_e()? {
                return Ok(false);
            }
            i += 1;
        }
        self.exp_minus_frac(rest, den)
    }

    /// Discrete Laplace of scale `t ≥ 1`, `P(x) ∝ exp(−|x|/t)`, as (negative, magnitude) (CKS20, Algorithm 2).
    fn discrete_laplace(&mut self, t: u64) -> Result<(bool, u128), NoiseError> {
        loop {
            let u = self.below(t)?;
            if !self.exp_minus_frac(u128::from(u), u128::from(t))? {
                continue;
            }
            let mut v: u64 = 0;
            while self.inverse_e()? {
                v += 1;
            }
            let negative = self.bit()?;
            let magnitude = u128::from(u) + u128::from(t) * u128::from(v);
            if negative && magnitude == 0 {
                continue;
            }
            return Ok((negative, magnitude));
        }
    }

    /// Discrete Gaussian `N_Z(0, s²)`, `s ≥ 1` (CKS20, Algorithm 3 with Laplace scale `t = s`).
    fn discrete_gaussian(&mut self, steps: u64) -> Result<i128, NoiseError> {
        let s = u128::from(steps);
        let den = 2 * s * s;
        loop {
            let (negative, magnitude) = self.discrete_laplace(steps)?;
            // Accept with probability exp(−(|y| − σ²/t)² / 2σ²), σ = t = s.
            let d = magnitude.abs_diff(s);
            if d >= MAX_DEVIATION {
                continue;
            }
            if self.exp_minus(d * d, den)? {
                let y = magnitude as i128;
                return Ok(if negative { -y } else { y });
            }
        }
    }
}

impl Drop for RandomBits {
    fn drop(&mut self) {
        // Unused random bytes would tell how the next noise was drawn; do not leave them in freed memory.
        self.block.fill(0);
        self.word = 0;
        std::hint::black_box(&self.block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// χ² of `n` draws of N_Z(0, s²) against the exact probabilities, over cells expecting at least 50, and the number of cells.
    fn chi_square(s: u64, n: usize) -> (f64, usize) {
        let mut bits = RandomBits::new();
        let mut counts = std::collections::BTreeMap::<i128, u64>::new();
        for _ in 0..n {
            *counts
                .entry(bits.discrete_gaussian(s).unwrap())
                .or_default() += 1;
        }
        let sf = s as f64;
        let weight = |y: i128| (-((y * y) as f64) / (2.0 * sf * sf)).exp();
        let total: f64 = (-400i128..=400).map(weight).sum();
        let (mut chi2, mut cells) = (0.0, 0);
        for y in -400i128..=400 {
            let expected = weight(y) / total * n as f64;
            if expected >= 50.0 {
                let observed = *counts.get(&y).unwrap_or(&0) as f64;
                chi2 += (observed - expected).powi(2) / expected;
                cells += 1;
            }
        }
        (chi2, cells)
    }

    #[test]
    fn discrete_gaussian_matches_exact_probabilities() {
        // χ² with ~9 to 25 degrees of freedom; 70 is beyond the 1e-6 quantile of each.
        for s in [1, 2, 3] {
            let (chi2, cells) = chi_square(s, 200_000);
            assert!(chi2 < 70.0, "s = {s}: chi2 {chi2} over {cells} cells");
        }
    }

    /// For `perf stat`: one update's worth of noise on one thread.
    #[test]
    #[ignore = "a measurement"]
    fn noise_for_one_update_on_one_thread() {
        let mut v = vec![0.0f32; 1_756_426];
        GaussianNoise::new(1.0)
            .unwrap()
            .with_threads(1)
            .add_to(&mut v)
            .unwrap();
        assert!(v.iter().any(|&x| x != 0.0));
    }

    #[test]
    fn bernoulli_ratio_has_its_probability() {
        let mut bits = RandomBits::new();
        let n = 200_000;
        for (a, b) in [(1u128, 3u128), (2, 7), (5, 8), (0, 5), (9, 9)] {
            let hits = (0..n).filter(|_| bits.ratio(a, b).unwrap()).count();
            let p = a as f64 / b as f64;
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            let got = hits as f64 / n as f64;
            assert!((got - p).abs() <= 6.0 * sd + 1e-12, "{a}/{b}: {got}");
        }
        let hits = (0..n).filter(|_| bits.exp_minus(3, 2).unwrap()).count();
        let p = (-1.5f64).exp();
        assert!((hits as f64 / n as f64 - p).abs() < 6.0 * (p * (1.0 - p) / n as f64).sqrt());
    }

    #[test]
    fn inverse_e_has_its_bits_and_its_probability() {
        // ⌊e⁻¹ 2¹²⁸⌋ from the series in 2¹²⁸ fixed point: 34 terms take 1/k! below 2⁻¹²⁸.
        let mut sum: i128 = 0;
        let mut term: u128 = u128::MAX; // about 2¹²⁸ / 0!
        for k in 0..34u128 {
            term = term.checked_div(k).unwrap_or(term);
            let t = (term >> 1) as i128; // halved to fit i128: the sum is of e⁻¹ 2¹²⁷
            sum += if k % 2 == 0 { t } else { -t };
        }
        let from_series = (sum as u128) << 1;
        assert!(
            from_series.abs_diff(INV_E) < 1 << 8,
            "{from_series:x} against {INV_E:x}"
        );
        let mut bits = RandomBits::new();
        let n = 400_000;
        let hits = (0..n).filter(|_| bits.inverse_e().unwrap()).count();
        let p = (-1.0f64).exp();
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        assert!((hits as f64 / n as f64 - p).abs() < 6.0 * sd);
    }

    #[test]
    fn uniform_below_covers_its_range_evenly() {
        let mut bits = RandomBits::new();
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[bits.below(3).unwrap() as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_400..10_600).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(bits.below(1).unwrap(), 0);
    }

    #[test]
    fn grid_puts_sigma_between_2_40_and_2_41_steps() {
        for sigma in [1.0, 0.7, 3.3e-5, 123456.0, f64::MIN_POSITIVE] {
            let noise = GaussianNoise::new(sigma).unwrap();
            let g = noise.grid.unwrap();
            assert!((1u64 << 40..=1u64 << 41).contains(&g.steps), "{sigma}");
            assert!(noise.std_dev() >= sigma);
            assert!(noise.std_dev() <= sigma * (1.0 + 1e-12));
            assert_eq!(noise.granularity(), pow2_scale(1.0, g.exp));
        }
        assert_eq!(GaussianNoise::new(1.0).unwrap().std_dev(), 1.0);
        assert_eq!(GaussianNoise::new(0.0).unwrap().std_dev(), 0.0);
        for bad in [-1.0, f64::NAN, f64::INFINITY, 1e-320] {
            assert!(matches!(
                GaussianNoise::new(bad),
                Err(NoiseError::StdDev { .. })
            ));
        }
    }

    #[test]
    fn pow2_scale_reaches_beyond_the_exponent_range() {
        assert_eq!(pow2_scale(pow2_scale(3.0, 1020), -1020), 3.0);
        assert_eq!(pow2_scale(3.0, 1020), 3.0 * pow2(1000) * pow2(20));
        assert_eq!(pow2_scale(pow2_scale(3.0, -1050), 1050), 3.0);
        assert_eq!(pow2_scale(3.0, -1060), 3.0 * pow2(-1000) * pow2(-60));
        assert_eq!(pow2_scale(1.0, 0), 1.0);
        assert_eq!(pow2_scale(0.75, 3), 6.0);
    }

    #[test]
    fn noise_is_on_the_grid_and_not_repeated() {
        let noise = GaussianNoise::new(1.0).unwrap();
        let mut a = vec![0.0f32; 1000];
        let mut b = a.clone();
        noise.add_to(&mut a).unwrap();
        noise.add_to(&mut b).unwrap();
        assert_ne!(a, b, "two draws must differ: there is no seed");
        let g = noise.granularity();
        assert!(a.iter().all(|&v| (f64::from(v) / g).fract() == 0.0));
    }

    #[test]
    fn config_round_trips_and_refuses_unknown_fields() {
        let c = NoiseConfig::new(0.5, 1.1).distributed(4);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<NoiseConfig>(&json).unwrap(), c);
        let partial: NoiseConfig = serde_json::from_str(r#"{"clip_norm": 2.0}"#).unwrap();
        assert_eq!(partial, NoiseConfig::new(2.0, 1.0));
        assert!(serde_json::from_str::<NoiseConfig>(r#"{"clip": 2.0}"#).is_err());
    }
}
