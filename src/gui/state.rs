//! The settings the window persists between launches (eframe storage) and turns into a plan.

use annt::accel::amp::AmpMode;
use annt::bench::plan::{Plan, PlanKind};
use annt::config::{Preset, RunConfig, Switches};
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
    fn source(&self) -> String {
        match self {
            DataChoice::Builtin => "builtin".into(),
            DataChoice::Cifar10 => "cifar10".into(),
            DataChoice::Cifar100 => "cifar100".into(),
            DataChoice::Path(p) => p.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizerChoice {
    SgdNesterov,
    Adam,
    AdamW,
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
    pub one_cycle: bool,
    pub seed: u64,
    pub target_accuracy: Option<f64>,
    /// The tuned arm's switches.
    pub accum: usize,
    pub amp: AmpMode,
    pub pin: bool,
    pub ablation: bool,
    pub repeats: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data: DataChoice::Builtin,
            coarse_labels: false,
            train_limit: 2000,
            model: "resnet8-tiny".into(),
            epochs: 2,
            batch: 64,
            optimizer: OptimizerChoice::SgdNesterov,
            lr: 0.1,
            one_cycle: true,
            seed: 0,
            target_accuracy: None,
            accum: 2,
            amp: AmpMode::Bf16,
            pin: false,
            ablation: false,
            repeats: 1,
        }
    }
}

impl Settings {
    pub fn open_options(&self) -> OpenOptions {
        OpenOptions {
            cifar100_labels: if self.coarse_labels {
                Cifar100Labels::Coarse
            } else {
                Cifar100Labels::Fine
            },
            ..OpenOptions::default()
        }
    }

    /// The plan these settings describe (validated).
    pub fn plan(&self) -> Result<Plan, String> {
        let mut run = RunConfig::quick_cpu();
        run.data.source = self.data.source();
        run.data.options = self.open_options();
        run.data.train_limit = (self.train_limit > 0).then_some(self.train_limit);
        run.model.name = self.model.clone();
        run.train.epochs = self.epochs;
        run.train.batch_size = self.batch;
        run.train.seed = self.seed;
        run.train.target_accuracy = self.target_accuracy;
        run.train.optim.optimizer = match self.optimizer {
            OptimizerChoice::SgdNesterov => OptimizerConfig::Sgd {
                lr: self.lr,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 5e-4,
            },
            OptimizerChoice::Adam => OptimizerConfig::Adam {
                lr: self.lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            OptimizerChoice::AdamW => OptimizerConfig::AdamW {
                lr: self.lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.05,
            },
        };
        run.train.schedule = if self.one_cycle {
            ScheduleConfig::OneCycle {
                pct_start: 0.3,
                div_factor: 25.0,
                final_div_factor: 1e4,
                anneal_cos: true,
            }
        } else {
            ScheduleConfig::Constant
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
                name: "window".into(),
                description: String::new(),
                run,
                tuned,
            },
        })
    }

    /// Adopts a preset file's run and tuned switches (what the window can show of it).
    pub fn apply_preset(&mut self, p: &Preset) {
        let r = &p.run;
        self.data = match r.data.source.as_str() {
            "builtin" => DataChoice::Builtin,
            "cifar10" => DataChoice::Cifar10,
            "cifar100" => DataChoice::Cifar100,
            other => DataChoice::Path(other.into()),
        };
        self.train_limit = r.data.train_limit.unwrap_or(0);
        self.model = r.model.name.clone();
        self.epochs = r.train.epochs;
        self.batch = r.train.batch_size;
        self.seed = r.train.seed;
        self.lr = r.train.optim.optimizer.lr();
        self.optimizer = match r.train.optim.optimizer {
            OptimizerConfig::Sgd { .. } => OptimizerChoice::SgdNesterov,
            OptimizerConfig::Adam { .. } => OptimizerChoice::Adam,
            OptimizerConfig::AdamW { .. } => OptimizerChoice::AdamW,
        };
        self.one_cycle = matches!(r.train.schedule, ScheduleConfig::OneCycle { .. });
        self.accum = p.tuned.grad_accum_steps;
        self.amp = p.tuned.amp;
        self.pin = p.tuned.pinned_memory;
    }
}
