//! The window driven headless with egui_kittest: no display, no GPU.

use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};

use super::AnntApp;
use super::state::Settings;
use annt::bench::result::RunStatus;

fn quick() -> Settings {
    let mut s = Settings::default();
    let run = s.run_mut();
    run.data.train_limit = Some(128);
    run.train.epochs = 1;
    run.train.batch_size = 32;
    let tuned = s.tuned_mut();
    tuned.grad_accum_steps = 2;
    tuned.amp = annt::accel::amp::AmpMode::Off;
    s
}

fn harness(settings: Settings) -> Harness<'static, AnntApp> {
    // Tall enough that every section of the left panel is on screen.
    harness_sized(settings, egui::vec2(1280.0, 1500.0))
}

/// The window at a laptop's 1280×800, where what fits on screen is the question.
fn laptop_harness(settings: Settings) -> Harness<'static, AnntApp> {
    harness_sized(settings, egui::vec2(1280.0, 800.0))
}

fn harness_sized(settings: Settings, size: egui::Vec2) -> Harness<'static, AnntApp> {
    Harness::builder()
        .with_size(size)
        .build_ui_state(|ui, app: &mut AnntApp| app.show(ui), {
            let mut app = AnntApp::new(settings);
            // The tests' sessions are not the user's: nothing goes to their journal folder.
            app.sessions_root = None;
            app
        })
}

/// How long [`run_until`] waits before it calls a test hung. It bounds nothing a test
/// proves (those bounds are counts, or the run's own measured step time): it only turns a
/// hang into a failure, so it is far above anything a loaded 2-core machine needs.
const HANG: Duration = Duration::from_secs(900);

/// Steps the UI until `done` or the timeout.
fn run_until(h: &mut Harness<'_, AnntApp>, timeout: Duration, done: impl Fn(&AnntApp) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < timeout,
            "timed out; messages: {:?}",
            h.state().messages
        );
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    h.step();
}

#[test]
fn start_a_quick_run_and_see_the_table_fill() {
    let mut h = harness(quick());
    h.get_by_label("Start").click();
    h.step();
    assert!(h.state().is_running());
    run_until(&mut h, HANG, |a| a.session.is_some());
    let s = h.state().session.clone().expect("session");
    assert_eq!(s.summary.len(), 2, "baseline and tuned rows");
    assert!(
        h.state()
            .runs
            .iter()
            .all(|r| r.finished && r.epochs.len() == 1)
    );
    // The table shows the numbers of the session.
    let acc = format!("{:.1} %", 100.0 * s.summary[0].test_accuracy.mean);
    h.run_steps(2);
    assert!(h.query_by_label(&acc).is_some(), "table shows {acc}");

    // Sorting by images/s draws the faster arm's row above the slower one's; a second
    // click reverses what is drawn. (Read from the rows' positions on screen, not from
    // the sort function the table calls.)
    let rows = s.summary.clone();
    let row_label = super::results::row_label;
    let (fast, slow) = if rows[0].images_per_sec.mean >= rows[1].images_per_sec.mean {
        (row_label(&rows[0]), row_label(&rows[1]))
    } else {
        (row_label(&rows[1]), row_label(&rows[0]))
    };
    let y = |h: &Harness<'_, AnntApp>, label: &str| h.get_by_label(label).rect().center().y;
    h.get_by_label("img/s").click();
    h.run_steps(2);
    assert!(y(&h, &fast) < y(&h, &slow), "faster arm first");
    h.get_by_label_contains("img/s (").click();
    h.run_steps(2);
    assert!(y(&h, &slow) < y(&h, &fast), "reversed");

    // A row click selects the arm whose confusion matrix the matrix tab shows.
    let tuned = rows[1].arm.clone();
    h.get_by_label(&row_label(&rows[1])).click();
    h.run_steps(2);
    h.get_by_label("Confusion matrix").click();
    h.run_steps(2);
    assert!(
        h.query_by_label_contains(&format!("Confusion matrix, {tuned}"))
            .is_some()
    );

    // The report round-trips through "Save to path" and "Open path".
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    h.state_mut().report_path = path.display().to_string();
    h.get_by_label("Save to path").click();
    // Written on a helper thread: the window says so when it is done.
    run_until(&mut h, HANG, |a| {
        a.messages
            .iter()
            .any(|m| m.text.starts_with("report saved"))
    });
    assert!(path.exists(), "{:?}", h.state().messages);
    h.state_mut().session = None;
    h.get_by_label("Open path").click();
    h.run_steps(2);
    assert_eq!(h.state().session.as_ref().expect("reopened").summary, rows);
}

/// At 1280×800 — a laptop screen — every column of the comparison table is on screen
/// beside the settings, speed-up right after the arm; with a target accuracy set, its
/// time-to-target column too.
#[test]
fn every_table_column_is_visible_at_1280_by_800() {
    let mut settings = quick();
    settings.run_mut().data.test_limit = Some(64);
    // Reached after the first epoch (chance on 10 classes is 10 %): every column shows.
    settings.run_mut().train.target_accuracy = Some(0.01);
    let mut h = laptop_harness(settings);
    h.get_by_label("Start").click();
    run_until(&mut h, HANG, |a| a.session.is_some() && !a.is_running());
    h.run_steps(2);
    let screen = egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(1280.0, 800.0));
    let mut lefts = Vec::new();
    for (_, title, _) in super::results::COLUMNS {
        let rect = h.get_by_label(title).rect();
        assert!(
            screen.contains_rect(rect),
            "column {title:?} at {rect:?} is not wholly on a 1280×800 screen"
        );
        lefts.push((rect.left(), title));
    }
    let mut by_x = lefts.clone();
    by_x.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(by_x[0].1, "arm");
    assert_eq!(by_x[1].1, "speed-up", "speed-up first after the arm");
    // And each row's last cell too (the steps column).
    let s = h.state().session.clone().expect("session");
    let run = &s.runs[0];
    let steps = format!(
        "{} ({}×{})",
        run.optimizer_steps,
        run.micro_batch,
        run.effective_batch / run.micro_batch.max(1)
    );
    let cell = h.get_by_label(&steps).rect();
    assert!(screen.contains_rect(cell), "{steps:?} at {cell:?}");
    // The time to target is a number of seconds for both arms, and on screen.
    for a in &s.summary {
        let t = annt::report::fmt::time_to_target(a);
        assert!(t.parse::<f64>().is_ok(), "{}: time to target {t:?}", a.arm);
        // Two arms may share the figure: every cell showing it is on screen.
        for node in h.get_all_by_label(&t) {
            let cell = node.rect();
            assert!(screen.contains_rect(cell), "{t:?} at {cell:?}");
        }
    }
}

/// With repeats the verdict tab tests each switch's effect and says so.
#[test]
fn the_verdict_tab_shows_each_switchs_effect_with_its_test() {
    let mut settings = quick();
    settings.run_mut().data.test_limit = Some(64);
    settings.repeats = 2;
    // Enough steps that both arms have timed steps after the warm-up.
    settings.run_mut().data.train_limit = Some(512);
    let mut h = harness(settings);
    h.get_by_label("Start").click();
    run_until(&mut h, HANG, |a| a.session.is_some() && !a.is_running());
    h.get_by_label("Verdict per switch").click();
    h.run_steps(2);
    for header in annt::report::fmt::VERDICT_HEADER {
        assert!(h.query_by_label(header).is_some(), "{header}");
    }
    let v = annt::bench::verdict::verdict(h.state().session.as_ref().expect("session"));
    // GA is the only switch the quick test's tuned arm turns on; 2 runs a side: tested.
    let speed = v
        .effects
        .iter()
        .find(|e| e.factor == "GA" && e.metric == annt::bench::verdict::Metric::ImagesPerSec)
        .expect("GA on images/s");
    assert_eq!((speed.on.n, speed.off.n), (2, 2));
    assert!(speed.test.is_some());
    let cells = annt::report::fmt::verdict_cells(speed);
    for c in &cells {
        assert!(
            h.query_all_by_label(c).next().is_some(),
            "the window shows {c:?}"
        );
    }
    // The step-time tab draws the breakdown (not its "nothing yet" hint).
    h.get_by_label("Step time").click();
    h.run_steps(2);
    assert_eq!(h.state().bottom_tab, super::results::BottomTab::StepTime);
    assert!(h.query_by_label_contains("No timed steps yet").is_none());
}

#[test]
fn the_data_section_shows_samples_and_the_model_picker_parameter_counts() {
    let mut h = harness(quick());
    run_until(&mut h, HANG, |a| {
        a.preview.is_some() && !a.param_counts.is_empty()
    });
    h.run_steps(2);
    let p = h.state().preview.as_ref().expect("preview");
    assert_eq!(p.samples.len(), 10, "one sample per class");
    assert!(
        h.query_by_label_contains("10 classes, 128 train / 2000 test")
            .is_some()
    );
    for class in annt::data::synthetic::CLASS_NAMES {
        assert!(
            h.query_all_by_label(class).next().is_some(),
            "sample labelled {class}"
        );
    }
    // The same count `annt models` prints (Model::param_count), in millions.
    let n = annt::models::Model::build_shapes_only(&annt::models::ModelSpec {
        name: "resnet8-tiny".into(),
        classes: 10,
        resolution: None,
        seed: 0,
    })
    .expect("model")
    .param_count();
    let shown = format!("resnet8-tiny (32 px, {:.2} M params", n as f64 / 1e6);
    h.get_by_label("Variant").click();
    h.run_steps(2);
    assert!(h.query_by_label_contains(&shown).is_some(), "{shown}");
    assert!(
        h.query_by_label_contains("vit-b16 (224 px, 85.8").is_some(),
        "every variant has its count"
    );
}

#[test]
fn out_of_memory_offers_a_retry_that_keeps_the_effective_batch() {
    use super::worker::WorkerMsg;
    use annt::engine::Event;
    let mut settings = quick();
    settings.run_mut().train.batch_size = 64;
    settings.tuned_mut().grad_accum_steps = 2;
    let before = settings.plan().expect("plan").arms();
    let mut h = harness(settings);
    // What the engine emits when CUDA reports CUDA_ERROR_OUT_OF_MEMORY (the classification
    // itself is tested in the engine).
    h.state_mut().apply(WorkerMsg::Event(Event::RunFailed {
        arm: "baseline".into(),
        repeat: 0,
        error: "out of device memory at micro-batch 64".into(),
        out_of_memory: true,
        micro_batch: 64,
    }));
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("Out of device memory at micro-batch 64")
            .is_some()
    );
    h.get_by_label("Retry with micro-batch 32").click();
    h.step();
    assert!(h.state().is_running(), "the retry starts at once");
    h.state_mut().stop();
    let s = &h.state().settings;
    let train = &s.run().train;
    assert_eq!((train.batch_size, train.memory_split), (32, 2));
    let after = s.plan().expect("plan").arms();
    for (b, a) in before.iter().zip(&after) {
        let eff = |arm: &annt::bench::plan::Arm| {
            arm.run.train.batch_size
                * arm.run.switches.grad_accum_steps
                * arm.run.train.memory_split
        };
        assert_eq!(b.label, a.label, "the baseline is still the baseline");
        assert_eq!(eff(b), eff(a), "{}: same effective batch", a.label);
    }
    run_until(&mut h, HANG, |a| !a.is_running());
}

#[test]
fn settings_saved_as_a_preset_load_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mine.toml");
    let mut settings = quick();
    settings.run_mut().train.epochs = 7;
    settings.set_schedule(super::state::ScheduleChoice::CosineWarmup);
    let mut h = harness(settings);
    h.state_mut().preset_path = path.display().to_string();
    h.state_mut().save_preset_to_path();
    let saved = annt::config::Preset::load(&path).expect("a valid preset file");
    assert_eq!(saved.name, "mine");
    assert_eq!(saved.run.train.epochs, 7);
    h.state_mut().settings = Settings::default();
    h.state_mut().load_preset_from_path();
    let s = &h.state().settings;
    assert_eq!(s.run().train.epochs, 7);
    assert_eq!(s.schedule(), super::state::ScheduleChoice::CosineWarmup);
    assert_eq!(s.plan().expect("plan").preset.run, saved.run);
}

#[test]
fn stop_mid_run_returns_control_within_a_second() {
    let mut settings = quick();
    settings.run_mut().train.epochs = 50;
    settings.run_mut().data.train_limit = Some(2000);
    let mut h = harness(settings);
    h.get_by_label("Start").click();
    run_until(&mut h, HANG, |a| a.runs.first().is_some_and(|r| r.step > 0));
    h.get_by_label("Stop").click();
    let pressed = Instant::now();
    // The click's frame records the Stop; the next frame (asked for at once) says so.
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("Stopping: finishing the current micro-batch")
            .is_some(),
        "the window says at once that it is stopping"
    );
    run_until(&mut h, HANG, |a| !a.is_running());
    let waited = pressed.elapsed().as_secs_f64();
    let s = h
        .state()
        .session
        .as_ref()
        .expect("the session still reports");
    assert!(s.summary.iter().any(|a| a.partial));
    // Bounded by the stopped run's own measured step time (on a loaded machine a step is
    // slower, and so is the bound): the engine ends the micro-batch it is on, not the
    // epoch (62 steps here).
    let run = s
        .runs
        .iter()
        .find(|r| r.status == annt::bench::result::RunStatus::Partial)
        .expect("the stopped run");
    let step_secs = run.wall_secs / run.optimizer_steps.max(1) as f64;
    assert!(
        waited < 3.0 * step_secs + 1.0,
        "took {waited:.2} s to stop; a step takes {step_secs:.2} s"
    );
    assert!(
        h.query_by_label_contains("Stopping:").is_none(),
        "the message goes when the session has ended"
    );
}

#[derive(Debug)]
struct Dropped(std::path::PathBuf);
impl egui::DroppedFile for Dropped {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        Err("not read".into())
    }
}

fn drop_path(h: &mut Harness<'_, AnntApp>, path: &std::path::Path) {
    h.input_mut()
        .dropped_files
        .push(std::sync::Arc::new(Dropped(path.to_path_buf())));
    h.step();
    run_until(h, HANG, |a| a.data_summary.is_some());
}

#[test]
fn dropping_a_folder_validates_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = annt::data::fixtures::write_dir(
        &dir.path().join("cifar-10-batches-bin"),
        &annt::data::fixtures::cifar10_binary_files(2, 5, 3, 1),
    )
    .expect("write");
    let mut h = harness(quick());
    drop_path(&mut h, &root);
    assert!(
        matches!(&h.state().data_summary, Some(Ok(s)) if s.contains("10 classes")),
        "{:?}",
        h.state().data_summary
    );
    h.run_steps(2);
    assert!(h.query_by_label_contains("10 classes").is_some());

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    drop_path(&mut h, &empty);
    assert!(
        matches!(&h.state().data_summary, Some(Err(e)) if e.contains("empty")),
        "{:?}",
        h.state().data_summary
    );
    h.run_steps(2);
    assert!(h.query_by_label_contains("Rejected").is_some());
}

#[test]
fn pinned_memory_is_greyed_out_on_the_cpu_and_switches_toggle() {
    let mut h = harness(quick());
    h.run_steps(2);
    let pin = h.get_by_label("Pinned memory");
    assert!(
        pin.accesskit_node().is_disabled(),
        "pinned memory does not apply on the CPU"
    );
    h.get_by_label("bf16").click();
    h.run_steps(2);
    assert_eq!(
        h.state().settings.preset.tuned.amp,
        annt::accel::amp::AmpMode::Bf16
    );
    h.get_by_label_contains("Ablation: all 4 combinations")
        .click();
    h.run_steps(2);
    assert!(h.state().settings.ablation);
    let arms = h.state().settings.plan().expect("plan").arms();
    assert_eq!(arms.len(), 4, "no duplicate pinned-memory arms on the CPU");
    assert!(arms.iter().all(|a| !a.run.switches.pinned_memory));
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_gpu_that_cannot_be_used_is_explained_and_the_cpu_offered() {
    let mut settings = quick();
    // As if saved on a GPU machine and chosen again here: the engine refuses cuda:0.
    settings.run_mut().device = annt::config::DeviceChoice::Cuda(0);
    let mut h = harness(settings);
    h.state_mut().settings.run_mut().device = annt::config::DeviceChoice::Cuda(0);
    h.get_by_label("Start").click();
    run_until(&mut h, HANG, |a| !a.is_running() && a.cpu_offer);
    assert!(
        h.state()
            .messages
            .iter()
            .any(|m| m.kind == super::MessageKind::Error
                && m.text.contains("cuda:0")
                && m.text.contains("no CUDA support")),
        "{:?}",
        h.state().messages
    );
    h.get_by_label("Run on the CPU instead").click();
    h.step();
    assert_eq!(
        h.state().settings.run().device,
        annt::config::DeviceChoice::Cpu
    );
    assert!(h.state().is_running());
    h.state_mut().stop();
    run_until(&mut h, HANG, |a| !a.is_running());
}

#[test]
fn kept_trained_weights_are_saved_for_the_selected_arm() {
    let mut settings = quick();
    settings.keep_weights = true;
    let mut h = harness(settings);
    // Without a session nothing can be saved.
    assert!(
        h.get_by_label("Save trained weights…")
            .accesskit_node()
            .is_disabled()
    );
    h.get_by_label("Start").click();
    run_until(&mut h, HANG, |a| a.session.is_some());
    let session = h.state().session.clone().expect("session");
    let kept: Vec<_> = session
        .runs
        .iter()
        .map(|r| {
            r.weights_file
                .clone()
                .expect("every finished run keeps its weights")
        })
        .collect();
    let arm = session.runs[1].arm.clone();
    h.state_mut().selected_arm = Some(arm.clone());
    h.run_steps(2);
    assert!(
        !h.get_by_label("Save trained weights…")
            .accesskit_node()
            .is_disabled()
    );
    let dir = tempfile::tempdir().expect("dir");
    let to = dir.path().join("mine.safetensors");
    h.state_mut().save_selected_weights(&to);
    assert!(
        h.state()
            .messages
            .iter()
            .any(|m| m.text.starts_with("trained weights saved")),
        "{:?}",
        h.state().messages
    );
    let model = annt::models::Model::build(
        &annt::models::ModelSpec::new("resnet8-tiny", 10),
        &candle_core::Device::Cpu,
    )
    .expect("model");
    let report = annt::models::weights::load_pretrained(&model, &to).expect("loads back");
    assert_eq!(report.loaded, model.params().len());
    assert_eq!(
        std::fs::read(&to).expect("copy"),
        std::fs::read(&kept[1]).expect("kept"),
        "the copy is the selected arm's ({arm}) file"
    );
    // The session's folder under annt's data folder is this test's to remove.
    if let Some(folder) = kept[0].parent() {
        let _ = std::fs::remove_dir_all(folder);
    }
}

#[test]
fn a_recorded_session_reopens_from_the_sessions_menu() {
    let dir = tempfile::tempdir().expect("dir");
    let mut h = harness(quick());
    h.state_mut().sessions_root = Some(dir.path().to_path_buf());
    h.get_by_label("Start").click();
    run_until(&mut h, HANG, |a| a.session.is_some() && !a.is_running());
    let original = h.state().session.clone().expect("session");
    h.state_mut().session = None;
    h.get_by_label("Sessions").click();
    run_until(&mut h, HANG, |a| a.sessions_list.is_some());
    h.run_steps(2);
    h.get_by_label_contains("2 run(s), finished").click();
    h.run_steps(2);
    assert_eq!(
        h.state().session.as_ref().expect("reopened"),
        &original,
        "{:?}",
        h.state().messages
    );
}

#[test]
fn a_stopped_session_resumes_from_the_sessions_menu_and_keeps_its_finished_run() {
    let dir = tempfile::tempdir().expect("dir");
    let mut settings = quick();
    settings.run_mut().train.epochs = 3;
    settings.run_mut().data.test_limit = Some(64);
    let mut h = harness(settings);
    h.state_mut().sessions_root = Some(dir.path().to_path_buf());
    h.get_by_label("Start").click();
    // Stopped once the second run has finished an epoch (and so has a checkpoint).
    run_until(&mut h, HANG, |a| {
        a.runs.len() == 2 && !a.runs[1].epochs.is_empty()
    });
    h.get_by_label("Stop").click();
    run_until(&mut h, HANG, |a| !a.is_running());
    let stopped = h.state().session.clone().expect("session");
    assert_eq!(stopped.runs[1].status, RunStatus::Partial);
    h.get_by_label("Sessions").click();
    run_until(&mut h, HANG, |a| a.sessions_list.is_some());
    h.run_steps(2);
    h.get_by_label("Resume").click();
    // The click's frame records it; the next applies it (the stopped session is cleared).
    h.run_steps(2);
    run_until(&mut h, HANG, |a| a.session.is_some() && !a.is_running());
    let resumed = h.state().session.clone().expect("resumed session");
    assert_eq!(resumed.runs[0], stopped.runs[0], "the finished run is kept");
    let second = &resumed.runs[1];
    assert_eq!(
        second.status,
        RunStatus::Finished,
        "{:?}",
        h.state().messages
    );
    assert!(second.resumed.is_some(), "it continued from its checkpoint");
    assert_eq!(second.epochs.len(), 3);
    // The window shows both runs' curves: the kept one from its result.
    assert_eq!(h.state().runs.len(), 2);
    assert!(h.state().runs.iter().all(|r| r.epochs.len() == 3));
}

#[test]
fn loss_smoothing_is_a_debiased_moving_average() {
    use super::results::smooth;
    let flat: Vec<[f64; 2]> = (0..5).map(|i| [i as f64, 2.0]).collect();
    // Debiased: a constant stays that constant from the first point (a plain EMA from 0
    // would start at 0.8).
    for p in smooth(&flat, 0.6) {
        assert!((p[1] - 2.0).abs() < 1e-12, "{p:?}");
    }
    let steps = [[0.0, 0.0], [1.0, f64::NAN], [2.0, 10.0]];
    assert_eq!(
        smooth(&steps, 0.0),
        vec![[0.0, 0.0], [2.0, 10.0]],
        "0 = raw, NaN skipped"
    );
    let s = smooth(&steps, 0.5);
    // (0.5·0 + 0.5·10) / (1 − 0.25) = 6.67: between the two, nearer the newer.
    assert!((s[1][1] - 5.0 / 0.75).abs() < 1e-12, "{s:?}");
}

/// Progress events draw per-step points while the first epoch is still running.
#[test]
fn per_step_points_arrive_before_the_first_epoch_ends() {
    let mut settings = quick();
    settings.run_mut().data.train_limit = Some(1024);
    settings.run_mut().data.test_limit = Some(64);
    let mut h = harness(settings);
    h.get_by_label("Start").click();
    run_until(&mut h, HANG, |a| {
        a.runs.first().is_some_and(|r| r.points.len() >= 3)
    });
    let r = &h.state().runs[0];
    assert!(r.epochs.is_empty(), "points before the first epoch's end");
    assert!(r.points.windows(2).all(|w| w[0].step < w[1].step));
    assert!(r.points.iter().all(|p| p.lr > 0.0 && p.host_mib.is_some()));
    h.get_by_label("Stop").click();
    run_until(&mut h, HANG, |a| !a.is_running());
}

/// The frame time with 8 arms' curves on screen, each with the most points a run keeps
/// (2000 per-step points, 30 epochs): logic + layout per frame, as the window's readout
/// measures it (rendering is the GPU's, or Xvfb's software renderer's, and not included).
/// `cargo test --release --bin annt frame_time_with_8_arms -- --ignored --nocapture`
#[test]
#[ignore = "a measurement; prints the p50/p99 frame time"]
fn frame_time_with_8_arms_of_curves_on_screen() {
    let mut h = harness(quick());
    for i in 0..8 {
        let points = (0..annt::bench::result::CURVE_POINTS as u64)
            .map(|s| annt::bench::result::CurvePoint {
                step: s,
                wall_secs: s as f64 * 0.05,
                loss: 2.3 / (1.0 + s as f64 / 500.0) + 0.05 * ((s * 7 + i) % 13) as f64 / 13.0,
                images_per_sec: 400.0 + (s % 17) as f64,
                lr: 0.1,
                loss_scale: None,
                host_mib: Some(250.0 + (s / 100) as f64),
                device_mib: None,
            })
            .collect();
        let epochs = (1..=30)
            .map(|e| annt::bench::result::EpochRecord {
                epoch: e,
                test_accuracy: 0.3 + 0.02 * e as f64,
                train_accuracy: 0.3 + 0.02 * e as f64,
                optimizer_steps: e as u64 * 66,
                wall_secs: e as f64 * 3.3,
                ..Default::default()
            })
            .collect();
        h.state_mut().runs.push(super::RunView {
            arm: format!("arm {}", i / 2),
            repeat: (i % 2) as usize,
            epochs,
            step: 2000,
            total_steps: 2000,
            finished: false,
            status: "running".into(),
            micro_batch: 64,
            images_per_sec: 400.0,
            steps_per_epoch: 66,
            points,
            started: None,
            source: 0,
        });
    }
    h.run_steps(5);
    let mut ms: Vec<f64> = (0..300)
        .map(|_| {
            let t = Instant::now();
            h.step();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let p = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    println!(
        "frame time, 8 arms × {} points: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        annt::bench::result::CURVE_POINTS,
        p(0.5),
        p(0.99),
        p(1.0)
    );
}

/// Two JSON reports opened together are overlaid: each run's curves and rows are labelled
/// with the machine its report was measured on, the table compares the same arm across
/// machines, and an unreadable file among them is named while the others still open.
#[test]
fn two_reports_open_together_and_overlay_labelled_by_machine() {
    let mut settings = quick();
    settings.run_mut().data.test_limit = Some(64);
    let mut h = laptop_harness(settings);
    h.get_by_label("Start").click();
    run_until(&mut h, HANG, |a| a.session.is_some() && !a.is_running());
    let local = h.state().session.clone().expect("session");
    assert!(local.runs.iter().all(|r| !r.curve.is_empty()));
    // The same session as a GPU server would have reported it, 4× faster.
    let mut server = local.clone();
    let mut env = server.environment.clone().expect("environment");
    env.gpu = Some(annt::util::env::GpuInfo {
        name: "NVIDIA H100 80GB HBM3".into(),
        driver: "580.0".into(),
        cuda: "13.0".into(),
        memory_bytes: 80 << 30,
    });
    server.environment = Some(env);
    for a in &mut server.summary {
        a.images_per_sec.mean *= 4.0;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, bad) = (
        dir.path().join("local.json"),
        dir.path().join("server.json"),
        dir.path().join("broken.json"),
    );
    annt::report::write_report(&local, &a).expect("local");
    annt::report::write_report(&server, &b).expect("server");
    std::fs::write(&bad, "{ not json").expect("broken");
    h.state_mut().report_path = format!("{};{};{}", a.display(), bad.display(), b.display());
    h.get_by_label("Open path").click();
    h.run_steps(3);
    let app = h.state();
    assert_eq!(app.compare.len(), 2, "{:?}", app.messages);
    let local_label = annt::report::fmt::machine_label(&local);
    assert!(local_label.ends_with("threads") || local_label.ends_with("thread"));
    assert_eq!(app.compare[1].label, "H100 80GB HBM3");
    assert!(
        app.messages
            .iter()
            .any(|m| m.kind == super::MessageKind::Error && m.text.contains("broken.json")),
        "{:?}",
        app.messages
    );
    // Both reports' runs are in the curves, told apart by source.
    assert_eq!(app.runs.len(), local.runs.len() * 2);
    assert!(app.runs.iter().any(|r| r.source == 1));
    // Each run's progress line names its machine (the legends use the same names).
    for label in [&local_label, &"H100 80GB HBM3".to_string()] {
        let name = format!("baseline #1 · {label}");
        assert!(h.query_all_by_label(&name).next().is_some(), "{name}");
    }
    // The table: a machine column, the file, and the arm's speed across machines.
    assert!(h.query_by_label("machine").is_some());
    // One row per arm of the second report.
    assert_eq!(
        h.get_all_by_label("server.json").count(),
        local.summary.len()
    );
    // Every arm with a measured speed is 4× the local one's (an arm whose steps were all
    // warm-up has no speed to compare: "–").
    let timed = local
        .summary
        .iter()
        .filter(|a| a.images_per_sec.n > 0)
        .count();
    assert!(timed >= 1);
    assert_eq!(h.get_all_by_label("4.00×").count(), timed);
    // The verdict tab has one section per report.
    h.get_by_label("Verdict per switch").click();
    h.run_steps(2);
    assert!(h.query_by_label("H100 80GB HBM3 — server.json").is_some());
    // Opening one report again leaves overlay mode.
    h.state_mut().report_path = a.display().to_string();
    h.get_by_label("Open path").click();
    h.run_steps(2);
    assert!(h.state().compare.is_empty());
    assert!(h.state().runs.iter().all(|r| r.source == 0));
    // Dropping the two reports on the window overlays them too (not taken for a data set).
    let data_before = h.state().settings.data_config();
    for p in [&a, &b] {
        h.input_mut()
            .dropped_files
            .push(std::sync::Arc::new(Dropped(p.to_path_buf())));
    }
    h.run_steps(3);
    assert_eq!(h.state().compare.len(), 2, "{:?}", h.state().messages);
    assert_eq!(h.state().settings.data_config(), data_before);
}
