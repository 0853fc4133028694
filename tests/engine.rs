//! The engine on the CPU with the built-in data set: each switch does what its name says,
//! a run stops when asked, and the event stream is complete.

use std::sync::Arc;

use annt::accel::amp::AmpMode;
use annt::bench::plan::{Arm, Plan, PlanKind};
use annt::bench::result::RunStatus;
use annt::config::{Preset, RunConfig, Switches};
use annt::engine::session::open_data;
use annt::engine::trainer::{RunPlace, train_run};
use annt::engine::{Event, SessionOptions, StopFlag, VecSink, run_session};
use annt::models::{Model, ModelSpec};
use annt::train::optim::OptimizerConfig;
use candle_core::{DType, Device, Tensor};

fn quick(model: &str, batch: usize, accum: usize) -> RunConfig {
    let mut run = RunConfig::quick_cpu();
    run.model.name = model.into();
    run.train.batch_size = batch;
    run.switches.grad_accum_steps = accum;
    run
}

/// An A/B plan of ResNet-8 (micro-batch 32) on the first `train_limit` built-in images.
fn ab_plan(name: &str, tuned: Switches, train_limit: usize, epochs: usize) -> Plan {
    let mut run = quick("resnet8-tiny", 32, 1);
    run.data.train_limit = Some(train_limit);
    run.train.epochs = epochs;
    Plan {
        kind: PlanKind::Ab,
        repeats: 1,
        preset: Preset {
            name: name.into(),
            description: String::new(),
            run,
            tuned,
            paper: None,
        },
    }
}

/// Trains one arm on the CPU with its own data.
fn train_one(run: RunConfig) -> annt::engine::trainer::TrainedRun {
    let data = Arc::new(open_data(&run.data, &SessionOptions::default()).expect("data"));
    let arm = Arm {
        label: "arm".into(),
        run,
    };
    train_run(
        &arm,
        RunPlace::single(),
        &data,
        &Device::Cpu,
        &mut VecSink::default(),
        &StopFlag::new(),
        None,
    )
    .expect("train")
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("values")
}

/// Weight change of every trainable tensor after `run` trains, relative to a fresh model
/// with the same seed.
fn updates(run: RunConfig) -> Vec<(String, Vec<f64>)> {
    // The built-in set has 10 classes; the same seed gives the run's initial weights.
    let spec = ModelSpec {
        name: run.model.name.clone(),
        classes: 10,
        resolution: run.model.resolution,
        seed: run.train.seed,
    };
    let initial = Model::build(&spec, &Device::Cpu).expect("build");
    let trained = train_one(run);
    initial
        .params()
        .trainable()
        .map(|p| {
            let after = trained.model.params().get(&p.name).expect("same names");
            let before = flat(p.var.as_tensor());
            let now = flat(after.var.as_tensor());
            (
                p.name.clone(),
                now.iter().zip(&before).map(|(a, b)| a - b).collect(),
            )
        })
        .collect()
}

#[test]
fn accumulating_four_micro_batches_of_8_equals_one_batch_of_32() {
    // ViT-Ti/4 has no batch norm (whose statistics do depend on the micro-batch) and no
    // dropout, so the two updates must agree up to f32 summation order. Two steps: the
    // zero-initialised head (torchvision's init) stops every other gradient in the first.
    let set = |batch, accum| {
        let mut run = quick("vit-ti4", batch, accum);
        run.train.max_images = Some(64);
        run.data.test_limit = Some(64);
        run.train.epochs = 1;
        run.train.optim.optimizer = OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        };
        // A constant rate: one-cycle over two steps would end the second at lr/2.5e5.
        run.train.schedule = annt::train::schedule::ScheduleConfig::Constant;
        run
    };
    let big = updates(set(32, 1));
    let small = updates(set(8, 4));
    // The out-of-memory retry's memory split (micro-batch 8, GA×2, split ×2) is the same
    // arithmetic again: 32 images per optimiser step.
    let mut split = set(8, 2);
    split.train.memory_split = 2;
    let split = updates(split);
    for (label, other) in [("GA×4", &small), ("GA×2 split ×2", &split)] {
        let (mut diff, mut norm) = (0.0f64, 0.0f64);
        for ((name, a), (_, b)) in big.iter().zip(other) {
            let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
            diff += d;
            norm += a.iter().map(|x| x * x).sum::<f64>();
            assert!(a.iter().any(|v| *v != 0.0), "{name} did not move");
        }
        let rel = (diff / norm).sqrt();
        assert!(
            rel < 1e-5,
            "{label}: relative difference of the updates {rel}"
        );
    }
}

#[test]
fn an_fp16_overflow_skips_the_step_and_leaves_the_weights_unchanged() {
    let mut run = quick("resnet8-tiny", 16, 1);
    run.switches.amp = AmpMode::Fp16;
    run.train.max_images = Some(16);
    run.train.epochs = 1;
    // Scaled by 1e30 the gradients overflow f16 (max 65504) on their way back.
    run.train.fp16_init_scale = 1e30;
    run.data.test_limit = Some(64);
    let moved = updates(run.clone());
    for (name, u) in &moved {
        if name.contains("running") {
            continue;
        }
        assert!(
            u.iter().all(|v| *v == 0.0),
            "{name} changed although the step overflowed"
        );
    }
    let r = train_one(run).result;
    assert_eq!(r.amp.skipped_steps, 1);
    assert_eq!(r.amp.final_scale, Some(5e29), "the scale backs off by half");
}

/// A sink that records every event and presses Stop when the session's second run reports
/// its first progress: a stop at a known step, whatever the machine's speed.
struct StopInSecondRun {
    events: Vec<Event>,
    stop: StopFlag,
    stopped_at_step: Option<u64>,
}

impl annt::engine::EventSink for StopInSecondRun {
    fn emit(&mut self, event: Event) {
        let second_run_started = self
            .events
            .iter()
            .filter(|e| matches!(e, Event::RunStarted { .. }))
            .count()
            == 2;
        if let Event::Progress { step, .. } = &event
            && second_run_started
            && self.stopped_at_step.is_none()
        {
            self.stop.stop();
            self.stopped_at_step = Some(*step);
        }
        self.events.push(event);
    }
}

#[test]
fn stop_ends_the_current_micro_batch_and_keeps_the_finished_arm() {
    let plan = ab_plan(
        "stop",
        Switches {
            grad_accum_steps: 2,
            amp: AmpMode::Off,
            pinned_memory: false,
        },
        640,
        1,
    );
    let stop = StopFlag::new();
    let mut sink = StopInSecondRun {
        events: Vec::new(),
        stop: stop.clone(),
        stopped_at_step: None,
    };
    let session =
        run_session(&plan, &SessionOptions::default(), &mut sink, &stop).expect("session");
    let stopped_at = sink
        .stopped_at_step
        .expect("the second run reported progress");
    assert_eq!(session.runs.len(), 2, "the stopped session keeps both runs");
    let (first, second) = (&session.runs[0], &session.runs[1]);
    assert_eq!(first.status, RunStatus::Finished, "the first arm finished");
    assert_eq!(first.epochs.len(), 1);
    assert_eq!(
        first.optimizer_steps, first.optimizer_steps_per_epoch,
        "its whole budget"
    );
    assert_eq!(second.status, RunStatus::Partial);
    // Stop is checked after every micro-batch: the run ends inside the step after the
    // one it was stopped in, before that step's update.
    assert_eq!(
        second.optimizer_steps, stopped_at,
        "no optimiser step ran after Stop"
    );
    assert!(second.optimizer_steps < second.optimizer_steps_per_epoch);
    assert!(second.epochs.is_empty(), "no evaluation after Stop");
    // The finished arm's figures stand; the stopped one's are kept out of the means.
    let row = |arm: &str| {
        session
            .summary
            .iter()
            .find(|a| a.arm == arm)
            .expect("a summary row per arm")
    };
    let kept = row(&first.arm);
    assert_eq!((kept.runs_counted, kept.runs_total), (1, 1));
    assert_eq!(kept.test_accuracy.mean, first.final_test_accuracy);
    let cut = row(&second.arm);
    assert_eq!((cut.runs_counted, cut.runs_total), (0, 1));
    assert!(cut.partial && cut.speedup_vs_baseline.is_none());
    assert!(matches!(
        sink.events.last(),
        Some(Event::SessionFinished { .. })
    ));
}

#[test]
fn a_session_emits_the_lifecycle_in_order_and_its_report_numbers_match_the_runs() {
    let plan = ab_plan(
        "ab",
        Switches {
            grad_accum_steps: 2,
            amp: AmpMode::Bf16,
            pinned_memory: true,
        },
        512,
        2,
    );
    let mut sink = VecSink::default();
    let session = run_session(
        &plan,
        &SessionOptions::default(),
        &mut sink,
        &StopFlag::new(),
    )
    .expect("session");
    let kinds: Vec<&str> = sink
        .events
        .iter()
        .filter(|e| !matches!(e, Event::Progress { .. } | Event::Warning { .. }))
        .map(|e| match e {
            Event::SessionStarted { .. } => "session",
            Event::RunStarted { .. } => "run",
            Event::EpochFinished { .. } => "epoch",
            Event::RunFinished { .. } => "done",
            Event::SessionFinished { .. } => "end",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "session", "run", "epoch", "epoch", "done", "run", "epoch", "epoch", "done", "end"
        ]
    );
    assert_eq!(session.runs.len(), 2);
    let by_arm = |label: &str| {
        session
            .runs
            .iter()
            .find(|r| r.arm == label)
            .expect("each arm ran")
    };
    let (base, tuned) = (by_arm("baseline"), by_arm("GA×2 + bf16 + PM"));
    assert_eq!(base.optimizer_steps_per_epoch, 16);
    assert_eq!(
        tuned.optimizer_steps_per_epoch, 8,
        "accumulation halves the optimiser steps"
    );
    assert_eq!(tuned.effective_batch, 64);
    assert!(
        !tuned.pinned_memory_applicable,
        "pinned memory does not apply on the CPU"
    );
    assert!(session.notes.iter().any(|n| n.contains("does not apply")));
    for r in &session.runs {
        assert_eq!(r.epochs.len(), 2);
        assert_eq!(r.final_test_accuracy, r.epochs[1].test_accuracy);
        assert!(r.wall_secs >= r.train_secs && r.train_secs > 0.0);
        assert!(r.timing.measured_steps > 0 && r.timing.images_per_sec > 0.0);
    }
    // The runs' order is recorded, and each summary row is its arm's finished run.
    let mut orders: Vec<usize> = session.runs.iter().map(|r| r.order).collect();
    orders.sort_unstable();
    assert_eq!(orders, [0, 1]);
    assert_eq!(session.summary[0].arm, "baseline", "rows in plan order");
    for row in &session.summary {
        let r = session.runs.iter().find(|r| r.arm == row.arm).expect("run");
        assert_eq!(row.images_per_sec.mean, r.timing.images_per_sec);
        assert_eq!(row.test_accuracy.mean, r.final_test_accuracy);
        assert_eq!(row.peak_host.mean, r.peak_host_bytes.expect("Linux") as f64);
        assert_eq!((row.runs_counted, row.runs_total), (1, 1));
        assert_eq!(r.trained_images, 2 * 16 * 32, "two epochs of 16 steps × 32");
    }
    let speedup = session.summary[1]
        .speedup_vs_baseline
        .expect("both finished");
    assert!(
        (speedup - tuned.timing.images_per_sec / base.timing.images_per_sec).abs() < 1e-12,
        "speed-up is the ratio of images/s: {speedup}"
    );
    for r in &session.runs {
        assert!(r.epochs.iter().all(|e| e.images_per_sec > 0.0));
    }
}

#[test]
fn reaching_the_target_accuracy_ends_the_run_and_records_the_time() {
    let mut run = quick("resnet8-tiny", 32, 1);
    run.data.train_limit = Some(256);
    run.data.test_limit = Some(64);
    run.train.epochs = 5;
    // Any accuracy reaches 0: the run must stop after its first evaluation.
    run.train.target_accuracy = Some(0.0);
    let r = train_one(run).result;
    assert_eq!(r.status, RunStatus::ReachedTarget);
    assert_eq!(r.epochs.len(), 1);
    let t = r.time_to_target_secs.expect("time to target");
    assert!(t > 0.0 && t <= r.wall_secs + 1e-9);
}

/// The step loop reads nothing back from the device per step: the running loss and the
/// correct count are read once per progress tick and once per epoch (each read would make a
/// GPU step wait). Four micro-batches per step make a per-micro-batch read impossible to
/// hide inside the bound.
#[test]
fn the_step_loop_reads_the_device_at_most_once_per_progress_tick_and_epoch() {
    let mut run = quick("resnet8-tiny", 8, 4);
    run.data.train_limit = Some(256);
    run.train.epochs = 2;
    let data = Arc::new(open_data(&run.data, &SessionOptions::default()).expect("data"));
    let arm = Arm {
        label: "arm".into(),
        run,
    };
    let mut sink = VecSink::default();
    let before = annt::engine::trainer::host_reads_on_this_thread();
    let trained = train_run(
        &arm,
        RunPlace::single(),
        &data,
        &Device::Cpu,
        &mut sink,
        &StopFlag::new(),
        None,
    )
    .expect("train");
    let reads = annt::engine::trainer::host_reads_on_this_thread() - before;
    let ticks = sink
        .events
        .iter()
        .filter(|e| matches!(e, Event::Progress { .. }))
        .count() as u64;
    let steps = trained.result.optimizer_steps;
    let epochs = trained.result.epochs.len() as u64;
    assert_eq!(steps, 16, "256 images / (8 × 4) × 2 epochs");
    assert!(reads >= epochs, "the epoch figures were read: {reads}");
    assert!(
        reads <= ticks + epochs,
        "{reads} device reads for {ticks} progress ticks and {epochs} epochs ({steps} steps)"
    );
    assert!(reads < 4 * steps, "not one read per micro-batch");
    // The figures read in batches are the same as reading every micro-batch would give.
    let last = trained.result.epochs.last().expect("epoch");
    assert!(last.train_loss.is_finite() && last.train_loss > 0.0);
    assert!((0.0..=1.0).contains(&last.train_accuracy));
}

#[test]
fn trained_weights_are_saved_per_finished_run_and_load_back_as_pretrained() {
    let plan = ab_plan("save-weights", Switches::default(), 256, 1);
    let dir = tempfile::tempdir().expect("dir");
    let folder = dir.path().join("weights");
    let options = SessionOptions {
        save_weights: Some(annt::engine::SaveWeights::Folder(folder.clone())),
        ..SessionOptions::default()
    };
    let s =
        run_session(&plan, &options, &mut VecSink::default(), &StopFlag::new()).expect("session");
    assert_eq!(s.runs.len(), 2);
    let spec = ModelSpec::new("resnet8-tiny", 10);
    let fresh = Model::build(&spec, &Device::Cpu).expect("fresh");
    for r in &s.runs {
        let path = r.weights_file.as_ref().expect("saved");
        assert!(path.starts_with(&folder), "{}", path.display());
        assert!(
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with("-r1.safetensors")),
            "{}",
            path.display()
        );
        let m = Model::build(&spec, &Device::Cpu).expect("model");
        let report = annt::models::weights::load_pretrained(&m, path).expect("loads back");
        assert!(!report.head_replaced);
        assert_eq!(report.loaded, m.params().len());
        // Trained: the loaded weights are not the seed's initial ones.
        let differs = m
            .params()
            .iter()
            .zip(fresh.params().iter())
            .any(|(p, q)| flat(p.var.as_tensor()) != flat(q.var.as_tensor()));
        assert!(differs, "{} holds untrained weights", path.display());
    }
    // One file for a plan of two runs is refused before any training.
    let one = SessionOptions {
        save_weights: Some(annt::engine::SaveWeights::File(
            dir.path().join("w.safetensors"),
        )),
        ..SessionOptions::default()
    };
    let e = run_session(&plan, &one, &mut VecSink::default(), &StopFlag::new())
        .expect_err("two runs, one file");
    assert!(e.to_string().contains("name a folder"), "{e}");
}

#[test]
fn a_session_journal_survives_a_torn_last_line_and_says_what_is_broken() {
    use annt::engine::journal::{self, EVENTS_FILE, JournalError, PLAN_FILE};
    let plan = ab_plan("journal", Switches::default(), 128, 1);
    let root = tempfile::tempdir().expect("root");
    let options = SessionOptions {
        journal: Some(root.path().to_path_buf()),
        ..SessionOptions::default()
    };
    let s =
        run_session(&plan, &options, &mut VecSink::default(), &StopFlag::new()).expect("session");
    let listed = journal::list(root.path()).expect("list");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].finished && listed[0].runs == 2, "{listed:?}");
    let id = listed[0].id.clone();
    let back = journal::open(root.path(), &id).expect("open");
    assert!(back.finished && !back.torn());
    assert_eq!(back.session, s, "reopened as it finished");
    assert_eq!(back.plan, plan);

    // A crash cut the last write (the `finished` record) in half: both runs are intact and
    // the session reads back as interrupted, its summary rebuilt from them.
    let events = root.path().join(&id).join(EVENTS_FILE);
    let text = std::fs::read_to_string(&events).expect("events");
    let last_start = text.trim_end().rfind('\n').expect("several lines") + 1;
    let torn = &text[..last_start + (text.len() - last_start) / 2];
    std::fs::write(&events, torn).expect("tear");
    let back = journal::open(root.path(), &id).expect("open torn");
    assert!(!back.finished && back.torn());
    assert_eq!(back.session.runs, s.runs, "every finished run is kept");
    assert_eq!(back.session.summary.len(), 2);

    // A damaged line before the end is an error naming the file and the line.
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1] = "{not json";
    std::fs::write(&events, lines.join("\n") + "\n").expect("damage");
    let e = journal::open(root.path(), &id).expect_err("damaged");
    assert!(matches!(e, JournalError::BadLine { line: 2, .. }), "{e}");
    assert!(e.to_string().contains(EVENTS_FILE), "{e}");

    // A missing plan names the file; an unknown id says so.
    std::fs::remove_file(root.path().join(&id).join(PLAN_FILE)).expect("rm");
    let e = journal::open(root.path(), &id).expect_err("no plan");
    assert!(e.to_string().contains(PLAN_FILE), "{e}");
    let e = journal::open(root.path(), "nope").expect_err("unknown");
    assert!(matches!(e, JournalError::NoSession { .. }), "{e}");
}
