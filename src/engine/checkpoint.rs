//! Checkpoints of the run in flight, so an interrupted session continues where it stopped.
//!
//! A checkpoint is a folder `step-<optimiser step, 8 digits>/` in the run's own folder
//! (`<session>/checkpoints/r<repeat>-<position>-<arm>/`) holding
//! - `weights.safetensors`: every model tensor under its torchvision name, batch-norm
//!   statistics included (loadable as pretrained weights: `--weights`);
//! - `optimizer.safetensors`: the optimiser's moment buffers (`<param>.m`, `<param>.v`);
//! - `state.json`: [`RunState`] — the step, the epoch and the micro-batches of it already
//!   trained, the loss scaler, each parameter's update count, the epochs' metrics so far,
//!   the step timer's totals and what identifies the run (its fingerprint).
//!
//! It is written into `.partial-step-…/`, every file flushed to disk, then renamed to its
//! final name and the parent folder synced: a reader sees a whole checkpoint or none. The
//! last two are kept (if the newest is damaged, the one before it still resumes).
//!
//! There is no random-number state to save: every random draw of a run is a pure function
//! of the seed and a position — the data order of (seed, epoch), an image's augmentation of
//! (seed, epoch, image), dropout and stochastic-depth masks of (seed, epoch, image) and
//! (seed, step, micro-batch) — so the step, the epoch and the batch within it restore all
//! of them. On the CPU annt's kernels are deterministic, so a resumed run is bit-identical to
//! one that was never interrupted (tested in `tests/resume.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::accel::amp::LossScaler;
use crate::bench::result::{CheckpointStats, EpochRecord};
use crate::models::Model;
use crate::train::optim::{Optimizer, OptimizerSnapshot};
use crate::train::timing::TimerTotals;

pub const STATE_FILE: &str = "state.json";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Bumped when [`RunState`] changes meaning; another format is refused, not misread.
pub const FORMAT: u32 = 1;
/// Checkpoints kept per run.
pub const KEEP: usize = 2;

/// When the run in flight writes a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CheckpointPolicy {
    /// After every N-th epoch (0: not by epochs). The last epoch writes none: the run's
    /// result, recorded in the journal right after it, supersedes it.
    pub every_epochs: usize,
    /// Also after the first optimiser step once this many minutes have passed since the
    /// last checkpoint (or the run's start), mid-epoch included.
    pub every_minutes: Option<f64>,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            every_epochs: 1,
            every_minutes: None,
        }
    }
}

impl CheckpointPolicy {
    /// No checkpoints at all.
    pub const OFF: Self = Self {
        every_epochs: 0,
        every_minutes: None,
    };

    pub fn is_off(&self) -> bool {
        self.every_epochs == 0 && self.every_minutes.is_none()
    }

    /// Whether the end of 0-based `epoch` (of `epochs`) writes one.
    pub fn after_epoch(&self, epoch: usize, epochs: usize) -> bool {
        self.every_epochs > 0 && (epoch + 1).is_multiple_of(self.every_epochs) && epoch + 1 < epochs
    }

    /// Whether one is due by time, `since` the last one.
    pub fn by_time(&self, since: Instant) -> bool {
        self.every_minutes
            .is_some_and(|m| since.elapsed().as_secs_f64() >= m * 60.0)
    }
}

/// One run's checkpoints: where they go, when, and whether the run starts from the latest.
#[derive(Clone, Debug)]
pub struct RunCheckpoints {
    pub dir: PathBuf,
    pub policy: CheckpointPolicy,
    /// Continue from the newest checkpoint in `dir` (a resumed session).
    pub resume: bool,
    /// The run had started before the interruption (the journal says so): a missing
    /// checkpoint is then worth a message.
    pub was_started: bool,
}

impl RunCheckpoints {
    /// The folder of a run's checkpoints in its session's folder:
    /// `checkpoints/r<repeat>-<position>-<arm>` (1-based; two arms may share a label).
    pub fn dir_for(session_dir: &Path, run: &super::journal::RunKey) -> PathBuf {
        let slug = crate::util::file_safe(&run.arm.replace('×', "x"));
        session_dir.join("checkpoints").join(format!(
            "r{}-{}-{slug}",
            run.repeat + 1,
            run.order + 1
        ))
    }
}

/// Everything of a run that is not a tensor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub format: u32,
    /// [`fingerprint`] of the run's configuration and data: a checkpoint of another run is
    /// refused.
    pub fingerprint: String,
    pub model: String,
    pub arm: String,
    pub repeat: usize,
    /// 0-based epoch in progress (equal to the epochs finished when `batch` is 0).
    pub epoch: usize,
    /// Micro-batches of `epoch` already trained (a whole number of optimiser steps).
    pub batch: usize,
    /// Optimiser steps taken.
    pub step: u64,
    pub trained_images: u64,
    /// Loss sum, correct predictions and images of `epoch` so far.
    pub epoch_loss_sum: f64,
    pub epoch_correct: u64,
    pub epoch_seen: u64,
    pub epochs_done: Vec<EpochRecord>,
    pub eval_secs: f64,
    /// The run's wall time so far (every earlier process's share).
    pub wall_secs: f64,
    pub time_to_target_secs: Option<f64>,
    /// The last evaluation's confusion counts.
    pub confusion: Vec<u64>,
    pub timer: TimerTotals,
    pub scaler: Option<LossScaler>,
    pub optimizer_steps: u64,
    pub param_steps: Vec<(String, u64)>,
    pub peak_host_bytes: Option<u64>,
    /// The run's checkpoints up to and including this one (its time measured up to the
    /// writing of this file).
    pub checkpoints: CheckpointStats,
    /// Times the run has been resumed before this checkpoint.
    pub resumes: u32,
    /// The per-step curve so far.
    #[serde(default)]
    pub curve: Vec<crate::bench::result::CurvePoint>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot write the checkpoint {} ({reason})", path.display())]
    Write { path: PathBuf, reason: String },
    #[error("checkpoint {} is unreadable ({reason})", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("checkpoint {} belongs to another run ({reason})", path.display())]
    Foreign { path: PathBuf, reason: String },
}

/// A stable hash of what makes two runs the same computation: the arm's whole
/// configuration and the data set's name and split sizes (FNV-1a, 64 bits, hex).
pub fn fingerprint(config_json: &str, data: &crate::data::Dataset) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let text = format!(
        "{config_json}\n{}\n{}\n{}",
        data.name,
        data.train.len(),
        data.test.len()
    );
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn write_err(path: &Path) -> impl Fn(String) -> CheckpointError + '_ {
    move |reason| CheckpointError::Write {
        path: path.to_path_buf(),
        reason,
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes a checkpoint of `model` and `optimizer` with `state` into `dir` and drops all but
/// the newest [`KEEP`]. `state.checkpoints` gets this checkpoint's time (measured from
/// `started`, up to the state file, which is written last and is a few kB) and size.
pub fn save(
    dir: &Path,
    state: &mut RunState,
    model: &Model,
    optimizer: &Optimizer,
    started: Instant,
) -> Result<(), CheckpointError> {
    let name = format!("step-{:08}", state.step);
    let final_dir = dir.join(&name);
    let tmp = dir.join(format!(".partial-{name}"));
    let err = write_err(&tmp);
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir)(e.to_string()))?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| err(e.to_string()))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| err(e.to_string()))?;
    let result = (|| {
        crate::models::weights::save(model, &tmp.join(WEIGHTS_FILE))
            .map_err(|e| err(e.to_string()))?;
        let snap = optimizer.snapshot().map_err(|e| err(e.to_string()))?;
        let tensors: HashMap<String, Tensor> = snap.tensors.into_iter().collect();
        let opt_path = tmp.join(OPTIMIZER_FILE);
        candle_core::safetensors::save(&tensors, &opt_path).map_err(|e| err(e.to_string()))?;
        std::fs::File::open(&opt_path)
            .and_then(|f| f.sync_all())
            .map_err(|e| err(e.to_string()))?;
        let bytes = [WEIGHTS_FILE, OPTIMIZER_FILE]
            .iter()
            .filter_map(|f| std::fs::metadata(tmp.join(f)).ok())
            .map(|m| m.len())
            .sum();
        state
            .checkpoints
            .add(started.elapsed().as_secs_f64(), bytes);
        let text = serde_json::to_vec_pretty(state).map_err(|e| err(e.to_string()))?;
        crate::util::atomic_write::write_atomic(&tmp.join(STATE_FILE), &text)
            .map_err(|e| err(e.to_string()))?;
        sync_dir(&tmp).map_err(|e| err(e.to_string()))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if final_dir.exists() {
        // The same step written again (a resumed run checkpointing where it resumed).
        std::fs::remove_dir_all(&final_dir).map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| err(e.to_string()))?;
    sync_dir(dir).map_err(|e| err(e.to_string()))?;
    for old in complete(dir).into_iter().rev().skip(KEEP) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}

/// The complete checkpoints in `dir`, oldest first (a `.partial-` folder is not one).
pub fn complete(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// A checkpoint read back.
pub struct Loaded {
    pub path: PathBuf,
    pub state: RunState,
    pub weights: HashMap<String, Tensor>,
    pub optimizer: OptimizerSnapshot,
}

/// Reads the checkpoint folder `path`.
pub fn load(path: &Path) -> Result<Loaded, CheckpointError> {
    let damaged = |reason: String| CheckpointError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    let text =
        std::fs::read(path.join(STATE_FILE)).map_err(|e| damaged(format!("{STATE_FILE}: {e}")))?;
    let state: RunState =
        serde_json::from_slice(&text).map_err(|e| damaged(format!("{STATE_FILE}: {e}")))?;
    if state.format != FORMAT {
        return Err(damaged(format!(
            "format {} (this annt reads format {FORMAT})",
            state.format
        )));
    }
    let weights = candle_core::safetensors::load(path.join(WEIGHTS_FILE), &Device::Cpu)
        .map_err(|e| damaged(format!("{WEIGHTS_FILE}: {e}")))?;
    let tensors = candle_core::safetensors::load(path.join(OPTIMIZER_FILE), &Device::Cpu)
        .map_err(|e| damaged(format!("{OPTIMIZER_FILE}: {e}")))?;
    let optimizer = OptimizerSnapshot {
        steps: state.optimizer_steps,
        param_steps: state.param_steps.clone(),
        tensors: tensors.into_iter().collect(),
    };
    Ok(Loaded {
        path: path.to_path_buf(),
        state,
        weights,
        optimizer,
    })
}

/// The newest readable checkpoint in `dir`, and a message for each newer one that could
/// not be read (skipped). `None` when there is none.
pub fn latest(dir: &Path) -> (Option<Loaded>, Vec<CheckpointError>) {
    let mut problems = Vec::new();
    for path in complete(dir).into_iter().rev() {
        match load(&path) {
            Ok(l) => return (Some(l), problems),
            Err(e) => problems.push(e),
        }
    }
    (None, problems)
}

impl Loaded {
    /// Refuses a checkpoint of another run: another configuration or data set (the
    /// fingerprint), model, arm or repeat.
    pub fn check(
        &self,
        fingerprint: &str,
        model: &str,
        arm: &str,
        repeat: usize,
    ) -> Result<(), CheckpointError> {
        let s = &self.state;
        let why = if s.model != model {
            Some(format!(
                "it is of model {}, this run trains {model}",
                s.model
            ))
        } else if s.arm != arm || s.repeat != repeat {
            Some(format!(
                "it is of arm {} repeat {}, this run is {arm} repeat {}",
                s.arm,
                s.repeat + 1,
                repeat + 1
            ))
        } else if s.fingerprint != fingerprint {
            Some("its configuration or data set differs from this run's".to_string())
        } else {
            None
        };
        match why {
            Some(reason) => Err(CheckpointError::Foreign {
                path: self.path.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Puts the weights (batch-norm statistics included) and the optimiser state back;
    /// nothing is changed unless every tensor matches.
    pub fn apply(&self, model: &Model, optimizer: &mut Optimizer) -> Result<(), CheckpointError> {
        let foreign = |reason: String| CheckpointError::Foreign {
            path: self.path.clone(),
            reason,
        };
        let mut updates = Vec::new();
        for p in model.params().iter() {
            let t = self
                .weights
                .get(&p.name)
                .ok_or_else(|| foreign(format!("it has no tensor {}", p.name)))?;
            let t = crate::models::params::value_for(&p.var, t, &p.name).map_err(foreign)?;
            updates.push((p.var.clone(), t));
        }
        optimizer.restore(&self.optimizer).map_err(foreign)?;
        for (var, t) in updates {
            var.set(&t).map_err(|e| foreign(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_skips_the_last_epoch_and_counts_minutes() {
        let p = CheckpointPolicy::default();
        assert!(p.after_epoch(0, 3) && p.after_epoch(1, 3) && !p.after_epoch(2, 3));
        let every2 = CheckpointPolicy {
            every_epochs: 2,
            every_minutes: None,
        };
        assert!(!every2.after_epoch(0, 9) && every2.after_epoch(1, 9));
        assert!(CheckpointPolicy::OFF.is_off() && !CheckpointPolicy::OFF.after_epoch(0, 9));
        let now = CheckpointPolicy {
            every_epochs: 0,
            every_minutes: Some(0.0),
        };
        assert!(now.by_time(Instant::now()) && !p.by_time(Instant::now()));
    }

    #[test]
    fn only_whole_checkpoint_folders_count_and_a_damaged_newest_falls_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["step-00000010", "step-00000020", ".partial-step-00000030"] {
            std::fs::create_dir(dir.path().join(name)).expect("mkdir");
        }
        let found = complete(dir.path());
        assert_eq!(found.len(), 2);
        assert!(found[1].ends_with("step-00000020"));
        // Neither has a state file: both are reported, none is used.
        let (got, problems) = latest(dir.path());
        assert!(got.is_none());
        assert_eq!(problems.len(), 2);
        let text = problems[0].to_string();
        assert!(
            text.contains("step-00000020") && text.contains(STATE_FILE),
            "{text}"
        );
    }
}
