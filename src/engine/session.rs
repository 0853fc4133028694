//! A benchmark session: open the data once, train every arm of the plan (× repeats), and
//! assemble the [`SessionResult`].

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;

use crate::bench::plan::Plan;
use crate::bench::result::{RunResult, RunStatus, SCHEMA_VERSION, SessionResult};
use crate::config::{DataConfig, DataSource, DeviceChoice};
use crate::data::download::{ArchiveFormat, CifarVariant, default_data_dir, official};
use crate::data::{self, DataError, Dataset};
use crate::util::env::Environment;

use super::EngineError;
use super::checkpoint::{CheckpointPolicy, RunCheckpoints};
use super::event::{Event, EventSink, StopFlag};
use super::trainer::{RunPlace, train_run};

/// Settings of a session that are not part of the plan.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Where `cifar10` / `cifar100` sources are looked up (default: annt's data folder).
    pub data_dir: Option<PathBuf>,
    /// Where each finished run's trained weights go (safetensors, torchvision names,
    /// loadable back as pretrained weights); `None`: they are not kept.
    pub save_weights: Option<SaveWeights>,
    /// Record the session under this folder ([`super::journal`]): its plan, and each run's
    /// result as it ends, on disk at once. `None`: no record (and no checkpoints).
    pub journal: Option<PathBuf>,
    /// When the run in flight writes a checkpoint into the session's folder
    /// ([`super::checkpoint`]); only with a journal.
    pub checkpoints: CheckpointPolicy,
    /// Continue a recorded session instead of starting one: its finished runs are kept,
    /// the others run, each from its newest checkpoint when it has one.
    pub resume: Option<Resume>,
}

/// What a resumed session continues from (read with [`super::journal::open`]).
#[derive(Clone, Debug)]
pub struct Resume {
    /// The session's folder: the journal is appended to, the checkpoints read from it.
    pub dir: PathBuf,
    /// Runs already recorded; those that finished (or reached their target) are kept.
    pub kept: Vec<RunResult>,
    /// Runs that began and never ended (arm, 0-based repeat).
    pub in_flight: Vec<super::journal::RunKey>,
}

impl From<&super::journal::Recovered> for Resume {
    fn from(r: &super::journal::Recovered) -> Self {
        Self {
            dir: r.dir.clone(),
            kept: r.session.runs.clone(),
            in_flight: r.in_flight.clone(),
        }
    }
}

/// Where trained weights are written, atomically (a temporary file renamed over the target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaveWeights {
    /// One file: for a plan of exactly one run (`annt run`).
    File(PathBuf),
    /// A folder, created if missing: `<arm>-r<repeat>.safetensors` per finished run, the
    /// arm's label made file-safe (`GAx2-bf16-r1.safetensors`).
    Folder(PathBuf),
}

impl SaveWeights {
    /// The file for a run of `arm` in 0-based `repeat`.
    pub fn path_for(&self, arm: &str, repeat: usize) -> PathBuf {
        match self {
            SaveWeights::File(p) => p.clone(),
            SaveWeights::Folder(dir) => {
                let slug = crate::util::file_safe(&arm.replace('×', "x"));
                dir.join(format!("{slug}-r{}.safetensors", repeat + 1))
            }
        }
    }
}

/// Opens the device a run asks for.
pub fn open_device(choice: DeviceChoice) -> Result<Device, EngineError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(i) => {
            // Ask the driver first: its reasons (no CUDA in this build, no driver, no such
            // ordinal) are sentences a user can act on; Candle's are not always.
            let devices =
                crate::util::gpu::cuda_devices().map_err(|reason| EngineError::Device {
                    device: choice.to_string(),
                    reason: format!("{reason}; choose the CPU (--device cpu)"),
                })?;
            if !devices.iter().any(|d| d.ordinal == i) {
                return Err(EngineError::Device {
                    device: choice.to_string(),
                    reason: format!(
                        "there are {} CUDA devices (cuda:0…cuda:{}); choose one of them or the CPU",
                        devices.len(),
                        devices.len().saturating_sub(1)
                    ),
                });
            }
            let device = Device::new_cuda(i).map_err(|e| EngineError::Device {
                device: choice.to_string(),
                reason: format!("{e}; choose the CPU (--device cpu)"),
            })?;
            crate::util::gpu::single_stream(&device);
            Ok(device)
        }
    }
}

/// Opens a run's data set: `builtin`, `cifar10`/`cifar100` (downloaded copies), or a path.
pub fn open_data(cfg: &DataConfig, options: &SessionOptions) -> Result<Dataset, EngineError> {
    let path = match &cfg.source {
        DataSource::Cifar10 | DataSource::Cifar100 => {
            let variant = if cfg.source == DataSource::Cifar10 {
                CifarVariant::Cifar10
            } else {
                CifarVariant::Cifar100
            };
            let dir = options
                .data_dir
                .clone()
                .or_else(default_data_dir)
                .unwrap_or_else(|| PathBuf::from("."));
            let found = [ArchiveFormat::Binary, ArchiveFormat::Python]
                .into_iter()
                .map(|f| dir.join(official(variant, f).file_name))
                .find(|p| p.exists());
            found.ok_or_else(|| {
                EngineError::Data(DataError::InvalidOption(format!(
                    "{} is not downloaded in {} (run `annt data download {}`)",
                    cfg.source,
                    dir.display(),
                    cfg.source
                )))
            })?
        }
        DataSource::Builtin => PathBuf::from(crate::data::synthetic::BUILTIN_NAME),
        DataSource::Path(p) => p.clone(),
    };
    let mut dataset = data::open(&path, &cfg.options)?;
    if let Some(limit) = cfg.train_limit {
        truncate(&mut dataset.train, limit);
    }
    if let Some(limit) = cfg.test_limit {
        truncate(&mut dataset.test, limit);
    }
    Ok(dataset)
}

/// Keeps the first `limit` images of a split (the stored order is already class-mixed for
/// CIFAR and the built-in set; the loader shuffles training images every epoch).
fn truncate(set: &mut crate::data::ImageSet, limit: usize) {
    if limit < set.len() {
        let bytes = set.image_bytes();
        set.pixels.truncate(limit * bytes);
        set.labels.truncate(limit);
    }
}

/// Trains every arm of `plan` `plan.repeats` times. Stopping keeps every finished run and
/// marks the interrupted one partial; a failing run is reported and the session goes on.
pub fn run_session(
    plan: &Plan,
    options: &SessionOptions,
    sink: &mut dyn EventSink,
    stop: &StopFlag,
) -> Result<SessionResult, EngineError> {
    let base = &plan.preset.run;
    base.validate()?;
    // The device first: a missing GPU is reported before minutes of data loading.
    let device = open_device(base.device)?;
    let arms = plan.arms();
    if matches!(options.save_weights, Some(SaveWeights::File(_)))
        && arms.len() * plan.repeats.max(1) > 1
    {
        return Err(EngineError::Config(crate::config::ConfigError::Field {
            field: "save_weights",
            rule: format!(
                "names one file but the plan has {} runs; name a folder (one file per run)",
                arms.len() * plan.repeats.max(1)
            ),
        }));
    }
    // The GPU, listed once: whether it has the arms' precisions is checked before any data
    // is loaded, and it goes into the environment every result records.
    let gpu = match base.device {
        DeviceChoice::Cuda(i) => crate::util::gpu::cuda_devices()
            .ok()
            .and_then(|gpus| gpus.into_iter().find(|d| d.ordinal == i)),
        DeviceChoice::Cpu => None,
    };
    if let Some(why) = gpu.as_ref().and_then(|g| {
        arms.iter()
            .find_map(|a| a.run.switches.amp.unsupported_at(g.compute_capability))
    }) {
        return Err(EngineError::Device {
            device: base.device.to_string(),
            reason: format!("{why}; choose another precision or device"),
        });
    }
    let data = Arc::new(open_data(&base.data, options)?);
    let repeats = plan.repeats.max(1);
    let mut environment = Environment::capture();
    if let Some(gpu) = gpu {
        environment = environment.with_gpu(gpu.info);
    }
    sink.emit(Event::SessionStarted {
        plan: format!("{:?}", plan.kind).to_lowercase(),
        arms: arms.iter().map(|a| a.label.clone()).collect(),
        repeats,
        data: data.name.clone(),
        model: base.model.name.clone(),
        environment: Box::new(environment.clone()),
    });
    let mut session = SessionResult {
        schema_version: SCHEMA_VERSION,
        preset_name: plan.preset.name.clone(),
        plan: format!("{:?}", plan.kind).to_lowercase(),
        repeats,
        data_name: data.name.clone(),
        model_name: base.model.name.clone(),
        device: base.device.to_string(),
        environment: Some(environment),
        config: Some(base.clone()),
        arms: arms.iter().map(|a| a.label.clone()).collect(),
        order_seed: base.train.seed,
        runs: Vec::new(),
        summary: Vec::new(),
        notes: Vec::new(),
        paper: plan.preset.paper.clone(),
    };
    // The journal: a failure to keep it is said at once, and the session goes on (its
    // report can still be saved); nothing else depends on it.
    let opened = match (&options.resume, &options.journal) {
        (Some(r), _) => Some(super::journal::Journal::reopen(&r.dir)),
        (None, Some(root)) => Some(super::journal::Journal::create(root, plan)),
        (None, None) => None,
    };
    let mut journal = match opened {
        Some(j) => match j {
            Ok(j) => Some(j),
            Err(e) => {
                sink.emit(Event::Warning {
                    message: format!("{e}; this session is not recorded"),
                });
                None
            }
        },
        None => None,
    };
    let session_dir = journal.as_ref().map(|j| j.dir().to_path_buf());
    let mut record = |sink: &mut dyn EventSink, r: super::journal::Record| {
        if let Some(j) = &mut journal
            && let Err(e) = j.append(&r)
        {
            sink.emit(Event::Warning {
                message: format!("{e}; the rest of this session is not recorded"),
            });
            journal = None;
        }
    };
    match &options.resume {
        None => record(
            sink,
            super::journal::Record::Started {
                session: Box::new(session.clone()),
            },
        ),
        Some(_) => {
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            record(sink, super::journal::Record::Resumed { at });
        }
    }
    let total_runs = arms.len() * repeats;
    // Repeats outermost: a stopped session has whole rounds of every arm, not all repeats
    // of the first arm and none of the last.
    // Within a repeat the arms run in a seeded order that changes per repeat.
    'outer: for repeat in 0..repeats {
        for (position, &i) in plan.order(repeat).iter().enumerate() {
            let arm = &arms[i];
            if stop.is_stopped() {
                break 'outer;
            }
            let place = RunPlace {
                repeat,
                run_index: repeat * arms.len() + position,
                total_runs,
                order: position,
            };
            let key = super::journal::RunKey {
                arm: arm.label.clone(),
                repeat,
                order: position,
            };
            // Resumed: a run that finished before the interruption is kept as it was.
            if let Some(kept) = options.resume.as_ref().and_then(|r| {
                r.kept
                    .iter()
                    .find(|k| super::journal::RunKey::of(k) == key && k.status.counts())
            }) {
                sink.emit(Event::RunFinished {
                    result: Box::new(kept.clone()),
                });
                session.runs.push(kept.clone());
                continue;
            }
            let checkpoints = session_dir
                .as_ref()
                .filter(|_| !options.checkpoints.is_off() || options.resume.is_some())
                .map(|dir| RunCheckpoints {
                    dir: RunCheckpoints::dir_for(dir, &key),
                    policy: options.checkpoints,
                    resume: options.resume.is_some(),
                    was_started: options.resume.as_ref().is_some_and(|r| {
                        r.in_flight.contains(&key)
                            || r.kept.iter().any(|k| super::journal::RunKey::of(k) == key)
                    }),
                });
            record(
                sink,
                super::journal::Record::Begun {
                    arm: arm.label.clone(),
                    repeat,
                    order: position,
                },
            );
            match train_run(arm, place, &data, &device, sink, stop, checkpoints.as_ref()) {
                Ok(mut trained) => {
                    let partial = trained.result.status == RunStatus::Partial;
                    if let (Some(out), false) = (&options.save_weights, partial) {
                        let path = out.path_for(&arm.label, repeat);
                        if let SaveWeights::Folder(dir) = out {
                            std::fs::create_dir_all(dir).map_err(|source| {
                                crate::data::DataError::Write {
                                    path: dir.clone(),
                                    source,
                                }
                            })?;
                        }
                        crate::models::weights::save(&trained.model, &path)?;
                        trained.result.weights_file = Some(path);
                    }
                    record(
                        sink,
                        super::journal::Record::Run {
                            result: Box::new(trained.result.clone()),
                        },
                    );
                    // A run that counts is recorded whole: its checkpoints are not needed
                    // any more (a stopped one keeps them, to be resumed).
                    if let (Some(c), true) = (&checkpoints, trained.result.status.counts()) {
                        let _ = std::fs::remove_dir_all(&c.dir);
                    }
                    session.runs.push(trained.result);
                    if partial {
                        break 'outer;
                    }
                }
                Err(e) => {
                    let out_of_memory = e.is_out_of_memory();
                    let micro_batch = arm.run.train.batch_size;
                    let error = if out_of_memory {
                        match crate::config::split_micro_batch(micro_batch) {
                            Some((smaller, factor)) => format!(
                                "out of device memory at micro-batch {micro_batch}: {e}. A micro-batch of {smaller} with {factor}× the accumulation keeps the effective batch exactly."
                            ),
                            None => format!(
                                "out of device memory at micro-batch {micro_batch}: {e}. The micro-batch cannot be split further; choose a smaller model, resolution or precision."
                            ),
                        }
                    } else {
                        format!("{e}")
                    };
                    sink.emit(Event::RunFailed {
                        arm: arm.label.clone(),
                        repeat,
                        error: error.clone(),
                        out_of_memory,
                        micro_batch,
                    });
                    session.runs.push(RunResult {
                        arm: arm.label.clone(),
                        repeat,
                        order: position,
                        switches: arm.run.switches,
                        status: RunStatus::Failed,
                        error: Some(error),
                        ..RunResult::default()
                    });
                    if let Some(failed) = session.runs.last() {
                        record(
                            sink,
                            super::journal::Record::Run {
                                result: Box::new(failed.clone()),
                            },
                        );
                    }
                }
            }
        }
    }
    session.notes = notes(&session);
    session.summarize();
    record(
        sink,
        super::journal::Record::Finished {
            session: Box::new(session.clone()),
        },
    );
    sink.emit(Event::SessionFinished {
        result: Box::new(session.clone()),
    });
    Ok(session)
}

/// Plain statements of what each switch changed in this session, and of what its figures
/// mean (the definitions every table follows).
fn notes(session: &SessionResult) -> Vec<String> {
    let mut notes = Vec::new();
    let cpu = session
        .config
        .as_ref()
        .is_some_and(|c| c.device == DeviceChoice::Cpu);
    let model = session.config.as_ref().map(|c| c.model.name.as_str());
    let batch_norm = model.is_some_and(crate::models::uses_batch_norm);
    for r in session.runs.iter().filter(|r| {
        r.repeat == 0 && r.switches != Default::default() && r.status != RunStatus::Failed
    }) {
        let s = r.switches;
        if s.grad_accum_steps > 1 {
            let base_steps = session
                .runs
                .iter()
                .find(|b| b.switches == Default::default() && b.status != RunStatus::Failed)
                .map_or("–".to_string(), |b| {
                    b.optimizer_steps_per_epoch.to_string()
                });
            let equivalence = if batch_norm {
                " The model has batch norm, whose statistics are taken over each micro-batch, so this is not the same computation as one batch of the effective size (it is for models without batch norm, e.g. the ViTs)."
            } else {
                " The model has no batch norm, so the summed gradient equals that of one batch of the effective size, up to summation order."
            };
            notes.push(format!(
                "{}: gradient accumulation ×{} makes the effective batch {} ({} micro-batches of {}); the optimiser takes {} steps per epoch instead of {base_steps}. Forward and backward arithmetic per image is unchanged.{equivalence}",
                r.arm, s.grad_accum_steps, r.effective_batch, r.effective_batch / r.micro_batch.max(1), r.micro_batch, r.optimizer_steps_per_epoch
            ));
        }
        if s.amp != crate::accel::amp::AmpMode::Off {
            let extra = match r.amp.final_scale {
                Some(scale) => format!(
                    "; the fp16 loss scaler skipped {} steps and ended at scale {scale}",
                    r.amp.skipped_steps
                ),
                None => String::new(),
            };
            let what = if let Some(unit) = &r.amp.cpu_bf16_unit {
                format!(
                    "on the CPU, bf16 ran on {unit}: the dense convolutions' matrix products take bf16-rounded activations, weights and gradients and accumulate in f32 (a tensor core's arithmetic); tensors between layers, depthwise convolutions, fully connected layers, normalisation, softmax and the loss stay f32"
                )
            } else if cpu {
                let instructions = crate::util::env::cpu_half_instructions();
                let here = if instructions.is_empty() {
                    "this CPU has no bf16/fp16 dot-product instructions".to_string()
                } else {
                    format!(
                        "this CPU has {}, which annt uses for bf16 only",
                        instructions.join(", ")
                    )
                };
                format!(
                    "on the CPU, {0} ran annt's numerics-only path: activations and weights are rounded to {0} between layers, but convolutions and matrix products compute in f32 on those rounded inputs (f32 accumulation) and round their outputs back; normalisation, softmax and the loss are f32 ({here}). It shows {0}'s effect on accuracy, not a speed-up",
                    s.amp.label()
                )
            } else {
                format!(
                    "{} computes convolutions, matrix products and activations in {} with f32 master weights; normalisation, softmax and the loss stay in f32",
                    s.amp.label(),
                    s.amp.label()
                )
            };
            notes.push(format!("{}: {what}{extra}.", r.arm));
        }
        if s.pinned_memory && !r.pinned_memory_applicable {
            notes.push(format!(
                "{}: pinned memory does not apply on the CPU (no host-to-device copy); this arm ran as if it were off.",
                r.arm
            ));
        }
    }
    if cpu && session.plan == "ablation" {
        notes.push("On the CPU the ablation has 4 arms (GA × AMP): pinned memory does not apply without a host-to-device copy, so its arms would repeat the others and their differences would be noise.".into());
    }
    if let Some(cfg) = &session.config {
        if cfg.tf32 && cpu {
            notes.push("TF32 does not apply on the CPU (it is a GPU matrix-unit mode): f32 ran in full f32.".into());
        }
        if cfg.train.memory_split > 1 {
            notes.push(format!(
                "Every arm split its batch into {} micro-batches of {} for memory (accumulated, so each arm's effective batch is unchanged).",
                cfg.train.memory_split, cfg.train.batch_size
            ));
        }
        if let Some(images) = cfg.train.max_images {
            notes.push(format!(
                "Budget: {images} training images per run, rounded down to whole optimiser steps of each arm's effective batch."
            ));
        }
    }
    for r in &session.runs {
        if let Some(info) = &r.resumed {
            let exact = if info.bit_identical {
                "annt's CPU kernels are deterministic, so its weights and metrics are those of a run never interrupted"
            } else {
                "its weights and metrics equal an uninterrupted run's up to the order of some GPU reductions, which is not deterministic"
            };
            notes.push(format!(
                "{} (repeat {}): interrupted and resumed from its checkpoint at optimiser step {} (epoch {}{}); {exact}. Its images/s and ms/step combine the timed steps of both processes (the first steps after the resume are warm-up again); its wall time is the sum of both.",
                r.arm,
                r.repeat + 1,
                info.from_step,
                info.from_epoch + 1,
                if info.from_batch > 0 {
                    format!(", {} micro-batches in", info.from_batch)
                } else {
                    String::new()
                },
            ));
        }
    }
    let written: Vec<&RunResult> = session
        .runs
        .iter()
        .filter(|r| !r.checkpoints.is_empty())
        .collect();
    if !written.is_empty() {
        let count: u32 = written.iter().map(|r| r.checkpoints.count).sum();
        let secs: f64 = written.iter().map(|r| r.checkpoints.total_secs).sum();
        let wall: f64 = written.iter().map(|r| r.wall_secs).sum();
        let mib = written
            .iter()
            .map(|r| r.checkpoints.last_bytes)
            .max()
            .unwrap_or(0) as f64
            / 1048576.0;
        notes.push(format!(
            "Checkpoints (for resuming after an interruption): {count} written, {:.3} s each on average, up to {mib:.1} MiB each, {:.2} % of the runs' wall time. Their time is in wall and training time, never in images/s or ms/step; a finished run's checkpoints are deleted.",
            secs / f64::from(count.max(1)),
            if wall > 0.0 { 100.0 * secs / wall } else { 0.0 }
        ));
    }
    let excluded = session.runs.iter().filter(|r| !r.status.counts()).count();
    if excluded > 0 {
        notes.push(format!(
            "{excluded} run(s) failed or were stopped: they are listed under Runs and kept out of every mean."
        ));
    }
    notes.dedup();
    notes
}
