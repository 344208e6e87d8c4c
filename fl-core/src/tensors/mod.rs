//! Tensor bundles: a model or an update as named float32 tensors, stored as one
//! safetensors file whose names and layouts follow PyTorch's `state_dict`, so that
//! `safetensors.torch.load_file` gives a ready state dict. An update may be stored as int8
//! with a scale per tensor ([`Encoding::Int8`]); reading it back gives float32 again.
//!
//! Tensors are kept sorted by name: that is the fixed order of [`Bundle::flatten`], so
//! every node and every verifier sees the same flat vector.

use std::collections::BTreeMap;

mod quantise;
mod stored;
pub use quantise::{BadEncoding, Encoding, Quantised, SCALE_SUFFIX, dequantise, quantise};
pub use stored::{HEADER_ROOM, MAX_BUNDLE_BYTES, StoredError, read_at_most};

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
    /// A tensor is neither float32 nor int8 with a scale.
    #[error("tensor {name} is {dtype}, expected F32 (or I8 with a {name}_scale)")]
    Dtype {
        /// Its name.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// An int8 tensor's scale is missing or not a finite, non-negative float32 scalar.
    #[error("tensor {name} is I8 but its scale {name}_scale {reason}")]
    Scale {
        /// The quantised tensor.
        name: String,
        /// What is wrong with its scale.
        reason: &'static str,
    },
    /// A tensor to be quantised holds a NaN or an infinity.
    #[error("tensor {name} holds a value that is not finite: it cannot be quantised")]
    NonFinite {
        /// Its name.
        name: String,
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

    /// Every value times `factor`, metadata kept (an update of some local steps scaled to
    /// another count: FedNova's normalisation).
    pub fn scaled(&self, factor: f32) -> Bundle {
        let tensors = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let data = t.data.iter().map(|v| v * factor).collect();
                let shape = t.shape.clone();
                (name.clone(), Tensor { shape, data })
            })
            .collect();
        Bundle {
            tensors,
            metadata: self.metadata.clone(),
        }
    }

    /// The safetensors bytes of this bundle in float32 (see [`Bundle::encode`]).
    pub fn to_safetensors(&self) -> Result<Vec<u8>, TensorError> {
        self.encode(Encoding::F32)
    }

    /// The safetensors bytes of this bundle, its values written as `encoding` says
    /// (little-endian, metadata in the header). Written here rather than by
    /// `safetensors::serialize`, whose header takes metadata from a `HashMap` and so orders
    /// its keys differently from run to run: the same bundle must always give the same
    /// bytes, hence the same CID. Keys are sorted; the layout is the format's own
    /// (`__metadata__` first, header padded with spaces to 8 bytes), so every safetensors
    /// reader accepts it. Under int8 each tensor `NAME` becomes an I8 tensor of the same
    /// shape plus a float32 scalar `NAME_scale`; the scales' data comes first, so every
    /// float32 value stays 4-byte aligned.
    pub fn encode(&self, encoding: Encoding) -> Result<Vec<u8>, TensorError> {
        // (name, shape, values), in the order the data is laid out.
        let mut parts: Vec<(String, &[usize], Values<'_>)> = Vec::new();
        match encoding {
            Encoding::F32 => {
                for (name, t) in &self.tensors {
                    parts.push((name.clone(), &t.shape, Values::F32(&t.data)));
                }
            }
            Encoding::Int8 => {
                let mut values = Vec::with_capacity(self.tensors.len());
                for (name, t) in &self.tensors {
                    let q = quantise(&t.data)
                        .ok_or_else(|| TensorError::NonFinite { name: name.clone() })?;
                    let scale_name = format!("{name}{SCALE_SUFFIX}");
                    if self.tensors.contains_key(&scale_name) {
                        return Err(TensorError::Unexpected { name: scale_name });
                    }
                    parts.push((scale_name, &[], Values::Scale(q.scale)));
                    values.push((name.clone(), &t.shape[..], Values::I8(q.values)));
                }
                parts.extend(values);
            }
        }
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
        for (name, shape, values) in &parts {
            let len = values.byte_len();
            header.insert(
                name.clone(),
                serde_json::json!({ "dtype": values.dtype(), "shape": shape, "data_offsets": [offset, offset + len] }),
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
        for (_, _, values) in &parts {
            values.write_le(&mut out);
        }
        Ok(out)
    }

    /// Reads a safetensors file of float32 tensors, or of int8 tensors with their scales
    /// (as [`Bundle::encode`] writes them), which come back as float32.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Bundle, TensorError> {
        let file =
            SafeTensors::deserialize(bytes).map_err(|e| TensorError::Format(e.to_string()))?;
        let (_, meta) =
            SafeTensors::read_metadata(bytes).map_err(|e| TensorError::Format(e.to_string()))?;
        let views: BTreeMap<String, _> = file.tensors().into_iter().collect();
        // The scales of int8 tensors are not tensors of the bundle.
        let is_scale = |name: &str| {
            name.strip_suffix(SCALE_SUFFIX)
                .and_then(|base| views.get(base))
                .is_some_and(|v| v.dtype() == Dtype::I8)
        };
        let mut bundle = Bundle::new();
        for (name, view) in &views {
            let data = match view.dtype() {
                Dtype::F32 if is_scale(name) => continue,
                Dtype::F32 => f32s(view.data()),
                Dtype::I8 => {
                    let scale = int8_scale(name, views.get(&format!("{name}{SCALE_SUFFIX}")))?;
                    let values: Vec<i8> = view.data().iter().map(|&b| b as i8).collect();
                    dequantise(&values, scale)
                }
                other => {
                    return Err(TensorError::Dtype {
                        name: name.clone(),
                        dtype: format!("{other:?}"),
                    });
                }
            };
            bundle.insert(name.clone(), view.shape().to_vec(), data)?;
        }
        if let Some(m) = meta.metadata() {
            bundle.metadata = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        Ok(bundle)
    }
}

/// One tensor's values as [`Bundle::encode`] writes them.
enum Values<'a> {
    /// A float32 tensor, borrowed from the bundle.
    F32(&'a [f32]),
    /// An int8 tensor's scale (a float32 scalar).
    Scale(f32),
    /// An int8 tensor's values.
    I8(Vec<i8>),
}

impl Values<'_> {
    /// The safetensors dtype.
    fn dtype(&self) -> &'static str {
        match self {
            Values::F32(_) | Values::Scale(_) => "F32",
            Values::I8(_) => "I8",
        }
    }

    /// Bytes in the file.
    fn byte_len(&self) -> usize {
        match self {
            Values::F32(v) => v.len() * 4,
            Values::Scale(_) => 4,
            Values::I8(v) => v.len(),
        }
    }

    /// Appends the values, little-endian.
    fn write_le(&self, out: &mut Vec<u8>) {
        match self {
            Values::F32(v) => {
                let start = out.len();
                out.resize(start + v.len() * 4, 0);
                for (bytes, x) in out[start..].chunks_exact_mut(4).zip(v.iter()) {
                    bytes.copy_from_slice(&x.to_le_bytes());
                }
            }
            Values::Scale(x) => out.extend_from_slice(&x.to_le_bytes()),
            Values::I8(v) => out.extend(v.iter().map(|x| x.to_le_bytes()[0])),
        }
    }
}

/// Little-endian float32 values.
fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The scale of the int8 tensor `name`, read from its scale tensor.
fn int8_scale(
    name: &str,
    view: Option<&safetensors::tensor::TensorView<'_>>,
) -> Result<f32, TensorError> {
    let bad = |reason| TensorError::Scale {
        name: name.to_string(),
        reason,
    };
    let view = view.ok_or_else(|| bad("is missing"))?;
    if view.dtype() != Dtype::F32 || view.data().len() != 4 {
        return Err(bad("is not one float32 value"));
    }
    let scale = f32s(view.data())[0];
    if !(scale.is_finite() && scale >= 0.0) {
        return Err(bad("is not finite and non-negative"));
    }
    Ok(scale)
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
    fn int8_files_are_a_quarter_of_the_size_and_read_back_within_half_a_step() {
        let mut b = Bundle::new();
        let w: Vec<f32> = (0..4096).map(|i| ((i as f32) * 0.1).cos() * 0.02).collect();
        b.insert("conv1.weight", vec![16, 16, 4, 4], w.clone())
            .unwrap();
        b.insert("conv1.bias", vec![3], vec![0.0, 0.0, 0.0])
            .unwrap();
        b.set_metadata("round", "3");
        let f32_bytes = b.to_safetensors().unwrap();
        let int8 = b.encode(Encoding::Int8).unwrap();
        assert!(
            int8.len() * 3 < f32_bytes.len(),
            "{} vs {}",
            int8.len(),
            f32_bytes.len()
        );
        // The format's own reader sees I8 tensors and their float32 scalar scales.
        let parsed = safetensors::SafeTensors::deserialize(&int8).unwrap();
        assert_eq!(parsed.tensor("conv1.weight").unwrap().dtype(), Dtype::I8);
        let scale = parsed.tensor("conv1.weight_scale").unwrap();
        assert_eq!((scale.dtype(), scale.shape()), (Dtype::F32, &[][..]));
        let back = Bundle::from_safetensors(&int8).unwrap();
        b.check_layout(&back).unwrap();
        assert_eq!(back.metadata(), b.metadata());
        let step = 0.02 / 127.0;
        for (x, y) in w.iter().zip(&back.get("conv1.weight").unwrap().data) {
            assert!((x - y).abs() <= step * 0.5001, "{x} came back as {y}");
        }
        assert_eq!(back.get("conv1.bias").unwrap().data, vec![0.0; 3]);
        // Encoding is a function of the bundle: same bytes, same CID.
        assert_eq!(b.encode(Encoding::Int8).unwrap(), int8);
        // Read back and encoded again, it is the same file.
        assert_eq!(back.encode(Encoding::Int8).unwrap(), int8);
    }

    #[test]
    fn int8_refuses_non_finite_values_and_bad_scales() {
        let mut b = sample();
        b.insert("fc1.bias", vec![2], vec![f32::NAN, 0.0]).unwrap();
        assert_eq!(
            b.encode(Encoding::Int8).unwrap_err().to_string(),
            "tensor fc1.bias holds a value that is not finite: it cannot be quantised"
        );
        // A file whose scale is missing, NaN, or not a scalar.
        let file = |scale: Option<(&str, Vec<usize>, Vec<u8>)>| {
            let mut tensors = vec![(
                "w".to_string(),
                safetensors::tensor::TensorView::new(Dtype::I8, vec![2], &[1, 255][..]).unwrap(),
            )];
            let scale_bytes;
            if let Some((dtype, shape, bytes)) = scale {
                scale_bytes = bytes;
                let dtype = if dtype == "F32" {
                    Dtype::F32
                } else {
                    Dtype::I8
                };
                tensors.push((
                    "w_scale".to_string(),
                    safetensors::tensor::TensorView::new(dtype, shape, &scale_bytes).unwrap(),
                ));
            }
            let bytes = safetensors::serialize(tensors, None).unwrap();
            Bundle::from_safetensors(&bytes).map(|b| b.get("w").unwrap().data.clone())
        };
        let half = 0.5f32.to_le_bytes().to_vec();
        assert_eq!(
            file(Some(("F32", vec![], half.clone()))).unwrap(),
            vec![0.5, -0.5]
        );
        let err = |s| file(s).unwrap_err().to_string();
        assert_eq!(err(None), "tensor w is I8 but its scale w_scale is missing");
        assert_eq!(
            err(Some(("F32", vec![], f32::NAN.to_le_bytes().to_vec()))),
            "tensor w is I8 but its scale w_scale is not finite and non-negative"
        );
        assert_eq!(
            err(Some(("F32", vec![2], [half.clone(), half].concat()))),
            "tensor w is I8 but its scale w_scale is not one float32 value"
        );
        assert_eq!(
            err(Some(("I8", vec![1], vec![1]))),
            "tensor w is I8 but its scale w_scale is not one float32 value"
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
