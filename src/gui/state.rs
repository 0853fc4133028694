//! The settings the window persists between launches (eframe storage) and turns into a plan.

use annt::accel::amp::AmpMode;
use annt::bench::plan::{Plan, PlanKind};
use annt::config::{DataConfig, DataSource, DeviceChoice, Preset, RunConfig, Switches};
use annt::data::{Cifar100Labels, OpenOptions};
use annt::train::optim::OptimizerConfig;
use annt::train::schedule::ScheduleConfig;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DataChoice {
    Builtin,
    Cifar10,
    Cifar100,
    /// A folder or archive the user dropped or chose.
    Path(String),
}

impl DataChoice {
    pub fn label(&self) -> String {
        match self {
            DataChoice::Builtin => "built-in".into(),
            DataChoice::Cifar10 => "CIFAR-10".into(),
            DataChoice::Cifar100 => "CIFAR-100".into(),
            DataChoice::Path(p) => std::path::Path::new(p)
                .file_name()
                .map_or(p.clone(), |n| n.to_string_lossy().into_owned()),
        }
    }
    fn source(&self) -> DataSource {
        match self {
            DataChoice::Builtin => DataSource::Builtin,
            DataChoice::Cifar10 => DataSource::Cifar10,
            DataChoice::Cifar100 => DataSource::Cifar100,
            DataChoice::Path(p) => DataSource::Path(p.into()),
        }
    }
}

/// The learning-rate schedules the window offers (the preset files can tune them further).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScheduleChoice {
    Constant,
    OneCycle,
    /// Cosine decay after a linear warm-up over the first 5 % of steps.
    CosineWarmup,
    /// ×0.975 per epoch (the paper's EfficientNet recipe).
    Exponential,
    /// ×0.1 every third of the run.
    Step,
}

impl ScheduleChoice {
    pub const ALL: [ScheduleChoice; 5] = [
        ScheduleChoice::OneCycle,
        ScheduleChoice::CosineWarmup,
        ScheduleChoice::Exponential,
        ScheduleChoice::Step,
        ScheduleChoice::Constant,
    ];
    pub fn label(self) -> &'static str {
        match self {
            ScheduleChoice::Constant => "constant",
            ScheduleChoice::OneCycle => "one-cycle",
            ScheduleChoice::CosineWarmup => "cosine with warm-up",
            ScheduleChoice::Exponential => "exponential (×0.975/epoch)",
            ScheduleChoice::Step => "step (×0.1 each third)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizerChoice {
    SgdNesterov,
    Adam,
    AdamW,
}

impl OptimizerChoice {
    /// How the window names it (not its Debug form).
    pub fn label(self) -> &'static str {
        match self {
            OptimizerChoice::SgdNesterov => "SGD + Nesterov",
            OptimizerChoice::Adam => "Adam",
            OptimizerChoice::AdamW => "AdamW",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub data: DataChoice,
    pub coarse_labels: bool,
    pub train_limit: usize,
    pub model: String,
    pub epochs: usize,
    pub batch: usize,
    pub optimizer: OptimizerChoice,
    pub lr: f64,
    pub schedule: ScheduleChoice,
    pub seed: u64,
    /// Stop a run once test accuracy reaches this fraction (time-to-accuracy).
    pub target_accuracy: Option<f64>,
    /// Input resolution; 0 takes the model's own.
    pub resolution: usize,
    /// A pretrained weights file (safetensors).
    pub weights: Option<String>,
    pub device: DeviceChoice,
    /// Set by the out-of-memory retry: every arm splits its batch this many times (see
    /// `TrainConfig::memory_split`); 1 = no split.
    pub memory_split: usize,
    /// The tuned arm's switches.
    pub accum: usize,
    pub amp: AmpMode,
    pub pin: bool,
    pub ablation: bool,
    pub repeats: usize,
    /// The preset these settings were loaded from: what the window does not show (label
    /// smoothing, parameter groups, clipping, a schedule's own parameters…) comes from it,
    /// so a loaded preset runs as its file says.
    pub base: Option<Preset>,
}

impl Default for Settings {
    /// The quick CPU run (`Preset::quick_cpu`, the same as `presets/quick-cpu.toml`), as
    /// the window shows it.
    fn default() -> Self {
        let mut s = Self {
            data: DataChoice::Builtin,
            coarse_labels: false,
            train_limit: 0,
            model: String::new(),
            epochs: 1,
            batch: 1,
            optimizer: OptimizerChoice::SgdNesterov,
            lr: 0.0,
            schedule: ScheduleChoice::Constant,
            seed: 0,
            target_accuracy: None,
            resolution: 0,
            weights: None,
            device: DeviceChoice::Cpu,
            memory_split: 1,
            base: None,
            accum: 1,
            amp: AmpMode::Off,
            pin: false,
            ablation: false,
            repeats: 1,
        };
        s.apply_preset(&Preset::quick_cpu());
        // Nothing beyond what the window shows: the rest is the quick run's anyway.
        s.base = None;
        s
    }
}

impl Settings {
    pub fn open_options(&self) -> OpenOptions {
        let base = self
            .base
            .as_ref()
            .map_or_else(OpenOptions::default, |p| p.run.data.options.clone());
        OpenOptions {
            cifar100_labels: if self.coarse_labels {
                Cifar100Labels::Coarse
            } else {
                Cifar100Labels::Fine
            },
            ..base
        }
    }

    /// The data a run with these settings trains on.
    pub fn data_config(&self) -> DataConfig {
        let mut data = self
            .base
            .as_ref()
            .map_or_else(|| RunConfig::quick_cpu().data, |p| p.run.data.clone());
        data.source = self.data.source();
        data.options = self.open_options();
        data.train_limit = (self.train_limit > 0).then_some(self.train_limit);
        data
    }

    /// The plan these settings describe (validated).
    pub fn plan(&self) -> Result<Plan, String> {
        let mut run = self
            .base
            .as_ref()
            .map_or_else(RunConfig::quick_cpu, |p| p.run.clone());
        let kept_optimizer = run.train.optim.optimizer.clone();
        let kept_schedule = run.train.schedule.clone();
        run.data = self.data_config();
        run.model.name = self.model.clone();
        run.model.resolution = (self.resolution > 0).then_some(self.resolution);
        run.model.weights = self
            .weights
            .as_ref()
            .filter(|w| !w.trim().is_empty())
            .map(|w| w.trim().into());
        run.device = self.device;
        run.train.memory_split = self.memory_split.max(1);
        run.train.epochs = self.epochs;
        run.train.batch_size = self.batch;
        run.train.seed = self.seed;
        run.train.target_accuracy = self.target_accuracy;
        // The library's defaults for each kind (the window shows only the kind and the rate).
        run.train.optim.optimizer = match self.optimizer {
            OptimizerChoice::SgdNesterov => OptimizerConfig::sgd_nesterov(self.lr),
            OptimizerChoice::Adam => OptimizerConfig::adam(self.lr),
            OptimizerChoice::AdamW => OptimizerConfig::adamw(self.lr),
        };
        // The base preset's own optimiser and schedule parameters when the window still
        // names the same kinds (only the learning rate is the window's).
        if optimizer_choice(&kept_optimizer) == self.optimizer {
            run.train.optim.optimizer = with_lr(kept_optimizer, self.lr);
        }
        run.train.schedule = match self.schedule {
            _ if schedule_choice(&kept_schedule) == self.schedule && self.base.is_some() => {
                kept_schedule
            }
            ScheduleChoice::Constant => ScheduleConfig::Constant,
            ScheduleChoice::OneCycle => ScheduleConfig::one_cycle(),
            ScheduleChoice::CosineWarmup => {
                let per_epoch = 1 + self.train_limit.max(1) / self.batch.max(1);
                ScheduleConfig::cosine_warmup_for((per_epoch * self.epochs) as u64)
            }
            ScheduleChoice::Exponential => ScheduleConfig::exponential(),
            ScheduleChoice::Step => ScheduleConfig::step_for(self.epochs as u64),
        };
        run.validate().map_err(|e| e.to_string())?;
        let tuned = Switches {
            grad_accum_steps: self.accum.max(1),
            amp: self.amp,
            pinned_memory: self.pin,
        };
        Ok(Plan {
            kind: if self.ablation {
                PlanKind::Ablation
            } else {
                PlanKind::Ab
            },
            repeats: self.repeats.max(1),
            preset: Preset {
                name: self
                    .base
                    .as_ref()
                    .map_or("window".into(), |p| p.name.clone()),
                description: self
                    .base
                    .as_ref()
                    .map_or_else(String::new, |p| p.description.clone()),
                run,
                tuned,
            },
        })
    }

    /// Adopts a preset file's run and tuned switches (what the window can show of it).
    pub fn apply_preset(&mut self, p: &Preset) {
        let r = &p.run;
        self.data = match &r.data.source {
            DataSource::Builtin => DataChoice::Builtin,
            DataSource::Cifar10 => DataChoice::Cifar10,
            DataSource::Cifar100 => DataChoice::Cifar100,
            DataSource::Path(p) => DataChoice::Path(p.display().to_string()),
        };
        self.train_limit = r.data.train_limit.unwrap_or(0);
        self.model = r.model.name.clone();
        self.epochs = r.train.epochs;
        self.batch = r.train.batch_size;
        self.seed = r.train.seed;
        self.lr = r.train.optim.optimizer.lr();
        self.optimizer = optimizer_choice(&r.train.optim.optimizer);
        self.schedule = schedule_choice(&r.train.schedule);
        self.target_accuracy = r.train.target_accuracy;
        self.resolution = r.model.resolution.unwrap_or(0);
        self.weights = r.model.weights.as_ref().map(|w| w.display().to_string());
        self.device = r.device;
        self.memory_split = r.train.memory_split;
        self.coarse_labels = r.data.options.cifar100_labels == Cifar100Labels::Coarse;
        self.base = Some(p.clone());
        self.accum = p.tuned.grad_accum_steps;
        self.amp = p.tuned.amp;
        self.pin = p.tuned.pinned_memory;
    }
}

fn optimizer_choice(o: &OptimizerConfig) -> OptimizerChoice {
    match o {
        OptimizerConfig::Sgd { .. } => OptimizerChoice::SgdNesterov,
        OptimizerConfig::Adam { .. } => OptimizerChoice::Adam,
        OptimizerConfig::AdamW { .. } => OptimizerChoice::AdamW,
    }
}

fn with_lr(mut o: OptimizerConfig, new: f64) -> OptimizerConfig {
    match &mut o {
        OptimizerConfig::Sgd { lr, .. }
        | OptimizerConfig::Adam { lr, .. }
        | OptimizerConfig::AdamW { lr, .. } => *lr = new,
    }
    o
}

fn schedule_choice(s: &ScheduleConfig) -> ScheduleChoice {
    match s {
        ScheduleConfig::Constant => ScheduleChoice::Constant,
        ScheduleConfig::OneCycle { .. } => ScheduleChoice::OneCycle,
        ScheduleConfig::CosineWarmup { .. } => ScheduleChoice::CosineWarmup,
        ScheduleConfig::Exponential { .. } => ScheduleChoice::Exponential,
        ScheduleConfig::Step { .. } => ScheduleChoice::Step,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loaded_preset_runs_as_its_file_says_and_saves_back_the_same() {
        let p = Preset::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/presets/efficientnet-b0-cifar10.toml"
        )))
        .expect("preset");
        let mut s = Settings::default();
        s.apply_preset(&p);
        let plan = s.plan().expect("plan");
        assert_eq!(plan.preset, p);
        // A change in the window wins over the file.
        s.lr = 0.5;
        s.schedule = ScheduleChoice::Constant;
        let run = s.plan().expect("plan").preset.run;
        assert_eq!(run.train.optim.optimizer.lr(), 0.5);
        assert_eq!(run.train.schedule, ScheduleConfig::Constant);
        assert_eq!(run.train.optim.groups, p.run.train.optim.groups);
    }
}
