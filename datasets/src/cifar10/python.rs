//! The official python format: pickled dicts `{labels: [int], data: ndarray uint8
//! (N, 3072), ...}`, as `cifar-10-python.tar.gz` holds them.
//!
//! serde-pickle resolves no numpy globals; with `keep_restore_state` it leaves the
//! ndarray as the tuple of its `__setstate__` state, `(version, shape, dtype, fortran,
//! raw bytes)`, which is all we need.

use std::path::Path;

use serde_pickle::{DeOptions, HashableValue, Value};

use super::{IMAGE_BYTES, Images, NUM_CLASSES, ReadError};

/// Parses a pickled batch; `path` names the source in errors.
pub fn parse_python(path: &Path, bytes: &[u8]) -> Result<Images, ReadError> {
    let bad = |reason: String| ReadError::Pickle {
        path: path.to_owned(),
        reason,
    };
    let options = DeOptions::new()
        .keep_restore_state()
        .replace_unresolved_globals();
    let value = serde_pickle::value_from_slice(bytes, options).map_err(|e| bad(e.to_string()))?;
    let Value::Dict(dict) = value else {
        return Err(bad("the top level is not a dict".into()));
    };
    let field = |name: &str| {
        dict.iter().find_map(|(k, v)| match k {
            HashableValue::Bytes(b) if b == name.as_bytes() => Some(v),
            HashableValue::String(s) if s == name => Some(v),
            _ => None,
        })
    };
    let labels = match field("labels").or_else(|| field("fine_labels")) {
        Some(Value::List(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::I64(l) if (0..NUM_CLASSES as i64).contains(l) => Ok(*l as u8),
                other => Err(bad(format!("label {i} is {other:?}, not a class 0-9"))),
            })
            .collect::<Result<Vec<u8>, _>>()?,
        _ => return Err(bad("no `labels` list".into())),
    };
    let pixels = match field("data") {
        Some(Value::Tuple(state)) => match state.as_slice() {
            [
                _,
                Value::Tuple(shape),
                _,
                Value::Bool(false),
                Value::Bytes(raw),
            ] => {
                let dims: Vec<i64> = shape
                    .iter()
                    .filter_map(|d| {
                        if let Value::I64(n) = d {
                            Some(*n)
                        } else {
                            None
                        }
                    })
                    .collect();
                if dims != [labels.len() as i64, IMAGE_BYTES as i64] {
                    return Err(bad(format!(
                        "`data` has shape {dims:?}, expected [{}, {IMAGE_BYTES}]",
                        labels.len()
                    )));
                }
                if raw.len() != labels.len() * IMAGE_BYTES {
                    return Err(bad(format!(
                        "`data` holds {} bytes, not uint8 {:?}",
                        raw.len(),
                        dims
                    )));
                }
                raw.clone()
            }
            [_, _, _, Value::Bool(true), _] => {
                return Err(bad("`data` is in Fortran order".into()));
            }
            _ => return Err(bad("`data` is not a numpy uint8 array".into())),
        },
        _ => return Err(bad("no `data` array".into())),
    };
    Ok(Images { labels, pixels })
}
