//! Int8 quantisation of updates: symmetric, one float32 scale per tensor, so an update
//! travels in a quarter of its float32 bytes. Only updates are quantised (DESIGN.md): a
//! model stays float32, and every node dequantises an update to the same float32 values.
//!
//! Written here because the format is this small and fixed: a value `x` of a tensor whose
//! largest magnitude is `m` is stored as `q = round(x / s)` with `s = m / 127`, and read
//! back as `q * s` (error at most `s / 2`). Rounding is to nearest, not stochastic, so the
//! same update always gives the same file and CID; under DP the Gaussian noise already
//! added is far larger than the rounding (and quantising noised values costs no privacy:
//! it is post-processing).

use serde::{Deserialize, Serialize};

/// Largest magnitude of a stored value: symmetric, so -128 is never written.
pub const LEVELS: f32 = 127.0;

/// Suffix of the float32 scalar tensor that holds a quantised tensor's scale, as in the
/// int8 checkpoints of compressed-tensors and vLLM (`conv1.weight` and `conv1.weight_scale`).
pub const SCALE_SUFFIX: &str = "_scale";

/// How a bundle's values are written to its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// Float32, exactly (models, and updates unless the task asks otherwise).
    #[default]
    F32,
    /// Int8 with a float32 scale per tensor (updates only).
    Int8,
}

impl Encoding {
    /// Whether this is plain float32 (the default, left out of task records).
    pub fn is_f32(&self) -> bool {
        *self == Encoding::F32
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoding::F32 => "f32",
            Encoding::Int8 => "int8",
        })
    }
}

/// An encoding written on a command line that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad encoding {text:?}: expected f32 or int8")]
pub struct BadEncoding {
    /// The text given.
    pub text: String,
}

impl std::str::FromStr for Encoding {
    type Err = BadEncoding;

    fn from_str(s: &str) -> Result<Self, BadEncoding> {
        match s {
            "f32" | "float32" => Ok(Encoding::F32),
            "int8" => Ok(Encoding::Int8),
            _ => Err(BadEncoding { text: s.into() }),
        }
    }
}

/// A tensor's values as int8, and the scale that turns them back into float32.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantised {
    /// The stored values, each in -127..=127.
    pub values: Vec<i8>,
    /// What one step of a stored value is worth (0 for an all-zero tensor).
    pub scale: f32,
}

/// Quantises `data`; `None` when a value is not finite (such an update is refused rather
/// than hidden in a finite scale).
pub fn quantise(data: &[f32]) -> Option<Quantised> {
    let mut max = 0f32;
    for x in data {
        if !x.is_finite() {
            return None;
        }
        max = max.max(x.abs());
    }
    if max == 0.0 {
        return Some(Quantised {
            values: vec![0; data.len()],
            scale: 0.0,
        });
    }
    let scale = max / LEVELS;
    let steps = LEVELS / max;
    let values = data
        .iter()
        .map(|x| {
            // To nearest, halves away from zero; `as` then only truncates an exact integer.
            let v = (x * steps).clamp(-LEVELS, LEVELS);
            (v + 0.5f32.copysign(v)) as i8
        })
        .collect();
    Some(Quantised { values, scale })
}

/// The float32 values `values` stand for at `scale`.
pub fn dequantise(values: &[i8], scale: f32) -> Vec<f32> {
    values.iter().map(|&q| f32::from(q) * scale).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_back_within_half_a_step() {
        let data: Vec<f32> = (0..1000)
            .map(|i| ((i as f32) * 0.37).sin() * 0.01)
            .collect();
        let q = quantise(&data).unwrap();
        let max = data.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert_eq!(q.scale, max / 127.0);
        let back = dequantise(&q.values, q.scale);
        for (x, y) in data.iter().zip(&back) {
            assert!(
                (x - y).abs() <= q.scale / 2.0 * 1.0001,
                "{x} came back as {y}"
            );
        }
        // The largest magnitude is exact up to float rounding, and its sign is kept.
        let at = data
            .iter()
            .position(|x| x.abs() == max)
            .expect("the maximum is one of the values");
        assert_eq!(q.values[at].unsigned_abs(), 127);
    }

    #[test]
    fn zeros_give_a_zero_scale_and_come_back_as_zeros() {
        let q = quantise(&[0.0; 5]).unwrap();
        assert_eq!(q.scale, 0.0);
        assert_eq!(dequantise(&q.values, q.scale), vec![0.0; 5]);
    }

    #[test]
    fn non_finite_values_are_refused() {
        assert!(quantise(&[1.0, f32::NAN]).is_none());
        assert!(quantise(&[f32::INFINITY]).is_none());
        assert!(quantise(&[f32::MAX, -f32::MAX]).is_some());
    }

    #[test]
    fn minus_128_is_never_written() {
        let q = quantise(&[-1.0, 1.0, -0.999_99]).unwrap();
        assert_eq!(q.values, vec![-127, 127, -127]);
    }

    #[test]
    fn encodings_parse_and_print() {
        for e in [Encoding::F32, Encoding::Int8] {
            assert_eq!(e.to_string().parse::<Encoding>(), Ok(e));
        }
        assert!("int4".parse::<Encoding>().is_err());
    }
}
