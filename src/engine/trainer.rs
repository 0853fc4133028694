//! One training run: the epoch loop with gradient accumulation, mixed precision, timing,
//! evaluation after every epoch, and a stop check after every micro-batch.

use std::sync::Arc;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use crate::accel::amp::{AmpMode, LossScaler, Unscaled};
use crate::bench::plan::Arm;
use crate::bench::result::{
    AmpReport, CheckpointStats, EpochRecord, Resumed, RunResult, RunStatus,
};
use crate::config::{ClipConfig, RunConfig};
use crate::data::loader::{LoaderConfig, Prefetcher, Split};
use crate::data::{Dataset, upload};
use crate::models::layers::kernels::{Products, bf16::Dot};
use crate::models::layers::loss::cross_entropy;
use crate::models::layers::tape::{self, Head};
use crate::models::{ForwardCtx, Model, ModelSpec, weights};
use crate::train::metrics::{ConfusionMatrix, argmax_rows};
use crate::train::optim::{Optimizer, clip_grad_norm, clip_grad_value};
use crate::train::schedule::Schedule;
use crate::train::timing::{HostPeak, Phase, StepTimer};
use crate::util::rng::mix_seed;

use super::EngineError;
use super::checkpoint::{self, RunCheckpoints, RunState};
use super::event::{Event, EventSink, StopFlag};

/// Minimum time between two progress events on the CPU.
const PROGRESS_EVERY_SECS: f64 = 0.05;
/// On a GPU each progress event reads the running loss back (waiting for the device), so
/// they are further apart: the host stays ahead of the device between them.
const PROGRESS_EVERY_SECS_GPU: f64 = 0.5;

fn progress_every(device: &Device) -> f64 {
    if device.is_cpu() {
        PROGRESS_EVERY_SECS
    } else {
        PROGRESS_EVERY_SECS_GPU
    }
}

thread_local! {
    static HOST_READS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Values the training loop has read back from the device on this thread (each one waits
/// for the device). Tests assert at most one per progress tick and epoch.
pub fn host_reads_on_this_thread() -> u64 {
    HOST_READS.with(std::cell::Cell::get)
}

/// The running loss sum and correct count of micro-batches not yet read back, kept on the
/// device as two scalars.
#[derive(Default)]
struct DeviceTally {
    sums: Option<Tensor>,
}

impl DeviceTally {
    /// Adds a micro-batch: its mean loss times its `n` images, and its correct predictions.
    fn add(
        &mut self,
        loss: &Tensor,
        logits: &Tensor,
        labels: &Tensor,
        n: usize,
    ) -> candle_core::Result<()> {
        let loss_sum = (loss.detach().to_dtype(candle_core::DType::F32)? * n as f64)?;
        let hits = logits
            .detach()
            .argmax(candle_core::D::Minus1)?
            .eq(labels)?
            .to_dtype(candle_core::DType::F32)?
            .sum_all()?;
        let pair = Tensor::stack(&[loss_sum, hits], 0)?;
        self.sums = Some(match self.sums.take() {
            Some(s) => (s + pair)?,
            None => pair,
        });
        Ok(())
    }

    /// Reads the sums back (one device read) and adds them to the host's totals.
    fn drain_into(&mut self, loss_sum: &mut f64, correct: &mut u64) -> candle_core::Result<()> {
        let Some(sums) = self.sums.take() else {
            return Ok(());
        };
        let v: Vec<f32> = sums.to_vec1()?;
        HOST_READS.with(|r| r.set(r.get() + 1));
        *loss_sum += f64::from(v[0]);
        *correct += v[1].round() as u64;
        Ok(())
    }
}

/// What a run leaves behind: its result and the trained model.
pub struct TrainedRun {
    pub result: RunResult,
    pub model: Model,
}

/// Optimiser steps per epoch: micro-batches per epoch divided by the accumulation count,
/// rounded down — an epoch's last few micro-batches that cannot fill a whole step are not
/// used, so that every step averages exactly `k` micro-batches.
pub fn steps_per_epoch(train_images: usize, micro_batch: usize, accum: usize) -> u64 {
    ((train_images / micro_batch.max(1)) / accum.max(1)) as u64
}

/// Where a run stands in its session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunPlace {
    /// 0-based repeat.
    pub repeat: usize,
    /// 0-based index of this run among all of the session's, in the order they run.
    pub run_index: usize,
    pub total_runs: usize,
    /// 0-based position within its repeat (the order is shuffled per repeat).
    pub order: usize,
}

impl RunPlace {
    /// A run alone in its session.
    pub fn single() -> Self {
        Self {
            total_runs: 1,
            ..Self::default()
        }
    }
}

/// Trains one arm on `data` (already opened) and reports through `sink`; with
/// `checkpoints`, writes them as their policy says and, resuming, starts from the newest.
pub fn train_run(
    arm: &Arm,
    place: RunPlace,
    data: &Arc<Dataset>,
    device: &Device,
    sink: &mut dyn EventSink,
    stop: &StopFlag,
    checkpoints: Option<&RunCheckpoints>,
) -> Result<TrainedRun, EngineError> {
    let cfg: &RunConfig = &arm.run;
    let t = &cfg.train;
    let sw = cfg.switches;
    // Micro-batches per optimiser step: the switch's k, times the memory split that an
    // out-of-memory retry adds to every arm alike.
    let k = sw.grad_accum_steps.max(1) * t.memory_split.max(1);
    let classes = data.num_classes();
    let spec = ModelSpec {
        name: cfg.model.name.clone(),
        classes,
        resolution: cfg.model.resolution,
        seed: t.seed,
    };
    let model = Model::build(&spec, device)?;
    if let Some(path) = &cfg.model.weights {
        let report = weights::load_pretrained(&model, path)?;
        if report.head_replaced {
            sink.emit(Event::Warning {
                message: format!(
                    "{}: classification head replaced for {classes} classes",
                    path.display()
                ),
            });
        }
    }
    let resolution = cfg
        .model
        .resolution
        .unwrap_or(crate::models::variant(&cfg.model.name)?.resolution);
    let resize =
        (resolution != data.train.height || resolution != data.train.width).then_some(resolution);

    let mut optimizer = Optimizer::new(&t.optim, model.params())?;
    let per_epoch = steps_per_epoch(data.train.len(), t.batch_size, k);
    if per_epoch == 0 {
        return Err(EngineError::Config(
            crate::config::ConfigError::TooFewImages {
                images: data.train.len(),
                accum: k,
                batch: t.batch_size,
            },
        ));
    }
    let effective_batch = (t.batch_size * k) as u64;
    let mut total_steps = per_epoch * t.epochs as u64;
    if let Some(images) = t.max_images {
        // An image budget, the same for every arm: whole steps of this arm's batch.
        total_steps = total_steps.min(images / effective_batch).max(1);
    }
    let epochs = total_steps.div_ceil(per_epoch) as usize;
    let (sched_total, sched_per_epoch) = if t.schedule_per_micro_batch {
        (total_steps * k as u64, per_epoch * k as u64)
    } else {
        (total_steps, per_epoch)
    };
    let schedule = Schedule::new(&t.schedule, sched_total, sched_per_epoch)?;
    let mut scaler = (sw.amp == AmpMode::Fp16)
        .then(|| LossScaler::with_params(t.fp16_init_scale, 2.0, 0.5, 2000));
    let trainable: Vec<Var> = model.params().trainable().map(|p| p.var.clone()).collect();
    let trainable_refs: Vec<&Var> = trainable.iter().collect();
    let (dtype, products) = compute_path(sw.amp, device);
    let pinned_applicable = !device.is_cpu();

    let RunPlace {
        repeat,
        run_index,
        total_runs,
        order,
    } = place;
    sink.emit(Event::RunStarted {
        steps_per_epoch: per_epoch,
        arm: arm.label.clone(),
        repeat,
        run_index,
        total_runs,
        switches: sw,
        total_steps,
        micro_batch: t.batch_size,
        effective_batch: t.batch_size * k,
    });
    if sw.pinned_memory && !pinned_applicable {
        sink.emit(Event::Warning {
            message: "pinned memory does not apply on the CPU (there is no host-to-device copy): this arm runs as if it were off".into(),
        });
    }

    let mut timer = StepTimer::new(t.timing_warmup_steps);
    if let Some(timeline) = crate::train::timing::device_timeline(device) {
        // GPU work is asynchronous: the device's own clock (events on its stream) times the
        // steps, so timing never makes the host wait and the host can run ahead.
        timer = timer.with_timeline(timeline);
    }
    crate::models::layers::kernels::set_tf32(cfg.tf32);
    // This arm's own peak host memory (the high-water mark is reset here); on a GPU the
    // memory pool's high-water mark is reset too, and its level now is the arm's start.
    let mut host_peak = HostPeak::start();
    let device_at_start = crate::util::gpu::pool_reset_peak(device);
    let progress_every = progress_every(device);
    let mut trained_images: u64 = 0;
    let mut epochs_done: Vec<EpochRecord> = Vec::new();
    let mut status = RunStatus::Finished;
    let mut step: u64 = 0;
    let mut eval_secs_total = 0.0;
    let mut time_to_target = None;
    let mut last_confusion = ConfusionMatrix::new(classes);
    let run_start = Instant::now();
    let mut last_progress = Instant::now();
    let mut loader_cfg = LoaderConfig::train(t.batch_size, t.seed);
    if !cfg.data.augment {
        loader_cfg.augment = crate::data::augment::Augment::NONE;
    }

    // Where a resumed run starts: epoch, micro-batches of it done, its running sums.
    let fingerprint = checkpoints.map(|_| {
        let json = serde_json::to_string(cfg).unwrap_or_default();
        checkpoint::fingerprint(&json, data)
    });
    let mut start = (0usize, 0usize, (0.0f64, 0u64, 0u64));
    let mut wall_before = 0.0;
    let mut peak_before: Option<u64> = None;
    let mut ckpt_stats = CheckpointStats::default();
    let mut resumed: Option<Resumed> = None;
    let mut curve: Vec<crate::bench::result::CurvePoint> = Vec::new();
    if let (Some(c), Some(fp)) = (checkpoints.filter(|c| c.resume), &fingerprint) {
        let (found, problems) = checkpoint::latest(&c.dir);
        for p in &problems {
            sink.emit(Event::Warning {
                message: format!("{p}; it is skipped"),
            });
        }
        let restored = found.map(|l| {
            l.check(fp, &cfg.model.name, &arm.label, repeat)
                .and_then(|()| l.apply(&model, &mut optimizer))
                .map(|()| l)
        });
        match restored {
            Some(Ok(l)) => {
                let st = l.state;
                start = (
                    st.epoch,
                    st.batch,
                    (st.epoch_loss_sum, st.epoch_correct, st.epoch_seen),
                );
                step = st.step;
                trained_images = st.trained_images;
                epochs_done = st.epochs_done;
                eval_secs_total = st.eval_secs;
                wall_before = st.wall_secs;
                time_to_target = st.time_to_target_secs;
                if st.confusion.len() == last_confusion.counts.len() {
                    last_confusion.counts = st.confusion;
                }
                timer.resume(&st.timer);
                scaler = st.scaler.or(scaler);
                peak_before = st.peak_host_bytes;
                ckpt_stats = st.checkpoints;
                curve = st.curve;
                resumed = Some(Resumed {
                    times: st.resumes + 1,
                    from_step: st.step,
                    from_epoch: st.epoch,
                    from_batch: st.batch,
                    bit_identical: device.is_cpu(),
                });
                // The epochs trained before the interruption, for curves and tables.
                for record in &epochs_done {
                    sink.emit(Event::EpochFinished {
                        arm: arm.label.clone(),
                        repeat,
                        record: record.clone(),
                    });
                }
                sink.emit(Event::Notice {
                    message: format!(
                        "{}: resumed from {} (step {}, epoch {}{})",
                        arm.label,
                        l.path.display(),
                        st.step,
                        st.epoch + 1,
                        if st.batch > 0 {
                            format!(", after {} of its micro-batches", st.batch)
                        } else {
                            String::new()
                        }
                    ),
                });
            }
            Some(Err(e)) => sink.emit(Event::Warning {
                message: format!("{e}; {} starts over", arm.label),
            }),
            None if c.was_started => sink.emit(Event::Warning {
                message: format!(
                    "{} was interrupted but has no checkpoint in {} (none was written yet, or it was removed); it starts over",
                    arm.label,
                    c.dir.display()
                ),
            }),
            None => {}
        }
    }
    let mut last_checkpoint = Instant::now();
    let wall = |run_start: Instant| wall_before + run_start.elapsed().as_secs_f64();

    // One checkpoint of the run as it stands between two steps: `epoch` in progress,
    // `batch` of its micro-batches done, its running sums. A macro, not a closure: it reads
    // the loop's state (timer, optimiser, metrics) that the loop also mutates.
    macro_rules! checkpoint_now {
        ($c:expr, $epoch:expr, $batch:expr, $sums:expr) => {{
            let (epoch_loss_sum, epoch_correct, epoch_seen) = $sums;
            let (optimizer_steps, param_steps) = optimizer.snapshot_counts();
            let state = RunState {
                format: checkpoint::FORMAT,
                fingerprint: fingerprint.clone().unwrap_or_default(),
                model: cfg.model.name.clone(),
                arm: arm.label.clone(),
                repeat,
                epoch: $epoch,
                batch: $batch,
                step,
                trained_images,
                epoch_loss_sum,
                epoch_correct,
                epoch_seen,
                epochs_done: epochs_done.clone(),
                eval_secs: eval_secs_total,
                wall_secs: wall(run_start),
                time_to_target_secs: time_to_target,
                confusion: last_confusion.counts.clone(),
                timer: timer.totals(),
                scaler: scaler.clone(),
                optimizer_steps,
                param_steps,
                peak_host_bytes: peak_before.max(host_peak.peak()),
                checkpoints: ckpt_stats,
                resumes: resumed.as_ref().map_or(0, |r| r.times),
                curve: curve.clone(),
            };
            write_checkpoint($c, state, &model, &optimizer, &mut ckpt_stats, sink);
            last_checkpoint = Instant::now();
        }};
    }

    let staging = crate::accel::pinned::Staging::new(sw.pinned_memory, device)?;
    'epochs: for epoch in start.0..epochs {
        // Resuming mid-epoch: the micro-batches already trained are not made again.
        let (first_batch, sums) = if epoch == start.0 {
            (start.1, start.2)
        } else {
            (0, (0.0, 0, 0))
        };
        // The pinned-memory switch decides where batches wait (see accel::pinned).
        let alloc = staging.allocator();
        let mut batches = Prefetcher::with_storage_from(
            Arc::clone(data),
            Split::Train,
            loader_cfg,
            epoch,
            first_batch,
            alloc,
        );
        let (mut loss_sum, mut correct, mut seen) = sums;
        // The sums at the previous progress event: the difference is the recent loss.
        let mut at_last_tick = (loss_sum, seen);
        let mut tally = DeviceTally::default();
        let epoch_timed_start = timer.summary();
        for epoch_step in (first_batch / k) as u64..per_epoch {
            if step >= total_steps {
                break;
            }
            timer.start_step();
            let mut acc: Option<GradStore> = None;
            for micro in 0..k {
                timer.phase(Phase::DataWait);
                let Some(batch) = batches.next() else { break };
                let mut batch = batch?;
                timer.phase(Phase::HostToDevice);
                let db = upload::to_device_staged(&mut batch, &data.normalization, device, resize)?;
                batches.recycle(batch.pixels);
                timer.phase(Phase::Forward);
                let seed = mix_seed(&[t.seed, step, micro as u64]);
                // Dropout and stochastic depth are keyed on (seed, epoch, image), so every
                // arm draws the same masks for an image however it groups its batches.
                let sample_seeds = batch
                    .images
                    .iter()
                    .map(|&i| mix_seed(&[t.seed, epoch as u64, u64::from(i), 0x4452_4f50]))
                    .collect();
                let mut ctx = ForwardCtx::train(dtype, seed)
                    .with_kernels(cfg.kernels)
                    .with_products(products)
                    .with_sample_seeds(sample_seeds);
                // The network's backward runs on annt's tape where it covers the network
                // (ResNet, EfficientNet, ViT), Candle's otherwise: the same gradients, fewer
                // passes.
                let recording = tape::record();
                let logits = model.forward(&db.images, &mut ctx)?;
                let head = Head::new(&logits, recording)?;
                let loss = cross_entropy(head.logits(), &db.labels, t.label_smoothing)?;
                // Each micro-batch's mean loss weighs 1/k: the k gradients sum to the
                // gradient of the mean over the effective batch.
                let mut objective = (&loss / k as f64)?;
                if let Some(s) = &scaler {
                    objective = s.scale_loss(&objective)?;
                }
                timer.phase(Phase::Backward);
                let grads = head.backward(&objective)?;
                match &mut acc {
                    None => acc = Some(grads),
                    Some(a) => a.extend(grads)?,
                }
                // Loss and hits stay on the device until the next progress tick or the
                // epoch's end: reading them here would make every micro-batch wait.
                let n = batch.labels.len();
                tally.add(&loss, &logits, &db.labels, n)?;
                seen += n as u64;
                trained_images += n as u64;
                if stop.is_stopped() {
                    status = RunStatus::Partial;
                    break 'epochs;
                }
            }
            timer.phase(Phase::Optimizer);
            let Some(mut grads) = acc else { break };
            let sched_index = if t.schedule_per_micro_batch {
                step * k as u64
            } else {
                step
            };
            optimizer.set_lr_factor(schedule.factor(sched_index));
            let finite = match &mut scaler {
                Some(s) => {
                    let outcome = s.unscale(&mut grads, &trainable_refs)?;
                    let finite = matches!(outcome, Unscaled::Finite);
                    s.update(outcome);
                    finite
                }
                None => true,
            };
            if finite {
                match t.clip {
                    Some(ClipConfig::Norm { max_norm }) => {
                        clip_grad_norm(&mut grads, &trainable_refs, max_norm)?;
                    }
                    Some(ClipConfig::Value { clip }) => {
                        clip_grad_value(&mut grads, &trainable_refs, clip)?
                    }
                    None => {}
                }
                optimizer.step(&grads)?;
            }
            drop(grads);
            timer.end_step(effective_batch);
            host_peak.sample();
            step += 1;
            if last_progress.elapsed().as_secs_f64() >= progress_every {
                last_progress = Instant::now();
                // The one device read of a progress tick: it waits for the device, which
                // then also lets the timer resolve its marks.
                tally.drain_into(&mut loss_sum, &mut correct)?;
                timer.flush().map_err(|reason| EngineError::Device {
                    device: format!("{device:?}"),
                    reason,
                })?;
                let s = timer.summary();
                let recent_n = seen - at_last_tick.1;
                let recent_loss = if recent_n > 0 {
                    (loss_sum - at_last_tick.0) / recent_n as f64
                } else {
                    f64::NAN
                };
                at_last_tick = (loss_sum, seen);
                let mib = |b: Option<u64>| b.map(|b| b as f64 / 1048576.0);
                let point = crate::bench::result::CurvePoint {
                    step,
                    wall_secs: wall(run_start),
                    loss: recent_loss,
                    images_per_sec: s.images_per_sec,
                    lr: optimizer.lr_of_group(0),
                    loss_scale: scaler.as_ref().map(|s| s.scale()),
                    host_mib: mib(crate::train::timing::current_rss_bytes()),
                    device_mib: mib(crate::util::gpu::pool_current_bytes(device)),
                };
                crate::bench::result::push_curve_point(&mut curve, point);
                sink.emit(Event::Progress {
                    arm: arm.label.clone(),
                    repeat,
                    epoch: epoch + 1,
                    step,
                    total_steps,
                    loss: if seen > 0 {
                        loss_sum / seen as f64
                    } else {
                        f64::NAN
                    },
                    images_per_sec: s.images_per_sec,
                    elapsed_secs: point.wall_secs,
                    point,
                });
            }
            if let Some(c) = checkpoints
                && c.policy.by_time(last_checkpoint)
                && epoch_step + 1 < per_epoch
                && step < total_steps
            {
                // Between two steps: the sums are read back (the checkpoint reads every
                // tensor anyway) and the timer catches up.
                tally.drain_into(&mut loss_sum, &mut correct)?;
                timer.flush().map_err(|reason| EngineError::Device {
                    device: format!("{device:?}"),
                    reason,
                })?;
                host_peak.sample();
                checkpoint_now!(
                    c,
                    epoch,
                    (epoch_step as usize + 1) * k,
                    (loss_sum, correct, seen)
                );
            }
        }
        tally.drain_into(&mut loss_sum, &mut correct)?;
        timer.flush().map_err(|reason| EngineError::Device {
            device: format!("{device:?}"),
            reason,
        })?;
        drop(batches);
        host_peak.sample();
        // The epoch's images/s is the run's definition over this epoch's timed steps.
        let timed = timer.summary();
        let epoch_images = timed.measured_images - epoch_timed_start.measured_images;
        let epoch_timed_secs = timed.measured_secs - epoch_timed_start.measured_secs;

        let eval_start = Instant::now();
        let (test_loss, confusion) =
            evaluate(&model, data, device, resize, (dtype, products), cfg, stop)?;
        let eval_secs = eval_start.elapsed().as_secs_f64();
        eval_secs_total += eval_secs;
        let Some((test_loss, confusion)) = test_loss.zip(Some(confusion)) else {
            status = RunStatus::Partial;
            break;
        };
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss: if seen > 0 {
                loss_sum / seen as f64
            } else {
                f64::NAN
            },
            train_accuracy: if seen > 0 {
                correct as f64 / seen as f64
            } else {
                0.0
            },
            test_loss,
            test_accuracy: confusion.accuracy(),
            test_macro_f1: confusion.macro_f1(),
            images_per_sec: if epoch_timed_secs > 0.0 && epoch_images > 0 {
                epoch_images as f64 / epoch_timed_secs
            } else {
                0.0
            },
            wall_secs: wall(run_start),
            eval_secs,
            lr: optimizer.lr_of_group(0),
            optimizer_steps: step,
        };
        let accuracy = record.test_accuracy;
        sink.emit(Event::EpochFinished {
            arm: arm.label.clone(),
            repeat,
            record: record.clone(),
        });
        epochs_done.push(record);
        last_confusion = confusion;
        if let Some(target) = t.target_accuracy
            && accuracy >= target
        {
            time_to_target = Some(wall(run_start));
            status = RunStatus::ReachedTarget;
            break;
        }
        // After the epoch's evaluation: the next epoch starts from scratch, so this is
        // the cheapest and most useful point (a stop here is resumable without loss).
        if let Some(c) = checkpoints
            && (c.policy.after_epoch(epoch, epochs) || (stop.is_stopped() && !c.policy.is_off()))
            && step < total_steps
        {
            checkpoint_now!(c, epoch + 1, 0, (0.0, 0, 0));
        }
        if stop.is_stopped() {
            status = RunStatus::Partial;
            break;
        }
    }
    let wall_secs = wall(run_start);
    let last = epochs_done.last().cloned().unwrap_or_default();
    let result = RunResult {
        arm: arm.label.clone(),
        repeat,
        switches: sw,
        status,
        epochs: epochs_done,
        micro_batch: t.batch_size,
        effective_batch: t.batch_size * k,
        optimizer_steps: step,
        optimizer_steps_per_epoch: per_epoch,
        trained_images,
        order,
        final_test_accuracy: last.test_accuracy,
        final_macro_f1: last.test_macro_f1,
        per_class: last_confusion.per_class(),
        confusion: last_confusion.counts.clone(),
        classes: data.classes.clone(),
        wall_secs,
        train_secs: wall_secs - eval_secs_total,
        eval_secs: eval_secs_total,
        time_to_target_secs: time_to_target,
        timing: timer.summary(),
        peak_host_bytes: peak_before.max(host_peak.peak()),
        host_bytes_at_start: host_peak.at_start(),
        peak_device_bytes: crate::util::gpu::pool_peak_bytes(device),
        device_bytes_at_start: device_at_start,
        amp: AmpReport {
            cpu_bf16_unit: products.bf16().map(|d| d.unit().label().to_string()),
            skipped_steps: scaler.as_ref().map_or(0, |s| s.skipped_steps()),
            final_scale: scaler.as_ref().map(|s| s.scale()),
        },
        pinned_memory_applicable: pinned_applicable,
        error: None,
        weights_file: None,
        checkpoints: ckpt_stats,
        resumed,
        curve,
    };
    sink.emit(Event::RunFinished {
        result: Box::new(result.clone()),
    });
    Ok(TrainedRun { result, model })
}

/// Writes one checkpoint and counts its time; a failure is said and training goes on (the
/// run itself is not at risk, only its resumability).
fn write_checkpoint(
    c: &RunCheckpoints,
    mut state: RunState,
    model: &Model,
    optimizer: &Optimizer,
    stats: &mut CheckpointStats,
    sink: &mut dyn EventSink,
) {
    match checkpoint::save(&c.dir, &mut state, model, optimizer, Instant::now()) {
        Ok(()) => *stats = state.checkpoints,
        Err(e) => sink.emit(Event::Warning {
            message: format!("{e}; training goes on without it"),
        }),
    }
}

/// The dtype an arm's tensors run in and what its convolutions' matrix products compute in.
/// `--amp bf16` on a CPU with a bf16 dot-product unit (AMX, AVX512-BF16) keeps the tensors
/// f32 and runs those products on the unit with bf16 inputs and f32 accumulation — the part
/// of mixed precision that pays on a CPU (Candle's bf16 element-wise ops convert every value
/// to f32 and back, so bf16 tensors would be slower than f32 ones). Elsewhere the mode's own
/// dtype, with numerics-only half precision on the CPU. An f32 arm on a CPU with AVX-512F
/// runs its convolutions' forward and input-gradient products on annt's patch product
/// (`bf16::Fma`: the same f32 arithmetic, read straight from the images), gemm elsewhere.
pub fn compute_path(amp: AmpMode, device: &Device) -> (candle_core::DType, Products) {
    if amp == AmpMode::Bf16
        && device.is_cpu()
        && let Some(dot) = Dot::detect()
    {
        return (candle_core::DType::F32, Products::Bf16(dot));
    }
    let dtype = amp.compute_dtype();
    if dtype == candle_core::DType::F32
        && device.is_cpu()
        && let Some(fma) = crate::models::layers::kernels::bf16::Fma::detect()
    {
        return (dtype, Products::F32(fma));
    }
    (dtype, Products::Native)
}

/// Test-split loss and confusion matrix in evaluation mode; `None` loss when stopped.
/// Public so a trained model can also be scored on another data set's test split (the
/// mixed-precision accuracy test scores on a larger held-out set than the run's).
pub fn evaluate(
    model: &Model,
    data: &Arc<Dataset>,
    device: &Device,
    resize: Option<usize>,
    (dtype, products): (candle_core::DType, Products),
    cfg: &RunConfig,
    stop: &StopFlag,
) -> Result<(Option<f64>, ConfusionMatrix), EngineError> {
    let mut confusion = ConfusionMatrix::new(data.num_classes());
    let mut batches = Prefetcher::new(
        Arc::clone(data),
        Split::Test,
        LoaderConfig::eval(cfg.train.eval_batch_size),
        0,
    );
    let (mut loss_sum, mut n) = (0.0, 0usize);
    while let Some(batch) = batches.next() {
        let batch = batch?;
        let db = upload::to_device(&batch, &data.normalization, device, resize)?;
        batches.recycle(batch.pixels);
        let mut ctx = ForwardCtx::eval(dtype)
            .with_kernels(cfg.kernels)
            .with_products(products);
        // No graph through annt's layers: evaluation never calls backward.
        let _no_grad = crate::models::layers::custom::no_grad();
        let logits = model.forward(&db.images, &mut ctx)?.detach();
        let loss: f32 = cross_entropy(&logits, &db.labels, 0.0)?.to_scalar()?;
        let labels: Vec<u32> = db.labels.to_vec1()?;
        confusion.add(&labels, &argmax_rows(&logits)?);
        loss_sum += f64::from(loss) * labels.len() as f64;
        n += labels.len();
        if stop.is_stopped() {
            return Ok((None, confusion));
        }
    }
    Ok((
        Some(if n > 0 { loss_sum / n as f64 } else { f64::NAN }),
        confusion,
    ))
}
