//! Evaluation: mean cross-entropy loss, accuracy and per-class accuracy over batches.

use burn::tensor::activation::log_softmax;

use super::ModelError;
use super::batch::Batch;
use super::infer::{Classifier, labels_tensor};
use super::params::values;

/// Correct and total predictions of one class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClassCount {
    /// Images of this class predicted as this class.
    pub correct: usize,
    /// Images of this class.
    pub total: usize,
}

impl ClassCount {
    /// `correct / total`, or `None` when the class has no images.
    pub fn accuracy(&self) -> Option<f64> {
        (self.total > 0).then(|| self.correct as f64 / self.total as f64)
    }
}

/// What a model scores on a set of images.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Mean cross-entropy loss per image (natural log).
    pub loss: f64,
    /// Fraction of images whose highest logit is their label.
    pub accuracy: f64,
    /// Counts per class, indexed by label.
    pub per_class: Vec<ClassCount>,
    /// Images evaluated.
    pub samples: usize,
}

impl Classifier {
    /// Evaluates the model on `data`, `batch_size` images at a time (0 = each batch whole).
    pub fn evaluate(&self, data: &[Batch], batch_size: usize) -> Result<Evaluation, ModelError> {
        let classes = self.architecture().num_classes();
        let mut per_class = vec![ClassCount::default(); classes];
        let mut loss_sum = 0.0f64;
        let mut samples = 0;
        for batch in data {
            batch.check_for(classes)?;
            let step = if batch_size == 0 {
                batch.len().max(1)
            } else {
                batch_size
            };
            for start in (0..batch.len()).step_by(step) {
                let part = batch.slice(start, start + step);
                let logits = self.forward(&part);
                let n = part.len();
                let targets = labels_tensor(&part.labels, self.device()).reshape([n, 1]);
                let nll = log_softmax(logits.clone(), 1)
                    .gather(1, targets)
                    .sum()
                    .neg();
                loss_sum += f64::from(
                    values("evaluation loss", nll)?
                        .first()
                        .copied()
                        .unwrap_or(f32::NAN),
                );
                let logits = values("logits", logits)?;
                for (row, &label) in logits.chunks_exact(classes).zip(&part.labels) {
                    let count = &mut per_class[usize::from(label)];
                    count.total += 1;
                    if argmax(row) == usize::from(label) {
                        count.correct += 1;
                    }
                }
                samples += n;
            }
        }
        let correct: usize = per_class.iter().map(|c| c.correct).sum();
        Ok(Evaluation {
            loss: if samples == 0 {
                f64::NAN
            } else {
                loss_sum / samples as f64
            },
            accuracy: if samples == 0 {
                f64::NAN
            } else {
                correct as f64 / samples as f64
            },
            per_class,
            samples,
        })
    }
}

/// Index of the largest value (the first on ties; NaN never wins).
pub(crate) fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}
