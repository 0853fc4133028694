//! What the front ends ask of the library besides running a session: a data set's summary
//! and sample images, every model's parameter count, whether a weights file loads into a
//! model, and a CIFAR download. The window and the CLI call these and nothing deeper, so a
//! rule (where downloads go, which mirror, how a data set is opened) lives once.

use std::path::{Path, PathBuf};

use crate::config::DataConfig;
use crate::data::download::{
    self as dl, ArchiveFormat, CifarVariant, DownloadOutcome, DownloadSpec,
};
use crate::data::{DataError, Summary};
use crate::models::weights::ImportReport;
use crate::models::{Model, ModelError, ModelSpec, VARIANTS};

use super::{EngineError, SessionOptions};

/// One training image of a class, interleaved RGB (`width × height × 3` bytes).
#[derive(Clone, Debug)]
pub struct Sample {
    pub class: String,
    pub rgb: Vec<u8>,
    pub width: usize,
    pub height: usize,
}

/// A data set as a front end shows it before a run: its summary and one sample per class.
#[derive(Clone, Debug)]
pub struct DataPreview {
    pub summary: Summary,
    /// The first training image of each of the first `max_classes` classes that have one.
    pub samples: Vec<Sample>,
}

impl DataPreview {
    /// "name (format): N classes, a train / b test images, h×w px".
    pub fn headline(&self) -> String {
        let s = &self.summary;
        format!(
            "{} ({}): {} classes, {} train / {} test images, {}×{} px",
            s.name,
            s.format.label(),
            s.classes.len(),
            s.train,
            s.test,
            s.height,
            s.width
        )
    }
}

/// Opens `data` exactly as a run would (the same lookup of downloaded CIFAR copies) and
/// takes a sample image for each of the first `max_classes` classes.
pub fn preview(
    data: &DataConfig,
    options: &SessionOptions,
    max_classes: usize,
) -> Result<DataPreview, EngineError> {
    let d = super::session::open_data(data, options)?;
    let set = &d.train;
    let plane = set.width * set.height;
    let mut samples = Vec::new();
    for (class, name) in d.classes.iter().enumerate().take(max_classes) {
        if let Some(i) = set.labels.iter().position(|&l| l as usize == class) {
            // Stored planar (CHW, as the model reads it); images are shown interleaved.
            let planar = set.image(i);
            let rgb = (0..plane)
                .flat_map(|p| (0..3).map(move |c| planar[c * plane + p]))
                .collect();
            samples.push(Sample {
                class: name.clone(),
                rgb,
                width: set.width,
                height: set.height,
            });
        }
    }
    Ok(DataPreview {
        summary: d.summary(),
        samples,
    })
}

/// Trainable parameters of every model variant with `classes` outputs, in the table's order
/// (built without weights: zero-filled shapes, so counting ViT-B's 86 M parameters costs
/// no 86 M random draws).
pub fn param_counts(classes: usize) -> Result<Vec<(&'static str, usize)>, ModelError> {
    VARIANTS
        .iter()
        .map(|v| {
            let model = Model::build_shapes_only(&ModelSpec::new(v.name, classes))?;
            Ok((v.name, model.param_count()))
        })
        .collect()
}

/// Loads `path` into the model `spec` describes, as a run would (on the CPU), and says what
/// happened; the error names the file and what did not fit.
pub fn check_weights(spec: &ModelSpec, path: &Path) -> Result<ImportReport, ModelError> {
    let model = Model::build(spec, &candle_core::Device::Cpu)?;
    crate::models::weights::load_pretrained(&model, path)
}

/// Where the mirror for CIFAR downloads comes from when none is given: the environment.
pub const MIRROR_VARIABLE: &str = "ANNT_CIFAR_MIRROR";

/// A CIFAR archive to fetch.
#[derive(Clone, Debug)]
pub struct DownloadRequest {
    pub variant: CifarVariant,
    pub format: ArchiveFormat,
    /// Destination folder; `None`: annt's data folder, where runs look for CIFAR.
    pub dir: Option<PathBuf>,
    /// Base URL of a mirror serving the same file names; `None`: `ANNT_CIFAR_MIRROR` if
    /// set, else the official host. The MD5 is checked either way.
    pub mirror: Option<String>,
}

impl DownloadRequest {
    /// The binary archive of `variant` into annt's data folder.
    pub fn new(variant: CifarVariant) -> Self {
        Self {
            variant,
            format: ArchiveFormat::Binary,
            dir: None,
            mirror: None,
        }
    }

    /// The file to fetch (URL, MD5, name) after the mirror rule.
    pub fn spec(&self) -> DownloadSpec {
        let spec = dl::official(self.variant, self.format);
        let mirror = self
            .mirror
            .clone()
            .or_else(|| std::env::var(MIRROR_VARIABLE).ok())
            .filter(|m| !m.trim().is_empty());
        match mirror {
            Some(base) => dl::with_mirror(spec, &base),
            None => spec,
        }
    }

    /// The destination folder.
    pub fn folder(&self) -> Result<PathBuf, DataError> {
        match &self.dir {
            Some(d) => Ok(d.clone()),
            None => dl::default_data_dir().ok_or(DataError::NoDataFolder),
        }
    }
}

/// Fetches `request` (see [`dl::download`]: the MD5 is verified and nothing partial is left
/// behind); `progress(done, total)` after every chunk, `stop()` polled between chunks.
pub fn download(
    request: &DownloadRequest,
    progress: &mut dyn FnMut(u64, Option<u64>),
    stop: &dyn Fn() -> bool,
) -> Result<DownloadOutcome, DataError> {
    dl::download(&request.spec(), &request.folder()?, progress, stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preview_of_the_builtin_set_has_one_sample_per_class_in_rgb() {
        let data = crate::config::RunConfig::quick_cpu().data;
        let p = preview(&data, &SessionOptions::default(), 3).expect("preview");
        assert_eq!(p.samples.len(), 3.min(p.summary.classes.len()));
        let s = &p.samples[0];
        assert_eq!(s.rgb.len(), s.width * s.height * 3);
        assert!(
            p.headline()
                .contains(&format!("{} classes", p.summary.classes.len()))
        );
    }

    #[test]
    fn every_variant_has_a_parameter_count() {
        let counts = param_counts(10).expect("counts");
        assert_eq!(counts.len(), VARIANTS.len());
        let r8 = counts
            .iter()
            .find(|(n, _)| *n == "resnet8-tiny")
            .expect("r8");
        assert_eq!(r8.1, 78_042, "the PyTorch peer's resnet8_tiny count");
    }

    #[test]
    fn a_mirror_given_wins_over_the_official_host_and_keeps_the_md5() {
        let mut r = DownloadRequest::new(CifarVariant::Cifar10);
        r.mirror = Some("http://example.invalid/cifar/".into());
        let spec = r.spec();
        assert_eq!(
            spec.url,
            "http://example.invalid/cifar/cifar-10-binary.tar.gz"
        );
        assert_eq!(
            spec.md5,
            dl::official(CifarVariant::Cifar10, ArchiveFormat::Binary).md5
        );
        r.dir = Some(PathBuf::from("/tmp/x"));
        assert_eq!(r.folder().expect("dir"), PathBuf::from("/tmp/x"));
    }

    #[test]
    fn a_weights_file_that_is_not_safetensors_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("broken.safetensors");
        std::fs::write(&path, b"not a safetensors file").expect("write");
        let spec = ModelSpec {
            name: "resnet8-tiny".into(),
            classes: 10,
            resolution: None,
            seed: 0,
        };
        let e = check_weights(&spec, &path).expect_err("must fail");
        assert!(e.to_string().contains("broken.safetensors"), "{e}");
    }
}
