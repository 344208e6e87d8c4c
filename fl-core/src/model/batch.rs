//! The trainer's input: images already normalised, in PyTorch's NCHW order, with their labels.

/// Channels of a CIFAR image (R, G, B).
pub const CHANNELS: usize = 3;
/// Height and width of a CIFAR image, in pixels.
pub const SIDE: usize = 32;
/// Values of one image: 3 x 32 x 32.
pub const IMAGE_LEN: usize = CHANNELS * SIDE * SIDE;
/// Bytes of one record of the CIFAR-10 binary format: a label byte, then 1024 R, 1024 G, 1024 B.
pub const CIFAR_RECORD_LEN: usize = 1 + IMAGE_LEN;

/// Why images and labels do not form a batch.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The image buffer does not hold one image per label.
    #[error(
        "batch has {labels} labels but {values} image values; {IMAGE_LEN} values per image needed"
    )]
    Length {
        /// Labels given.
        labels: usize,
        /// Image values given.
        values: usize,
    },
    /// A label names a class the model does not have.
    #[error("label {label} of image {index} is out of range: the model has {classes} classes")]
    Label {
        /// Position of the image in the batch.
        index: usize,
        /// The label.
        label: u8,
        /// Classes of the model.
        classes: usize,
    },
    /// CIFAR bytes are not a whole number of records.
    #[error("{len} bytes are not a whole number of {CIFAR_RECORD_LEN}-byte CIFAR records")]
    Records {
        /// Bytes given.
        len: usize,
    },
}

/// Per-channel input statistics: a model is fed `(pixel / 255 - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    /// Per-channel mean (R, G, B) of pixel / 255.
    pub mean: [f32; CHANNELS],
    /// Per-channel standard deviation (R, G, B) of pixel / 255.
    pub std: [f32; CHANNELS],
}

/// The CIFAR-10 training set's statistics (REFERENCE_CNN.md).
pub const CIFAR10_NORMALIZATION: Normalization = Normalization {
    mean: [0.4914, 0.4822, 0.4465],
    std: [0.2470, 0.2435, 0.2616],
};

impl Normalization {
    /// The normalised value of pixel byte `pixel` in `channel`.
    pub fn apply(&self, channel: usize, pixel: u8) -> f32 {
        (f32::from(pixel) / 255.0 - self.mean[channel]) / self.std[channel]
    }
}

/// Images (N x 3 x 32 x 32, normalised, NCHW, row-major) and their labels.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batch {
    /// `labels.len() * IMAGE_LEN` values, image after image, each channel after channel.
    pub images: Vec<f32>,
    /// One class index per image.
    pub labels: Vec<u8>,
}

impl Batch {
    /// A batch, checking that there is one image per label.
    pub fn new(images: Vec<f32>, labels: Vec<u8>) -> Result<Self, BatchError> {
        let batch = Batch { images, labels };
        batch.check()?;
        Ok(batch)
    }

    /// Reads records of the CIFAR-10 binary format (label byte + 3072 pixel bytes, R then G then
    /// B planes) and normalises their pixels with `norm`.
    pub fn from_cifar_records(bytes: &[u8], norm: &Normalization) -> Result<Self, BatchError> {
        if !bytes.len().is_multiple_of(CIFAR_RECORD_LEN) {
            return Err(BatchError::Records { len: bytes.len() });
        }
        let n = bytes.len() / CIFAR_RECORD_LEN;
        let mut images = Vec::with_capacity(n * IMAGE_LEN);
        let mut labels = Vec::with_capacity(n);
        for record in bytes.chunks_exact(CIFAR_RECORD_LEN) {
            labels.push(record[0]);
            for (channel, plane) in record[1..].chunks_exact(SIDE * SIDE).enumerate() {
                images.extend(plane.iter().map(|&p| norm.apply(channel, p)));
            }
        }
        Ok(Batch { images, labels })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch has no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The values of image `index`.
    pub fn image(&self, index: usize) -> &[f32] {
        &self.images[index * IMAGE_LEN..(index + 1) * IMAGE_LEN]
    }

    /// Checks that there is one image per label.
    pub fn check(&self) -> Result<(), BatchError> {
        if self.images.len() != self.labels.len() * IMAGE_LEN {
            return Err(BatchError::Length {
                labels: self.labels.len(),
                values: self.images.len(),
            });
        }
        Ok(())
    }

    /// Checks the shape and that every label is below `classes`.
    pub fn check_for(&self, classes: usize) -> Result<(), BatchError> {
        self.check()?;
        match self.labels.iter().position(|&l| usize::from(l) >= classes) {
            Some(index) => Err(BatchError::Label {
                index,
                label: self.labels[index],
                classes,
            }),
            None => Ok(()),
        }
    }

    /// Images `start..end` (clamped to the batch) as a batch of their own.
    pub fn slice(&self, start: usize, end: usize) -> Batch {
        let end = end.min(self.len());
        let start = start.min(end);
        Batch {
            images: self.images[start * IMAGE_LEN..end * IMAGE_LEN].to_vec(),
            labels: self.labels[start..end].to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cifar_records_are_normalised_per_channel_in_chw_order() {
        let mut record = vec![7u8];
        record.extend(std::iter::repeat_n(255u8, SIDE * SIDE));
        record.extend(std::iter::repeat_n(0u8, SIDE * SIDE));
        record.extend(std::iter::repeat_n(128u8, SIDE * SIDE));
        let batch = Batch::from_cifar_records(&record, &CIFAR10_NORMALIZATION).unwrap();
        assert_eq!(batch.labels, vec![7]);
        let n = CIFAR10_NORMALIZATION;
        assert_eq!(batch.images[0], (1.0 - n.mean[0]) / n.std[0]);
        assert_eq!(batch.images[SIDE * SIDE], (0.0 - n.mean[1]) / n.std[1]);
        assert_eq!(
            batch.images[2 * SIDE * SIDE + 5],
            (128.0 / 255.0 - n.mean[2]) / n.std[2]
        );
    }

    #[test]
    fn bad_lengths_and_labels_are_refused_with_the_numbers() {
        let err = Batch::from_cifar_records(&[0u8; 3074], &CIFAR10_NORMALIZATION).unwrap_err();
        assert_eq!(
            err.to_string(),
            "3074 bytes are not a whole number of 3073-byte CIFAR records"
        );
        let err = Batch::new(vec![0.0; IMAGE_LEN], vec![1, 2]).unwrap_err();
        assert!(
            err.to_string().contains("2 labels but 3072 image values"),
            "{err}"
        );
        let batch = Batch::new(vec![0.0; 2 * IMAGE_LEN], vec![1, 10]).unwrap();
        let err = batch.check_for(10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "label 10 of image 1 is out of range: the model has 10 classes"
        );
    }
}
