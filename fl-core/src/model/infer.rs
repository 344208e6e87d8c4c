//! Inference: logits and class probabilities of a model for a batch of images.

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::ModelError;
use super::batch::Batch;
use super::eval::argmax;
use super::params::values;
use super::zoo::{Architecture, Network};
use crate::tensors::Bundle;

/// Scores per image and class (logits or probabilities), row-major `[images, classes]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassScores {
    /// Classes per image.
    pub classes: usize,
    /// `images * classes` values, image after image.
    pub values: Vec<f32>,
}

impl ClassScores {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.classes).unwrap_or(0)
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The scores of image `index`.
    pub fn row(&self, index: usize) -> &[f32] {
        &self.values[index * self.classes..(index + 1) * self.classes]
    }

    /// The scores image by image.
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        self.values.chunks_exact(self.classes.max(1))
    }

    /// The highest-scoring class of each image (the first on ties).
    pub fn predicted(&self) -> Vec<usize> {
        self.rows().map(argmax).collect()
    }
}

/// A model ready for inference on one device.
#[derive(Debug)]
pub struct Classifier {
    network: Network,
    device: Device,
}

impl Classifier {
    /// Loads `bundle` (checked against `architecture`) onto `device`.
    pub fn new(
        architecture: Architecture,
        bundle: &Bundle,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let device = device.clone().without_autodiff();
        Ok(Classifier {
            network: architecture.build(bundle, &device)?,
            device,
        })
    }

    /// Its architecture.
    pub fn architecture(&self) -> Architecture {
        self.network.architecture()
    }

    /// Its parameters, with PyTorch names and layouts.
    pub fn to_bundle(&self) -> Result<Bundle, ModelError> {
        self.network.to_bundle()
    }

    /// Logits of the images of `batch` (labels are ignored).
    pub fn logits(&self, batch: &Batch) -> Result<ClassScores, ModelError> {
        batch.check()?;
        let logits = self.forward(batch);
        self.scores("logits", logits)
    }

    /// Softmax probabilities of the images of `batch` (labels are ignored).
    pub fn probabilities(&self, batch: &Batch) -> Result<ClassScores, ModelError> {
        batch.check()?;
        let probabilities = softmax(self.forward(batch), 1);
        self.scores("probabilities", probabilities)
    }

    /// Logits `[n, classes]` on the device; `batch` must have passed [`Batch::check`].
    pub(crate) fn forward(&self, batch: &Batch) -> Tensor<2> {
        let images = batch.images.clone();
        self.network
            .forward(images_tensor(self.architecture(), images, &self.device))
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    fn scores(&self, what: &str, tensor: Tensor<2>) -> Result<ClassScores, ModelError> {
        Ok(ClassScores {
            classes: self.architecture().num_classes(),
            values: values(what, tensor)?,
        })
    }
}

/// Images (a whole number of `architecture` inputs) as a `[n, c, h, w]` tensor on `device`.
pub(crate) fn images_tensor(
    architecture: Architecture,
    images: Vec<f32>,
    device: &Device,
) -> Tensor<4> {
    let [c, h, w] = architecture.input_shape();
    let n = images.len() / (c * h * w);
    Tensor::from_data(TensorData::new(images, [n, c, h, w]), device)
}

/// The labels of a batch as an int tensor on `device`.
pub(crate) fn labels_tensor(labels: &[u8], device: &Device) -> Tensor<1, Int> {
    let labels: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
    let n = labels.len();
    Tensor::from_data(TensorData::new(labels, [n]), device)
}
