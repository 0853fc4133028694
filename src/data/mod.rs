//! Data sets: finding them on disk, parsing every CIFAR layout users have, image folders,
//! the built-in synthetic set, downloads, and the batching pipeline that feeds training.
//!
//! Everything ends up as a [`Dataset`]: two [`ImageSet`]s of u8 pixels in CHW order (the
//! CIFAR binary layout), labels, and class names. Pixels stay u8 until they reach the
//! device (a quarter of the bytes of f32 across PCIe, and 150 MB for CIFAR-10's train set).

pub mod archive;
pub mod augment;
pub mod cifar;
pub mod cifar_binary;
pub mod cifar_pickle;
pub mod detect;
pub mod download;
pub mod error;
/// Test-data writers: only in test builds and with the `fixtures` feature (which the crate's
/// own tests, benches and examples turn on through its dev-dependency on itself).
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod image_folder;
pub mod loader;
pub mod pickle;
pub mod source;
pub mod stats;
pub mod synthetic;
pub mod upload;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use error::DataError;
pub use stats::Normalization;

/// Channels per image: everything annt trains on is RGB (grey images are expanded).
pub const CHANNELS: usize = 3;

/// Largest single data file annt will read into memory. CIFAR's largest file (CIFAR-100
/// `train`) is 150 MiB; 4 GiB leaves room for bigger CIFAR-shaped sets while refusing to
/// allocate for a corrupt or hostile size field.
pub const MAX_FILE_BYTES: u64 = 4 << 30;

/// The on-disk layout a data set was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// `cifar-10-batches-bin`: 1 label byte + 3072 pixel bytes per record.
    Cifar10Binary,
    /// `cifar-100-binary`: coarse + fine label bytes + 3072 pixel bytes per record.
    Cifar100Binary,
    /// `cifar-10-batches-py`: Python 2 pickles of numpy arrays.
    Cifar10Python,
    /// `cifar-100-python`: Python 2 pickles of numpy arrays.
    Cifar100Python,
    /// `train/<class>/*` + `test/<class>/*`, or `<class>/*` split by a held-out fraction.
    ImageFolder,
    /// The procedurally generated built-in set (no files).
    Builtin,
    /// Random pixels and labels, for throughput benchmarks only (`annt speed`).
    Random,
}

impl DataFormat {
    /// Human-readable name used in messages and reports.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Cifar10Binary => "CIFAR-10 binary",
            Self::Cifar100Binary => "CIFAR-100 binary",
            Self::Cifar10Python => "CIFAR-10 python",
            Self::Cifar100Python => "CIFAR-100 python",
            Self::ImageFolder => "image folder",
            Self::Builtin => "built-in synthetic",
            Self::Random => "random pixels (benchmark)",
        }
    }
}

/// CIFAR-100 carries two labels per image; the user picks which one to train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cifar100Labels {
    /// 100 fine classes.
    #[default]
    Fine,
    /// 20 coarse superclasses.
    Coarse,
}

/// Options that change how a path is turned into a [`Dataset`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenOptions {
    /// Which CIFAR-100 labels to use.
    pub cifar100_labels: Cifar100Labels,
    /// Working resolution images of a folder are resized to (CIFAR is always 32).
    pub resolution: u32,
    /// Fraction of each class held out as the test split when a folder has no `test/`.
    pub holdout_fraction: f32,
    /// Seed of that held-out split (and of the built-in set).
    pub seed: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            cifar100_labels: Cifar100Labels::Fine,
            resolution: 32,
            holdout_fraction: 0.2,
            seed: 0,
        }
    }
}

/// N images of one size, pixels as u8 in CHW order per image, one label per image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageSet {
    /// `len() * CHANNELS * height * width` bytes; image i starts at `i * image_bytes()`.
    pub pixels: Vec<u8>,
    /// Class index per image, `< classes.len()` of the owning data set.
    pub labels: Vec<u16>,
    pub height: usize,
    pub width: usize,
}

impl ImageSet {
    /// An empty set of images of the given size.
    #[must_use]
    pub fn new(height: usize, width: usize) -> Self {
        Self {
            pixels: Vec::new(),
            labels: Vec::new(),
            height,
            width,
        }
    }

    /// Number of images.
    #[must_use]
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes of one image.
    #[must_use]
    pub fn image_bytes(&self) -> usize {
        CHANNELS * self.height * self.width
    }

    /// Pixels of image `i` (CHW).
    #[must_use]
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_bytes();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Images per class, indexed by class.
    #[must_use]
    pub fn class_counts(&self, classes: usize) -> Vec<usize> {
        let mut counts = vec![0; classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(usize::from(l)) {
                *c += 1;
            }
        }
        counts
    }
}

/// A data set ready for training: train and test splits and class names.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Short display name ("CIFAR-10", "built-in", the folder name…).
    pub name: String,
    pub format: DataFormat,
    /// Where it was read from (`None` for the built-in set).
    pub source: Option<PathBuf>,
    pub classes: Vec<String>,
    pub train: ImageSet,
    pub test: ImageSet,
    /// Per-channel mean/std used to normalise inputs.
    pub normalization: Normalization,
}

impl Dataset {
    /// Number of classes.
    #[must_use]
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// A serialisable summary (what `annt data inspect` prints).
    #[must_use]
    pub fn summary(&self) -> Summary {
        Summary {
            name: self.name.clone(),
            format: self.format,
            source: self.source.clone(),
            classes: self.classes.clone(),
            train: self.train.len(),
            test: self.test.len(),
            height: self.train.height,
            width: self.train.width,
            train_per_class: self.train.class_counts(self.classes.len()),
            test_per_class: self.test.class_counts(self.classes.len()),
            mean: self.normalization.mean,
            std: self.normalization.std,
            normalization_source: self.normalization.source,
        }
    }
}

/// What `annt data inspect` reports about a data set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub name: String,
    pub format: DataFormat,
    pub source: Option<PathBuf>,
    pub classes: Vec<String>,
    pub train: usize,
    pub test: usize,
    pub height: usize,
    pub width: usize,
    pub train_per_class: Vec<usize>,
    pub test_per_class: Vec<usize>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub normalization_source: stats::NormalizationSource,
}

/// Opens whatever `path` holds: a CIFAR folder (binary or python), one of the official
/// archives, an image folder, or a parent folder holding exactly one of those.
/// `builtin` (no such path on disk) opens the built-in synthetic set.
pub fn open(path: &Path, options: &OpenOptions) -> Result<Dataset, DataError> {
    if path == Path::new(synthetic::BUILTIN_NAME) && !path.exists() {
        return Ok(synthetic::generate(&synthetic::SyntheticSpec {
            seed: options.seed,
            ..synthetic::SyntheticSpec::default()
        }));
    }
    detect::open_detected(path, options)
}
