//! What a run is: data, model, training recipe, the three switches and the device — one
//! serde type that presets (`presets/*.toml`), the CLI flags and the GUI all produce.
//!
//! Batch-size convention: `batch_size` is the micro-batch, the batch one forward pass sees.
//! With gradient accumulation over `k` micro-batches the optimiser sees an effective batch
//! of `batch_size · k`; reports show all three.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::accel::amp::AmpMode;
use crate::data::OpenOptions;
use crate::models::Kernels;
use crate::train::optim::{OptimSpec, OptimizerConfig};
use crate::train::schedule::ScheduleConfig;

/// The three accelerations annt measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Switches {
    /// Micro-batches per optimiser step (1 = no accumulation).
    pub grad_accum_steps: usize,
    pub amp: AmpMode,
    /// Stage batches in pinned host memory and copy them asynchronously (CUDA only; on the
    /// CPU there is no host-to-device copy and the switch does not apply).
    pub pinned_memory: bool,
}

impl Default for Switches {
    fn default() -> Self {
        Self {
            grad_accum_steps: 1,
            amp: AmpMode::Off,
            pinned_memory: false,
        }
    }
}

impl Switches {
    /// "GA×2 + bf16 + PM" style label; "baseline" when everything is off.
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if self.grad_accum_steps > 1 {
            parts.push(format!("GA×{}", self.grad_accum_steps));
        }
        if self.amp != AmpMode::Off {
            parts.push(self.amp.label().to_string());
        }
        if self.pinned_memory {
            parts.push("PM".to_string());
        }
        if parts.is_empty() {
            "baseline".to_string()
        } else {
            parts.join(" + ")
        }
    }
}

/// Which device runs the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| ConfigError::UnknownDevice(s.to_string())),
        }
    }
}

/// Where a run's images come from. In a preset (and a report) it is one string: `builtin`,
/// `cifar10`, `cifar100` (the downloaded copies in annt's data folder), or a path to a
/// folder or an archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum DataSource {
    /// The generated shapes set (no download).
    Builtin,
    Cifar10,
    Cifar100,
    /// A folder or an archive.
    Path(PathBuf),
}

impl DataSource {
    /// The preset's name for it (the path itself for a path).
    pub fn name(&self) -> String {
        match self {
            DataSource::Builtin => crate::data::synthetic::BUILTIN_NAME.into(),
            DataSource::Cifar10 => "cifar10".into(),
            DataSource::Cifar100 => "cifar100".into(),
            DataSource::Path(p) => p.display().to_string(),
        }
    }
}

impl From<String> for DataSource {
    fn from(s: String) -> Self {
        match s.as_str() {
            crate::data::synthetic::BUILTIN_NAME => DataSource::Builtin,
            "cifar10" => DataSource::Cifar10,
            "cifar100" => DataSource::Cifar100,
            _ => DataSource::Path(PathBuf::from(s)),
        }
    }
}

impl From<&str> for DataSource {
    fn from(s: &str) -> Self {
        DataSource::from(s.to_string())
    }
}

impl From<DataSource> for String {
    fn from(d: DataSource) -> String {
        d.name()
    }
}

impl std::fmt::Display for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub source: DataSource,
    #[serde(default)]
    pub options: OpenOptions,
    /// Random crop + flip on the training split.
    #[serde(default = "yes")]
    pub augment: bool,
    /// Keep only the first N images of the stored training split (quick runs); None = all.
    /// The cut is made once, in file order, before any shuffling (CIFAR and the built-in
    /// set store their classes mixed), so every epoch shuffles the same N images.
    #[serde(default)]
    pub train_limit: Option<usize>,
    /// Keep only the first N images of the stored test split, in file order (quick runs);
    /// None = the whole test split.
    #[serde(default)]
    pub test_limit: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A name from `annt models`.
    pub name: String,
    /// Input resolution; None = the model's native one. Images are resized on the device.
    #[serde(default)]
    pub resolution: Option<usize>,
    /// Pretrained safetensors to start from (torchvision, timm or Hugging Face names).
    #[serde(default)]
    pub weights: Option<PathBuf>,
}

/// Gradient clipping.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ClipConfig {
    Norm { max_norm: f64 },
    Value { clip: f64 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Stop after this many training images, if set: a budget in images, the same for
    /// every arm whatever its accumulation (a budget in optimiser steps would give a GA×k
    /// arm k times the baseline's images). Each arm rounds it down to whole optimiser
    /// steps of its effective batch, and takes at least one step.
    #[serde(default)]
    pub max_images: Option<u64>,
    /// Stop once test accuracy reaches this fraction (time-to-accuracy), if set.
    #[serde(default)]
    pub target_accuracy: Option<f64>,
    /// The micro-batch (see the module docs).
    pub batch_size: usize,
    #[serde(default = "eval_batch")]
    pub eval_batch_size: usize,
    pub optim: OptimSpec,
    #[serde(default = "constant")]
    pub schedule: ScheduleConfig,
    /// Advance the schedule per micro-batch instead of per optimiser step (what the paper's
    /// seed code did; it makes accumulation change the schedule too).
    #[serde(default)]
    pub schedule_per_micro_batch: bool,
    #[serde(default)]
    pub label_smoothing: f64,
    #[serde(default)]
    pub clip: Option<ClipConfig>,
    /// Seeds initial weights, data order, augmentation and dropout: identical across arms.
    #[serde(default)]
    pub seed: u64,
    /// Optimiser steps excluded from throughput figures (warm-up).
    #[serde(default = "warmup")]
    pub timing_warmup_steps: u64,
    /// The fp16 loss scaler's starting scale (PyTorch's GradScaler: 2¹⁶).
    #[serde(default = "init_scale")]
    pub fp16_init_scale: f64,
    /// Memory split: every arm accumulates this many times more micro-batches than its
    /// switches say, so that `batch_size` can be a fraction of the batch that ran out of
    /// memory while each arm's effective batch stays the same. 1 (the default) changes
    /// nothing; the window's out-of-memory retry halves `batch_size` and doubles this, so
    /// the baseline keeps its name and its effective batch. (With batch norm, statistics
    /// are then taken over the smaller micro-batch: a split is not bit-identical.)
    #[serde(default = "one")]
    pub memory_split: usize,
}

/// One complete run description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    #[serde(default)]
    pub switches: Switches,
    #[serde(default)]
    pub device: DeviceChoice,
    #[serde(default)]
    pub kernels: Kernels,
    /// TF32 for f32 matrix products on CUDA (cuBLAS; Ampere and newer). Off by default, as
    /// in PyTorch, so "fp32" means full f32; reports record it with the config. No effect
    /// on the CPU.
    #[serde(default)]
    pub tf32: bool,
}

/// A preset file: a baseline run and the switches of its tuned twin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The baseline (its `switches` are normally all off).
    pub run: RunConfig,
    /// The tuned arm's switches.
    pub tuned: Switches,
    /// The paper's published figures for this recipe, where it reproduces one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paper: Option<PaperFigures>,
}

/// What the paper (arXiv 2312.10024, its repository's README) reports for a recipe, with
/// its tuning on. Shown beside the measured figures and marked as the paper's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperFigures {
    /// Where the figures come from.
    pub source: String,
    /// Percent.
    #[serde(default)]
    pub train_accuracy: Option<f64>,
    #[serde(default)]
    pub test_accuracy: Option<f64>,
    /// Percent (the paper's "F1 score").
    #[serde(default)]
    pub f1: Option<f64>,
    #[serde(default)]
    pub execution_minutes: Option<f64>,
    /// What the figures do not say (the paper names no GPU).
    #[serde(default)]
    pub note: String,
}

fn yes() -> bool {
    true
}
fn eval_batch() -> usize {
    256
}
fn constant() -> ScheduleConfig {
    ScheduleConfig::Constant
}
fn warmup() -> u64 {
    3
}
fn init_scale() -> f64 {
    65536.0
}
fn one() -> usize {
    1
}

/// How an out-of-memory retry splits a micro-batch of `micro` images exactly: into
/// `factor` micro-batches of `micro / factor`, with `factor` the smallest prime dividing
/// `micro` (2 for an even one; 70 → 2 × 35, then 35 → 5 × 7), so that every arm's
/// effective batch stays exactly what it was. None when `micro` is 1 (nothing to split).
pub fn split_micro_batch(micro: usize) -> Option<(usize, usize)> {
    if micro < 2 {
        return None;
    }
    let factor = (2..)
        .take_while(|f| f * f <= micro)
        .find(|f| micro.is_multiple_of(*f))
        .unwrap_or(micro);
    Some((micro / factor, factor))
}

/// A configuration that cannot be used, or a preset file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read preset ({source}): {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid preset ({reason}): {}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("device {0:?}: use cpu, cuda or cuda:N")]
    UnknownDevice(String),
    /// A value no run can use: `field` names it in the preset, `rule` says what is wrong.
    #[error("{field} {rule}")]
    Field { field: &'static str, rule: String },
    #[error(transparent)]
    UnknownModel(#[from] crate::models::error::ModelError),
    #[error(
        "{images} training images do not fill one optimiser step of {accum} micro-batches of {batch}"
    )]
    TooFewImages {
        images: usize,
        accum: usize,
        batch: usize,
    },
    #[error("cannot write the preset as TOML: {0}")]
    Serialize(String),
}

impl Preset {
    /// Reads and validates a TOML preset.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let preset: Preset = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string().trim().replace('\n', " "),
        })?;
        preset.run.validate().map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(preset)
    }

    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError::Serialize(e.to_string()))
    }
}

impl RunConfig {
    /// Rejects values no run can use, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.train;
        let bad = |field: &'static str, rule: String| Err(ConfigError::Field { field, rule });
        if t.batch_size == 0 {
            return bad("train.batch_size", "must be at least 1".into());
        }
        if t.epochs == 0 && t.max_images.is_none() {
            return bad(
                "train.epochs",
                "must be at least 1 (or set train.max_images)".into(),
            );
        }
        if t.memory_split == 0 {
            return bad("train.memory_split", "must be at least 1".into());
        }
        if self.switches.grad_accum_steps == 0 {
            return bad("switches.grad_accum_steps", "must be at least 1".into());
        }
        if let Some(a) = t.target_accuracy
            && !(0.0..=1.0).contains(&a)
        {
            return bad(
                "train.target_accuracy",
                format!("{a} is not a fraction in 0..=1"),
            );
        }
        if !(0.0..1.0).contains(&t.label_smoothing) {
            return bad(
                "train.label_smoothing",
                format!("{} is not in 0..1", t.label_smoothing),
            );
        }
        crate::models::variant(&self.model.name)?;
        Ok(())
    }

    /// The baseline of [`Preset::quick_cpu`], the one definition of the quick CPU run: what
    /// the CLI runs without a preset, what the window starts from and what tests build on.
    pub fn quick_cpu() -> Self {
        Preset::quick_cpu().run
    }
}

impl Preset {
    /// The quick CPU demo: ResNet-8 on 4 000 built-in images, 3 epochs, SGD + Nesterov at
    /// 0.1 with one-cycle; tuned = GA×2 + bf16. `presets/quick-cpu.toml` ships the same
    /// (a test compares them), so the CLI without a preset, the window's defaults and the
    /// file cannot drift apart.
    pub fn quick_cpu() -> Self {
        Preset {
            name: "quick-cpu".into(),
            description: "ResNet-8 on the built-in shapes, SGD + one-cycle; tuned = GA×2 + bf16 (pinned memory does not apply on the CPU)".into(),
            run: Self::quick_cpu_run(),
            tuned: Switches {
                grad_accum_steps: 2,
                amp: AmpMode::Bf16,
                pinned_memory: false,
            },
            paper: None,
        }
    }

    fn quick_cpu_run() -> RunConfig {
        RunConfig {
            data: DataConfig {
                source: DataSource::Builtin,
                options: OpenOptions::default(),
                augment: true,
                train_limit: Some(4000),
                test_limit: None,
            },
            model: ModelConfig {
                name: "resnet8-tiny".into(),
                resolution: None,
                weights: None,
            },
            train: TrainConfig {
                epochs: 3,
                max_images: None,
                target_accuracy: None,
                batch_size: 64,
                eval_batch_size: 256,
                optim: OptimSpec {
                    optimizer: OptimizerConfig::Sgd {
                        lr: 0.1,
                        momentum: 0.9,
                        nesterov: true,
                        weight_decay: 5e-4,
                    },
                    no_decay_on_norm_and_bias: true,
                    groups: Vec::new(),
                },
                schedule: ScheduleConfig::one_cycle(),
                schedule_per_micro_batch: false,
                label_smoothing: 0.0,
                clip: None,
                seed: 0,
                timing_warmup_steps: 3,
                fp16_init_scale: 65536.0,
                memory_split: 1,
            },
            switches: Switches::default(),
            device: DeviceChoice::Cpu,
            kernels: Kernels::Annt,
            tf32: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_source_is_one_string_in_a_preset_and_round_trips() {
        for (text, source) in [
            ("builtin", DataSource::Builtin),
            ("cifar10", DataSource::Cifar10),
            ("cifar100", DataSource::Cifar100),
            ("/data/fashion", DataSource::Path("/data/fashion".into())),
            (
                "cifar-10-binary.tar.gz",
                DataSource::Path("cifar-10-binary.tar.gz".into()),
            ),
        ] {
            assert_eq!(DataSource::from(text), source, "{text}");
            assert_eq!(source.name(), text);
            let json = serde_json::to_string(&source).expect("json");
            assert_eq!(json, format!("{text:?}"));
            let back: DataSource = serde_json::from_str(&json).expect("back");
            assert_eq!(back, source);
        }
    }

    #[test]
    fn the_shipped_quick_cpu_preset_is_the_built_in_definition() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("presets/quick-cpu.toml");
        let shipped = Preset::load(&path).expect("presets/quick-cpu.toml");
        assert_eq!(shipped, Preset::quick_cpu());
        assert_eq!(RunConfig::quick_cpu(), Preset::quick_cpu().run);
    }

    #[test]
    fn an_out_of_memory_split_keeps_the_effective_batch_exact() {
        // ViT-B/16's recipe: 70 → 2 × 35 → 5 × 7 (div_ceil would have made 18 × 4 = 72).
        assert_eq!(split_micro_batch(70), Some((35, 2)));
        assert_eq!(split_micro_batch(35), Some((7, 5)));
        assert_eq!(split_micro_batch(7), Some((1, 7)));
        assert_eq!(split_micro_batch(1), None);
        for micro in 2..500 {
            let (smaller, factor) = split_micro_batch(micro).expect("splittable");
            assert_eq!(smaller * factor, micro, "{micro}");
            assert!(factor >= 2 && smaller < micro);
        }
    }
}
