//! Server state carried from round to round (FedAvgM's momentum, FedAdam's and FedYogi's
//! moments), as a tensor bundle so that it can be published as a safetensors file and any
//! round recomputed from published bytes.

use fl_core::tensors::{Bundle, TensorError};

use crate::error::AggregateError;

/// Metadata key naming the rule a state belongs to: the state's only metadata entry.
///
/// One entry on purpose: safetensors 0.8 writes the header's metadata in `HashMap` order,
/// so a file with two or more entries does not have reproducible bytes (nor CID).
pub const RULE_KEY: &str = "rule";

/// The server state after a round: tensors named `<slot>.<model tensor>` (e.g. `m.fc1.weight`),
/// stored as `f32`, plus the rule's name in the metadata.
///
/// Empty before the first round and for stateless rules.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServerState {
    bundle: Bundle,
}

impl ServerState {
    /// No state: the first round of a stateful rule, or any round of a stateless one.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Whether this is the empty state.
    pub fn is_empty(&self) -> bool {
        self.bundle.is_empty() && self.bundle.metadata().is_empty()
    }

    /// A state from its bundle (as read back from a published file).
    pub fn from_bundle(bundle: Bundle) -> Self {
        Self { bundle }
    }

    /// The state as a bundle.
    pub fn as_bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The state as a bundle, by value.
    pub fn into_bundle(self) -> Bundle {
        self.bundle
    }

    /// The rule this state belongs to, if any.
    pub fn rule(&self) -> Option<&str> {
        self.bundle.metadata().get(RULE_KEY).map(String::as_str)
    }

    /// The safetensors bytes of the state.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, TensorError> {
        self.bundle.to_safetensors()
    }

    /// Reads a state from safetensors bytes.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, TensorError> {
        Bundle::from_safetensors(bytes).map(Self::from_bundle)
    }

    /// Reads the state of `rule` for a model of `global`'s layout: `None` if empty, else one
    /// flat vector per slot (tensors in `global`'s order).
    pub(crate) fn slots(
        &self,
        rule: &'static str,
        global: &Bundle,
        slots: &[&str],
    ) -> Result<Option<Vec<Vec<f32>>>, AggregateError> {
        if self.is_empty() {
            return Ok(None);
        }
        match self.rule() {
            Some(found) if found == rule => {}
            found => {
                return Err(AggregateError::StateRule {
                    expected: rule,
                    found: found.unwrap_or("no rule").to_string(),
                });
            }
        }
        let layout = |problem| AggregateError::StateLayout { rule, problem };
        let mut out = Vec::with_capacity(slots.len());
        for slot in slots {
            let mut flat = Vec::with_capacity(global.num_values());
            for (name, t) in global.iter() {
                let key = format!("{slot}.{name}");
                let s = self
                    .bundle
                    .get(&key)
                    .ok_or_else(|| layout(TensorError::Missing { name: key.clone() }))?;
                if s.shape != t.shape {
                    return Err(layout(TensorError::Shape {
                        name: key,
                        expected: t.shape.clone(),
                        actual: s.shape.clone(),
                    }));
                }
                flat.extend_from_slice(&s.data);
            }
            out.push(flat);
        }
        if self.bundle.len() != slots.len() * global.len() {
            let extra = self
                .bundle
                .iter()
                .map(|(n, _)| n)
                .find(|n| {
                    !slots.iter().any(|s| {
                        n.strip_prefix(s)
                            .and_then(|r| r.strip_prefix('.'))
                            .is_some_and(|r| global.get(r).is_some())
                    })
                })
                .unwrap_or_default()
                .to_string();
            return Err(layout(TensorError::Unexpected { name: extra }));
        }
        Ok(Some(out))
    }

    /// The state of `rule` from one flat vector per slot.
    pub(crate) fn from_slots(
        rule: &'static str,
        global: &Bundle,
        slots: &[(&str, &[f32])],
    ) -> Result<Self, AggregateError> {
        let mut bundle = Bundle::new();
        bundle.set_metadata(RULE_KEY, rule);
        for (slot, flat) in slots {
            if flat.len() != global.num_values() {
                return Err(AggregateError::Assemble(TensorError::FlatLength {
                    expected: global.num_values(),
                    actual: flat.len(),
                }));
            }
            let mut at = 0;
            for (name, t) in global.iter() {
                let n = t.data.len();
                bundle
                    .insert(
                        format!("{slot}.{name}"),
                        t.shape.clone(),
                        flat[at..at + n].to_vec(),
                    )
                    .map_err(AggregateError::Assemble)?;
                at += n;
            }
        }
        Ok(Self { bundle })
    }
}
