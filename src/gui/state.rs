//! The settings the window persists between launches (eframe storage): a preset, edited in
//! place, and the plan around it.

use annt::bench::plan::{Plan, PlanKind};
use annt::config::{ConfigError, DataConfig, DataSource, Preset, RunConfig, Switches};
use annt::data::Cifar100Labels;
use annt::train::optim::OptimizerConfig;
use annt::train::schedule::ScheduleConfig;
use serde::{Deserialize, Serialize};

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

/// What the window edits and persists: a preset itself (the run, and the tuned arm's
/// switches) and the plan around it. The window's widgets edit the preset's own fields, so
/// what it does not show — label smoothing, parameter groups, clipping, augmentation, a
/// schedule's parameters it has no widget for — is simply kept as loaded, and a loaded
/// preset runs and saves back exactly as its file says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub preset: Preset,
    /// All 2³ (2² on the CPU) switch combinations instead of baseline vs tuned.
    pub ablation: bool,
    pub repeats: usize,
    /// Save each finished run's trained weights (into a folder per session under annt's
    /// data folder), so "Save trained weights…" can copy them out.
    pub keep_weights: bool,
}

impl Default for Settings {
    /// The quick CPU run (`Preset::quick_cpu`, the same as `presets/quick-cpu.toml`).
    fn default() -> Self {
        Self {
            preset: Preset::quick_cpu(),
            ablation: false,
            repeats: 1,
            keep_weights: false,
        }
    }
}

impl Settings {
    pub fn run(&self) -> &RunConfig {
        &self.preset.run
    }

    pub fn run_mut(&mut self) -> &mut RunConfig {
        &mut self.preset.run
    }

    /// The tuned arm's switches.
    pub fn tuned_mut(&mut self) -> &mut Switches {
        &mut self.preset.tuned
    }

    /// The data a run with these settings trains on.
    pub fn data_config(&self) -> DataConfig {
        self.preset.run.data.clone()
    }

    /// How the title bar names the data: the folder's or archive's own name for a path.
    pub fn data_label(&self) -> String {
        match &self.preset.run.data.source {
            DataSource::Builtin => "built-in".into(),
            DataSource::Cifar10 => "CIFAR-10".into(),
            DataSource::Cifar100 => "CIFAR-100".into(),
            DataSource::Path(p) => p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
        }
    }

    /// CIFAR-100's 20 superclasses instead of its 100 classes.
    pub fn coarse_labels(&self) -> bool {
        self.preset.run.data.options.cifar100_labels == Cifar100Labels::Coarse
    }

    pub fn set_coarse_labels(&mut self, coarse: bool) {
        self.preset.run.data.options.cifar100_labels = if coarse {
            Cifar100Labels::Coarse
        } else {
            Cifar100Labels::Fine
        };
    }

    pub fn optimizer(&self) -> OptimizerChoice {
        optimizer_choice(&self.preset.run.train.optim.optimizer)
    }

    /// Another kind of optimiser with the library's defaults for it, at the current rate.
    pub fn set_optimizer(&mut self, choice: OptimizerChoice) {
        if choice == self.optimizer() {
            return;
        }
        let optim = &mut self.preset.run.train.optim.optimizer;
        let lr = optim.lr();
        *optim = match choice {
            OptimizerChoice::SgdNesterov => OptimizerConfig::sgd_nesterov(lr),
            OptimizerChoice::Adam => OptimizerConfig::adam(lr),
            OptimizerChoice::AdamW => OptimizerConfig::adamw(lr),
        };
    }

    pub fn lr(&self) -> f64 {
        self.preset.run.train.optim.optimizer.lr()
    }

    pub fn set_lr(&mut self, new: f64) {
        let o = &mut self.preset.run.train.optim.optimizer;
        match o {
            OptimizerConfig::Sgd { lr, .. }
            | OptimizerConfig::Adam { lr, .. }
            | OptimizerConfig::AdamW { lr, .. } => *lr = new,
        }
    }

    pub fn schedule(&self) -> ScheduleChoice {
        schedule_choice(&self.preset.run.train.schedule)
    }

    /// Another kind of schedule with the library's defaults for it, sized for the run as it
    /// is now (cosine's warm-up: 5 % of its optimiser steps; step: every third of its
    /// epochs). The sizes are then the schedule's own, shown and kept like a preset's.
    pub fn set_schedule(&mut self, choice: ScheduleChoice) {
        if choice == self.schedule() {
            return;
        }
        let train = &self.preset.run.train;
        let epochs = train.epochs as u64;
        self.preset.run.train.schedule = match choice {
            ScheduleChoice::Constant => ScheduleConfig::Constant,
            ScheduleChoice::OneCycle => ScheduleConfig::one_cycle(),
            ScheduleChoice::CosineWarmup => {
                let per_epoch = self
                    .preset
                    .run
                    .data
                    .train_limit
                    .map_or(1, |n| 1 + n / train.batch_size.max(1));
                ScheduleConfig::cosine_warmup_for(per_epoch as u64 * epochs)
            }
            ScheduleChoice::Exponential => ScheduleConfig::exponential(),
            ScheduleChoice::Step => ScheduleConfig::step_for(epochs),
        };
    }

    /// The plan these settings describe (validated).
    pub fn plan(&self) -> Result<Plan, ConfigError> {
        self.preset.run.validate()?;
        Ok(Plan {
            kind: if self.ablation {
                PlanKind::Ablation
            } else {
                PlanKind::Ab
            },
            repeats: self.repeats.max(1),
            preset: self.preset.clone(),
        })
    }

    /// Adopts a preset file as it is.
    pub fn apply_preset(&mut self, p: &Preset) {
        self.preset = p.clone();
    }
}

fn optimizer_choice(o: &OptimizerConfig) -> OptimizerChoice {
    match o {
        OptimizerConfig::Sgd { .. } => OptimizerChoice::SgdNesterov,
        OptimizerConfig::Adam { .. } => OptimizerChoice::Adam,
        OptimizerConfig::AdamW { .. } => OptimizerChoice::AdamW,
    }
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
        // A change in the window wins over the file; what it does not show is kept.
        s.set_lr(0.5);
        s.set_schedule(ScheduleChoice::Constant);
        let run = s.plan().expect("plan").preset.run;
        assert_eq!(run.train.optim.optimizer.lr(), 0.5);
        assert_eq!(run.train.schedule, ScheduleConfig::Constant);
        assert_eq!(run.train.optim.groups, p.run.train.optim.groups);
        assert_eq!(run.train.label_smoothing, p.run.train.label_smoothing);
    }

    #[test]
    fn another_optimiser_keeps_the_rate_and_the_same_one_keeps_its_parameters() {
        let mut s = Settings::default();
        s.set_lr(0.07);
        let before = s.preset.run.train.optim.optimizer.clone();
        s.set_optimizer(s.optimizer());
        assert_eq!(s.preset.run.train.optim.optimizer, before);
        s.set_optimizer(OptimizerChoice::AdamW);
        assert_eq!(s.optimizer(), OptimizerChoice::AdamW);
        assert_eq!(s.lr(), 0.07);
        s.set_coarse_labels(true);
        assert!(s.coarse_labels());
    }

    #[test]
    fn the_default_is_the_shipped_quick_preset() {
        assert_eq!(
            Settings::default().plan().expect("plan").preset,
            Preset::quick_cpu()
        );
    }
}
