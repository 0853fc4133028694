//! What a session produces: per-epoch records, per-run results and the session with its
//! environment. These are the report's source (JSON is exactly this, with a schema version)
//! and what the events carry; nothing here depends on a device.

use serde::{Deserialize, Serialize};

use crate::config::{RunConfig, Switches};
use crate::train::metrics::ClassMetrics;
use crate::train::timing::TimingSummary;
use crate::util::env::Environment;

/// Bumped whenever a field changes meaning or disappears (adding fields keeps it).
/// 2: `peak_host_bytes` is the arm's own peak (was the process's since start), the speed-up
/// is a ratio of images/s over finished runs (was of mean training time over every run) and
/// may be absent, summaries count only finished runs.
pub const SCHEMA_VERSION: u32 = 2;

/// What each figure of a summary means. The code computes them as written here, and every
/// report (and the window's table tooltips) prints these sentences, so a header never
/// means something else than its number.
pub mod definitions {
    pub const IMAGES_PER_SEC: &str = "images/s: training images per second over the timed optimiser steps, after the warm-up steps. A step is timed from its first batch request to the end of the optimiser update (data wait, host→device, forward, backward, optimiser); evaluation, warm-up steps and the loader restart between epochs are outside it. The per-epoch images/s of the curves is the same ratio over that epoch's timed steps. A run with no timed step (all its steps were warm-up) has no images/s and is left out of this mean, so its n can be lower than the arm's.";
    pub const SPEEDUP: &str = "speed-up: the arm's mean images/s ÷ the baseline's, over finished repeats only, i.e. the baseline's time per trained image ÷ the arm's (> 1: faster). Being per image, it stays fair when arms train different numbers of images (an image budget rounds down to whole optimiser steps of each arm). \"–\" where either side has no finished run.";
    pub const TRAIN_TIME: &str = "wall time: the whole run, evaluation included; train time: wall time minus evaluation, end to end (warm-up steps and loader restarts included). Neither is the basis of the speed-up.";
    pub const PEAK_HOST: &str = "host peak: the largest resident memory (RSS) of the annt process while the arm trained, mean over finished repeats. On Linux the kernel's high-water mark is reset when the arm starts, so each arm shows its own peak, which can be lower than an earlier arm's; elsewhere it is the largest RSS seen at the ends of steps and epochs. It counts the whole process: the loaded data set, the model and its gradients, the batch pipeline and, in the window, the GUI; \"above start\" subtracts what was resident when the arm began. (An outside tool reading the process's peak, such as /usr/bin/time, then sees only the peak since the last arm started.)";
    pub const PEAK_DEVICE: &str = "device peak: the most GPU memory the arm's tensors held at once (weights, optimiser state, activations, gradients, cuDNN workspaces): the high-water mark of the device's stream-ordered memory pool, reset when the arm starts and read when it ends, as PyTorch's max_memory_allocated. It is not total − free (which after a sync shows only what is still allocated) and leaves out other processes. \"–\" on the CPU.";
    pub const REPEATS: &str = "n: the finished repeats a figure rests on (a run that reached its target accuracy counts as finished). Failed and stopped runs are listed under Runs but kept out of every mean.";
    pub const TIME_TO_TARGET: &str = "time to target: wall seconds (evaluation included) from a run's start until its test accuracy, measured after each epoch, first reached the session's target accuracy; the mean over the finished runs that reached it, with k/n when only k of n did, \"not reached\" when none did. Shown only when a target is set.";
    pub const ORDER: &str = "order: the arms run in a seeded order rotated by one place per repeat (two arms alternate; over n repeats of n arms each arm runs once in every position), so that warm caches and clock boosts do not favour one arm; the Runs table gives each run's position.";

    /// Every definition, in the order reports print them.
    pub const ALL: [&str; 7] = [
        IMAGES_PER_SEC,
        SPEEDUP,
        TRAIN_TIME,
        PEAK_HOST,
        PEAK_DEVICE,
        REPEATS,
        ORDER,
    ];
}

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
    /// Training images per second over this epoch's timed steps (see
    /// [`definitions::IMAGES_PER_SEC`]); 0 when every step of the epoch was warm-up.
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
    /// The CPU's bf16 unit the convolutions' matrix products ran on (`--amp bf16` on a CPU
    /// that has one, e.g. "AMX (tdpbf16ps)"); None elsewhere, including the numerics-only
    /// half-precision path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_bf16_unit: Option<String>,
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
    /// Training images the run trained on, warm-up included.
    #[serde(default)]
    pub trained_images: u64,
    /// 0-based position of this run within its repeat (the order is shuffled per repeat:
    /// [`definitions::ORDER`]).
    #[serde(default)]
    pub order: usize,
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
    /// The process's peak resident memory while this run trained, bytes
    /// ([`definitions::PEAK_HOST`]).
    pub peak_host_bytes: Option<u64>,
    /// Resident memory when the run started, bytes.
    #[serde(default)]
    pub host_bytes_at_start: Option<u64>,
    /// Peak device memory in use (CUDA), bytes ([`definitions::PEAK_DEVICE`]).
    pub peak_device_bytes: Option<u64>,
    /// Device memory in use when the run started (CUDA), bytes.
    #[serde(default)]
    pub device_bytes_at_start: Option<u64>,
    pub amp: AmpReport,
    /// Pinned memory was requested but does not apply here (CPU: no host-to-device copy).
    pub pinned_memory_applicable: bool,
    pub error: Option<String>,
    /// Where this run's trained weights were saved (safetensors), when they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_file: Option<std::path::PathBuf>,
    /// Checkpoints the run wrote (`engine::checkpoint`); none when checkpointing was off.
    #[serde(default, skip_serializing_if = "CheckpointStats::is_empty")]
    pub checkpoints: CheckpointStats,
    /// Set when the run continued from a checkpoint after an interruption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<Resumed>,
    /// The per-step curves: one point per progress event (at most [`CURVE_POINTS`]; when
    /// there would be more, every other one is dropped, so the points stay evenly spread).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curve: Vec<CurvePoint>,
}

/// Points kept in a run's [`RunResult::curve`].
pub const CURVE_POINTS: usize = 2000;

/// A run at one step, as its progress event said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub step: u64,
    pub wall_secs: f64,
    /// Mean training loss since the previous point.
    pub loss: f64,
    /// Images/s of the run's timed steps so far.
    pub images_per_sec: f64,
    pub lr: f64,
    pub loss_scale: Option<f64>,
    pub host_mib: Option<f64>,
    pub device_mib: Option<f64>,
}

/// Appends `p` to `curve`, halving it (every other point) when it is full.
pub fn push_curve_point(curve: &mut Vec<CurvePoint>, p: CurvePoint) {
    if curve.len() >= CURVE_POINTS {
        let mut i = 0;
        curve.retain(|_| {
            i += 1;
            i % 2 == 1
        });
    }
    curve.push(p);
}

/// What writing a run's checkpoints cost. Their time is part of the run's wall and
/// training time but never of a step's (images/s and ms/step exclude it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointStats {
    pub count: u32,
    pub total_secs: f64,
    pub max_secs: f64,
    /// Size of the last one on disk.
    pub last_bytes: u64,
}

impl CheckpointStats {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn add(&mut self, secs: f64, bytes: u64) {
        self.count += 1;
        self.total_secs += secs;
        self.max_secs = self.max_secs.max(secs);
        self.last_bytes = bytes;
    }

    /// Mean seconds per checkpoint.
    pub fn mean_secs(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.total_secs / f64::from(self.count)
        }
    }
}

/// Where a resumed run picked up.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resumed {
    /// Times it was resumed (each from its newest checkpoint).
    pub times: u32,
    /// The last resume's starting point: optimiser step, epochs finished, micro-batches of
    /// the next epoch already trained.
    pub from_step: u64,
    pub from_epoch: usize,
    pub from_batch: usize,
    /// Whether the kernels that ran are deterministic (the CPU's are), so the run is
    /// bit-identical to one never interrupted; on CUDA it is equal up to the
    /// non-deterministic order of some reductions.
    pub bit_identical: bool,
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
    /// [`definitions::PEAK_HOST`], bytes; `n` 0 when not measured.
    pub peak_host: Stat,
    /// Host peak minus the resident memory at the arm's start, bytes.
    pub peak_host_above_start: Stat,
    /// [`definitions::PEAK_DEVICE`], bytes; `n` 0 on the CPU.
    pub peak_device: Stat,
    /// Mean step-time breakdown, ms per optimiser step, by phase.
    pub phase_ms_per_step: Vec<(crate::train::timing::Phase, f64)>,
    /// [`definitions::SPEEDUP`]; None where the arm or the baseline has no finished run.
    pub speedup_vs_baseline: Option<f64>,
    pub time_to_target_secs: Option<Stat>,
    /// Runs of this arm in the session, whatever their status.
    pub runs_total: usize,
    /// Of which finished (or reached the target): the runs every figure above rests on.
    pub runs_counted: usize,
    /// Some run of this arm was stopped before the end.
    pub partial: bool,
    /// Some run of this arm failed.
    pub failed: bool,
}

impl ArmSummary {
    /// Whether any run of this arm finished, i.e. whether the figures mean anything.
    pub fn has_figures(&self) -> bool {
        self.runs_counted > 0
    }
}

impl RunStatus {
    /// Whether a run with this status enters the summaries' means: it ran its whole budget
    /// (or stopped because it reached the target). Stopped and failed runs do not.
    pub fn counts(self) -> bool {
        matches!(self, RunStatus::Finished | RunStatus::ReachedTarget)
    }
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
    /// The plan's arm labels in plan order; the first is the baseline of every speed-up.
    /// (Empty in reports written before it existed: then the first arm seen.)
    #[serde(default)]
    pub arms: Vec<String>,
    /// The seed of the per-repeat arm order ([`definitions::ORDER`]).
    #[serde(default)]
    pub order_seed: u64,
    pub runs: Vec<RunResult>,
    pub summary: Vec<ArmSummary>,
    /// What each switch changed, in words, for the report.
    pub notes: Vec<String>,
    /// The paper's figures for the preset's recipe, when it has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paper: Option<crate::config::PaperFigures>,
}

impl SessionResult {
    /// Recomputes `summary` from `runs`: one row per arm in plan order (`arms`, else first
    /// seen), each figure a mean over that arm's finished runs only
    /// ([`definitions::REPEATS`]), speed-ups as [`definitions::SPEEDUP`] says.
    pub fn summarize(&mut self) {
        let mut arms: Vec<String> = self.arms.clone();
        for r in &self.runs {
            if !arms.contains(&r.arm) {
                arms.push(r.arm.clone());
            }
        }
        let mut rows: Vec<ArmSummary> = arms
            .iter()
            .map(|arm| {
                let all: Vec<&RunResult> = self.runs.iter().filter(|r| &r.arm == arm).collect();
                let runs: Vec<&RunResult> =
                    all.iter().copied().filter(|r| r.status.counts()).collect();
                let stat = |f: &dyn Fn(&RunResult) -> Option<f64>| {
                    Stat::of(&runs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
                };
                let phase_ms_per_step = crate::train::timing::Phase::ALL
                    .iter()
                    .filter_map(|phase| {
                        let values: Vec<f64> = runs
                            .iter()
                            .filter_map(|r| {
                                r.timing
                                    .phase_ms_per_step
                                    .iter()
                                    .find(|p| p.0 == *phase)
                                    .map(|p| p.1)
                            })
                            .collect();
                        (!values.is_empty()).then(|| (*phase, Stat::of(&values).mean))
                    })
                    .collect();
                let ttt: Vec<f64> = runs.iter().filter_map(|r| r.time_to_target_secs).collect();
                let bytes = |b: Option<u64>| b.map(|b| b as f64);
                ArmSummary {
                    arm: arm.clone(),
                    switches: all.first().map(|r| r.switches).unwrap_or_default(),
                    test_accuracy: stat(&|r| Some(r.final_test_accuracy)),
                    macro_f1: stat(&|r| Some(r.final_macro_f1)),
                    wall_secs: stat(&|r| Some(r.wall_secs)),
                    train_secs: stat(&|r| Some(r.train_secs)),
                    // A run too short to time a step after its warm-up has no speed (its
                    // timing says 0): it is left out rather than averaged in as 0 img/s.
                    images_per_sec: stat(&|r| {
                        (r.timing.measured_steps > 0).then_some(r.timing.images_per_sec)
                    }),
                    peak_host: stat(&|r| bytes(r.peak_host_bytes)),
                    peak_host_above_start: stat(&|r| {
                        Some(r.peak_host_bytes?.saturating_sub(r.host_bytes_at_start?) as f64)
                    }),
                    peak_device: stat(&|r| bytes(r.peak_device_bytes)),
                    phase_ms_per_step,
                    speedup_vs_baseline: None,
                    time_to_target_secs: (!ttt.is_empty()).then(|| Stat::of(&ttt)),
                    runs_total: all.len(),
                    runs_counted: runs.len(),
                    partial: all.iter().any(|r| r.status == RunStatus::Partial),
                    failed: all.iter().any(|r| r.status == RunStatus::Failed),
                }
            })
            .collect();
        let base = rows
            .first()
            .filter(|b| b.has_figures() && b.images_per_sec.mean > 0.0)
            .map(|b| b.images_per_sec.mean);
        for row in &mut rows {
            row.speedup_vs_baseline = base
                .filter(|_| row.has_figures() && row.images_per_sec.mean > 0.0)
                .map(|b| row.images_per_sec.mean / b);
        }
        self.summary = rows;
    }
}
