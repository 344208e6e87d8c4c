//! Poisson sampling for DP-SGD: each step's batch takes every example independently with
//! probability `q`, the sampling the [accountant](super::accountant)'s subsampled Gaussian
//! assumes. The draws come from opendp's secure randomness (OpenSSL `RAND_priv_bytes`), not
//! from a seed: the amplification by sampling holds only while nobody can tell which
//! examples a step used, and a task's seed is public.

use opendp::traits::samplers::fill_bytes;

/// Bytes drawn from the secure source per call (a call costs about 0.5 µs).
const RANDOM_BLOCK: usize = 1 << 13;

/// Why a batch cannot be drawn.
#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    /// The rate is not a probability in (0, 1].
    #[error("sampling rate must be in (0, 1], got {0}")]
    Rate(f64),
    /// The secure random source failed.
    #[error("drawing secure random bytes for Poisson sampling: {0}")]
    Random(String),
}

/// Draws Poisson-sampled batches of example indices.
#[derive(Debug)]
pub struct PoissonSampler {
    rate: f64,
    /// An example is taken when its 64 random bits are below this (`None`: always, q = 1).
    threshold: Option<u64>,
    block: Vec<u8>,
    at: usize,
}

impl PoissonSampler {
    /// A sampler that takes each example with probability `rate`.
    pub fn new(rate: f64) -> Result<Self, SamplingError> {
        if !(rate > 0.0 && rate <= 1.0) {
            return Err(SamplingError::Rate(rate));
        }
        // q·2⁶⁴ rounded down: the probability is q to within 2⁻⁶⁴.
        let threshold = (rate < 1.0).then(|| (rate * 2f64.powi(64)) as u64);
        Ok(PoissonSampler {
            rate,
            threshold,
            block: vec![0; RANDOM_BLOCK],
            at: RANDOM_BLOCK,
        })
    }

    /// The sampling rate q.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The indices, in increasing order, of the examples among `0..n` that this step takes.
    pub fn sample(&mut self, n: usize) -> Result<Vec<usize>, SamplingError> {
        let Some(threshold) = self.threshold else {
            return Ok((0..n).collect());
        };
        let mut taken = Vec::with_capacity((self.rate * n as f64 * 1.2) as usize + 8);
        for i in 0..n {
            if self.word()? < threshold {
                taken.push(i);
            }
        }
        Ok(taken)
    }

    fn word(&mut self) -> Result<u64, SamplingError> {
        if self.at + 8 > self.block.len() {
            fill_bytes(&mut self.block).map_err(|e| SamplingError::Random(e.to_string()))?;
            self.at = 0;
        }
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&self.block[self.at..self.at + 8]);
        self.at += 8;
        Ok(u64::from_le_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_have_the_expected_size_and_vary() {
        let mut sampler = PoissonSampler::new(0.1).unwrap();
        let draws: Vec<Vec<usize>> = (0..50).map(|_| sampler.sample(1000).unwrap()).collect();
        let mean = draws.iter().map(Vec::len).sum::<usize>() as f64 / 50.0;
        // Binomial(1000, 0.1): sd 9.5 per batch, 1.3 for the mean of 50.
        assert!((mean - 100.0).abs() < 8.0, "mean batch {mean}");
        assert_ne!(draws[0], draws[1]);
        for d in &draws {
            assert!(d.windows(2).all(|w| w[0] < w[1]) && d.iter().all(|&i| i < 1000));
        }
    }

    #[test]
    fn rate_one_takes_everything_and_bad_rates_are_refused() {
        let mut all = PoissonSampler::new(1.0).unwrap();
        assert_eq!(all.sample(5).unwrap(), vec![0, 1, 2, 3, 4]);
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(PoissonSampler::new(bad).is_err(), "{bad}");
        }
    }
}
