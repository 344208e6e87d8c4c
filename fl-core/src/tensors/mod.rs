//! Tensor bundles: a model or an update as named float32 tensors, stored as one
//! safetensors file whose names and layouts follow PyTorch's `state_dict`, so that
//! `safetensors.torch.load_file` gives a ready state dict.
//!
//! Tensors are kept sorted by name: that is the fixed order of [`Bundle::flatten`], so
//! every node and every verifier sees the same flat vector.

use std::collections::BTreeMap;

mod stored;
pub use stored::{MAX_BUNDLE_BYTES, StoredError};

use safetensors::{Dtype, SafeTensors};

/// Why tensors do not fit together or a file is not a valid bundle.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    /// A tensor the layout needs is absent.
    #[error("tensor {name} is missing")]
    Missing {
        /// Its name.
        name: String,
    },
    /// A tensor the layout does not have is present.
    #[error("tensor {name} is not part of the model")]
    Unexpected {
        /// Its name.
        name: String,
    },
    /// A tensor has the wrong shape.
    #[error("tensor {name} is {actual:?}, expected {expected:?}")]
    Shape {
        /// Its name.
        name: String,
        /// The layout's shape.
        expected: Vec<usize>,
        /// The shape found.
        actual: Vec<usize>,
    },
    /// A tensor's data does not match its shape.
    #[error("tensor {name} has {len} values but its shape {shape:?} needs {needed}")]
    Length {
        /// Its name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Values given.
        len: usize,
        /// Values the shape needs.
        needed: usize,
    },
    /// A tensor is not float32.
    #[error("tensor {name} is {dtype}, expected F32")]
    Dtype {
        /// Its name.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// A flat vector has the wrong length for the layout.
    #[error("flat vector has {actual} values, the layout needs {expected}")]
    FlatLength {
        /// Values the layout needs.
        expected: usize,
        /// Values given.
        actual: usize,
    },
    /// The bytes are not a safetensors file.
    #[error("not a valid safetensors file: {0}")]
    Format(String),
}

/// One named float32 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Its shape, outermost dimension first (PyTorch's order).
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub data: Vec<f32>,
}

/// Named tensors plus string metadata (architecture, round, base model CID, samples).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bundle {
    tensors: BTreeMap<String, Tensor>,
    metadata: BTreeMap<String, String>,
}

impl Bundle {
    /// An empty bundle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a tensor, checking that the data fills the shape.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        shape: Vec<usize>,
        data: Vec<f32>,
    ) -> Result<(), TensorError> {
        let name = name.into();
        let needed: usize = shape.iter().product();
        if needed != data.len() {
            return Err(TensorError::Length {
                name,
                shape,
                len: data.len(),
                needed,
            });
        }
        self.tensors.insert(name, Tensor { shape, data });
        Ok(())
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// The tensors, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total number of values (the model's parameter count).
    pub fn num_values(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }

    /// The metadata.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Sets one metadata entry.
    pub fn set_metadata(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.metadata.insert(key.into(), value.into());
    }

    /// Checks that `other` has exactly this bundle's tensor names and shapes.
    pub fn check_layout(&self, other: &Bundle) -> Result<(), TensorError> {
        for (name, t) in &self.tensors {
            let o = other
                .tensors
                .get(name)
                .ok_or_else(|| TensorError::Missing { name: name.clone() })?;
            if o.shape != t.shape {
                return Err(TensorError::Shape {
                    name: name.clone(),
                    expected: t.shape.clone(),
                    actual: o.shape.clone(),
                });
            }
        }
        if let Some(name) = other
            .tensors
            .keys()
            .find(|n| !self.tensors.contains_key(*n))
        {
            return Err(TensorError::Unexpected { name: name.clone() });
        }
        Ok(())
    }

    /// All values in one vector, tensors in name order.
    pub fn flatten(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.num_values());
        for t in self.tensors.values() {
            out.extend_from_slice(&t.data);
        }
        out
    }

    /// A bundle with this one's layout and metadata and the values of `flat`.
    pub fn with_flat(&self, flat: &[f32]) -> Result<Bundle, TensorError> {
        if flat.len() != self.num_values() {
            return Err(TensorError::FlatLength {
                expected: self.num_values(),
                actual: flat.len(),
            });
        }
        let mut at = 0;
        let tensors = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let n = t.data.len();
                let data = flat[at..at + n].to_vec();
                at += n;
                (
                    name.clone(),
                    Tensor {
                        shape: t.shape.clone(),
                        data,
                    },
                )
            })
            .collect();
        Ok(Bundle {
            tensors,
            metadata: self.metadata.clone(),
        })
    }

    /// `self - other`, tensor by tensor (an update: local minus global).
    pub fn sub(&self, other: &Bundle) -> Result<Bundle, TensorError> {
        self.check_layout(other)?;
        let a = self.flatten();
        let b = other.flatten();
        let diff: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
        self.with_flat(&diff)
    }

    /// The safetensors bytes of this bundle (float32, little-endian, metadata in the
    /// header). Written here rather than by `safetensors::serialize`, whose header takes
    /// metadata from a `HashMap` and so orders its keys differently from run to run: the
    /// same bundle must always give the same bytes, hence the same CID. Keys are sorted;
    /// the layout is the format's own (`__metadata__` first, then tensors in name order,
    /// header padded with spaces to 8 bytes), so every safetensors reader accepts it.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, TensorError> {
        let mut header = serde_json::Map::new();
        if !self.metadata.is_empty() {
            let meta: serde_json::Map<String, serde_json::Value> = self
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            header.insert("__metadata__".into(), serde_json::Value::Object(meta));
        }
        let mut offset = 0usize;
        for (name, t) in &self.tensors {
            let len = t.data.len() * 4;
            header.insert(
                name.clone(),
                serde_json::json!({ "dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + len] }),
            );
            offset += len;
        }
        let mut json = serde_json::to_vec(&serde_json::Value::Object(header))
            .map_err(|e| TensorError::Format(e.to_string()))?;
        while json.len() % 8 != 0 {
            json.push(b' ');
        }
        let mut out = Vec::with_capacity(8 + json.len() + offset);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        for t in self.tensors.values() {
            for v in &t.data {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Ok(out)
    }

    /// Reads a safetensors file of float32 tensors.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Bundle, TensorError> {
        let file =
            SafeTensors::deserialize(bytes).map_err(|e| TensorError::Format(e.to_string()))?;
        let (_, meta) =
            SafeTensors::read_metadata(bytes).map_err(|e| TensorError::Format(e.to_string()))?;
        let mut bundle = Bundle::new();
        for (name, view) in file.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(TensorError::Dtype {
                    name,
                    dtype: format!("{:?}", view.dtype()),
                });
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            bundle.insert(name, view.shape().to_vec(), data)?;
        }
        if let Some(m) = meta.metadata() {
            bundle.metadata = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        Ok(bundle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bundle {
        let mut b = Bundle::new();
        b.insert("fc1.weight", vec![2, 3], vec![1., 2., 3., 4., 5., 6.])
            .unwrap();
        b.insert("fc1.bias", vec![2], vec![0.5, -0.5]).unwrap();
        b.set_metadata("architecture", "test");
        b
    }

    #[test]
    fn safetensors_round_trip_keeps_names_shapes_values_and_metadata() {
        let b = sample();
        let bytes = b.to_safetensors().unwrap();
        assert_eq!(Bundle::from_safetensors(&bytes).unwrap(), b);
    }

    #[test]
    fn the_same_bundle_always_gives_the_same_bytes() {
        let mut b = sample();
        for k in ["round", "base", "samples", "format", "zeta"] {
            b.set_metadata(k, k.to_uppercase());
        }
        let first = b.to_safetensors().unwrap();
        for _ in 0..20 {
            assert_eq!(b.clone().to_safetensors().unwrap(), first);
        }
        // The format's own reader accepts it.
        let parsed = safetensors::SafeTensors::deserialize(&first).unwrap();
        assert_eq!(parsed.tensors().len(), 2);
    }

    #[test]
    fn flatten_is_in_name_order_and_inverts() {
        let b = sample();
        assert_eq!(b.flatten(), vec![0.5, -0.5, 1., 2., 3., 4., 5., 6.]);
        assert_eq!(b.with_flat(&b.flatten()).unwrap(), b);
        assert!(matches!(
            b.with_flat(&[1.0]),
            Err(TensorError::FlatLength { .. })
        ));
    }

    #[test]
    fn layout_errors_name_the_tensor_and_both_shapes() {
        let b = sample();
        let mut wrong = sample();
        wrong.insert("fc1.weight", vec![3, 2], vec![0.; 6]).unwrap();
        let err = b.check_layout(&wrong).unwrap_err().to_string();
        assert_eq!(err, "tensor fc1.weight is [3, 2], expected [2, 3]");
        let mut missing = Bundle::new();
        missing
            .insert("fc1.weight", vec![2, 3], vec![0.; 6])
            .unwrap();
        assert_eq!(
            b.check_layout(&missing).unwrap_err().to_string(),
            "tensor fc1.bias is missing"
        );
    }

    #[test]
    fn garbage_and_wrong_lengths_are_refused() {
        assert!(Bundle::from_safetensors(b"not safetensors").is_err());
        let mut b = Bundle::new();
        assert!(matches!(
            b.insert("x", vec![2, 2], vec![0.; 3]),
            Err(TensorError::Length { .. })
        ));
    }
}
