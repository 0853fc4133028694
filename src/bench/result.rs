//! What a session produces: per-epoch records, per-run results and the session with its
//! environment. These are the report's source (JSON is exactly this, with a schema version)
//! and what the events carry; nothing here depends on a device.

use serde::{Deserialize, Serialize};

use crate::config::{RunConfig, Switches};
use crate::train::metrics::ClassMetrics;
use crate::train::timing::TimingSummary;
use crate::util::env::Environment;

/// Bumped whenever a field changes meaning or disappears (adding fields keeps it).
pub const SCHEMA_VERSION: u32 = 1;

/// Metrics after one epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    pub test_macro_f1: f64,
    /// Training images per second over the epoch (warm-up steps excluded in the first).
    pub images_per_sec: f64,
    /// Seconds since the run started, at the end of this epoch's evaluation.
    pub wall_secs: f64,
    /// Of which evaluation.
    pub eval_secs: f64,
    /// Learning rate (first group) at the end of the epoch.
    pub lr: f64,
    pub optimizer_steps: u64,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    #[default]
    Finished,
    /// Reached the target test accuracy before the epoch budget.
    ReachedTarget,
    /// Stopped by the user: the numbers cover what ran.
    Partial,
    Failed,
}

/// Mixed-precision bookkeeping.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AmpReport {
    /// Optimiser steps skipped because a gradient overflowed (fp16 loss scaling).
    pub skipped_steps: u64,
    /// The loss scale at the end (fp16), None for off/bf16.
    pub final_scale: Option<f64>,
}

/// One trained run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub arm: String,
    /// 0-based repeat index.
    pub repeat: usize,
    pub switches: Switches,
    pub status: RunStatus,
    pub epochs: Vec<EpochRecord>,
    pub micro_batch: usize,
    pub effective_batch: usize,
    pub optimizer_steps: u64,
    pub optimizer_steps_per_epoch: u64,
    pub final_test_accuracy: f64,
    pub final_macro_f1: f64,
    pub per_class: Vec<ClassMetrics>,
    /// Row = true class, column = predicted, row-major, `classes × classes`.
    pub confusion: Vec<u64>,
    pub classes: Vec<String>,
    /// Wall time of the run measured with a monotonic clock, including evaluation.
    pub wall_secs: f64,
    /// Wall time minus evaluation.
    pub train_secs: f64,
    pub eval_secs: f64,
    /// Seconds until test accuracy first reached the target, if one was set and reached.
    pub time_to_target_secs: Option<f64>,
    pub timing: TimingSummary,
    /// Peak resident memory of the process (host), bytes.
    pub peak_host_bytes: Option<u64>,
    /// Peak device memory (CUDA), bytes.
    pub peak_device_bytes: Option<u64>,
    pub amp: AmpReport,
    /// Pinned memory was requested but does not apply here (CPU: no host-to-device copy).
    pub pinned_memory_applicable: bool,
    pub error: Option<String>,
}

/// Mean and sample standard deviation over repeats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    pub sd: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return Self::default();
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Self { mean, sd, n }
    }
}

/// One row of the comparison table: an arm over its repeats.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmSummary {
    pub arm: String,
    pub switches: Switches,
    pub test_accuracy: Stat,
    pub macro_f1: Stat,
    pub wall_secs: Stat,
    pub train_secs: Stat,
    pub images_per_sec: Stat,
    pub peak_host_bytes: Option<u64>,
    pub peak_device_bytes: Option<u64>,
    /// Mean step-time breakdown, ms per optimiser step, by phase.
    pub phase_ms_per_step: Vec<(crate::train::timing::Phase, f64)>,
    /// Baseline's mean training time / this arm's (> 1: faster).
    pub speedup_vs_baseline: f64,
    pub time_to_target_secs: Option<Stat>,
    pub partial: bool,
}

/// A whole benchmark session.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionResult {
    pub schema_version: u32,
    pub preset_name: String,
    pub plan: String,
    pub repeats: usize,
    pub data_name: String,
    pub model_name: String,
    pub device: String,
    pub environment: Option<Environment>,
    /// The baseline run's full configuration (arms differ only in `switches`).
    pub config: Option<RunConfig>,
    pub runs: Vec<RunResult>,
    pub summary: Vec<ArmSummary>,
    /// What each switch changed, in words, for the report.
    pub notes: Vec<String>,
}

impl SessionResult {
    /// Recomputes `summary` from `runs` (arms in first-seen order; the first is the baseline).
    pub fn summarize(&mut self) {
        let mut arms: Vec<String> = Vec::new();
        for r in &self.runs {
            if !arms.contains(&r.arm) {
                arms.push(r.arm.clone());
            }
        }
        let mut rows: Vec<ArmSummary> = arms
            .iter()
            .map(|arm| {
                let runs: Vec<&RunResult> = self.runs.iter().filter(|r| &r.arm == arm).collect();
                let stat = |f: &dyn Fn(&RunResult) -> f64| {
                    Stat::of(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
                };
                let phases = runs
                    .first()
                    .map(|r| r.timing.phase_ms_per_step.clone())
                    .unwrap_or_default();
                let phase_ms_per_step = phases
                    .iter()
                    .enumerate()
                    .map(|(i, (phase, _))| {
                        let values: Vec<f64> = runs
                            .iter()
                            .filter_map(|r| r.timing.phase_ms_per_step.get(i).map(|p| p.1))
                            .collect();
                        (*phase, Stat::of(&values).mean)
                    })
                    .collect();
                let ttt: Vec<f64> = runs.iter().filter_map(|r| r.time_to_target_secs).collect();
                ArmSummary {
                    arm: arm.clone(),
                    switches: runs.first().map(|r| r.switches).unwrap_or_default(),
                    test_accuracy: stat(&|r| r.final_test_accuracy),
                    macro_f1: stat(&|r| r.final_macro_f1),
                    wall_secs: stat(&|r| r.wall_secs),
                    train_secs: stat(&|r| r.train_secs),
                    images_per_sec: stat(&|r| r.timing.images_per_sec),
                    peak_host_bytes: runs.iter().filter_map(|r| r.peak_host_bytes).max(),
                    peak_device_bytes: runs.iter().filter_map(|r| r.peak_device_bytes).max(),
                    phase_ms_per_step,
                    speedup_vs_baseline: 1.0,
                    time_to_target_secs: (!ttt.is_empty()).then(|| Stat::of(&ttt)),
                    partial: runs
                        .iter()
                        .any(|r| r.status == crate::bench::result::RunStatus::Partial),
                }
            })
            .collect();
        if let Some(base) = rows.first().map(|r| r.train_secs.mean) {
            for row in &mut rows {
                row.speedup_vs_baseline = if row.train_secs.mean > 0.0 {
                    base / row.train_secs.mean
                } else {
                    0.0
                };
            }
        }
        self.summary = rows;
    }
}
