//! The window driven headless with egui_kittest: no display, no GPU.

use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};

use super::AnntApp;
use super::state::Settings;

fn quick() -> Settings {
    Settings {
        train_limit: 128,
        epochs: 1,
        batch: 32,
        accum: 2,
        amp: annt::accel::amp::AmpMode::Off,
        ..Settings::default()
    }
}

fn harness(settings: Settings) -> Harness<'static, AnntApp> {
    Harness::builder()
        .with_size(egui::vec2(1280.0, 820.0))
        .build_ui_state(|ui, app: &mut AnntApp| app.show(ui), AnntApp::new(settings))
}

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
    run_until(&mut h, Duration::from_secs(240), |a| a.session.is_some());
    let s = h.state().session.as_ref().expect("session");
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
}

#[test]
fn stop_mid_run_returns_control_within_a_second() {
    let mut settings = quick();
    settings.epochs = 50;
    settings.train_limit = 2000;
    let mut h = harness(settings);
    h.get_by_label("Start").click();
    run_until(&mut h, Duration::from_secs(120), |a| {
        a.runs.first().is_some_and(|r| r.step > 0)
    });
    h.get_by_label("Stop").click();
    let pressed = Instant::now();
    run_until(&mut h, Duration::from_secs(10), |a| !a.is_running());
    assert!(
        pressed.elapsed() < Duration::from_millis(1500),
        "{:?}",
        pressed.elapsed()
    );
    let s = h
        .state()
        .session
        .as_ref()
        .expect("the session still reports");
    assert!(s.summary.iter().any(|a| a.partial));
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
    run_until(h, Duration::from_secs(30), |a| a.data_summary.is_some());
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
    assert_eq!(h.state().settings.amp, annt::accel::amp::AmpMode::Bf16);
    h.get_by_label("Ablation: all 8 combinations").click();
    h.run_steps(2);
    assert!(h.state().settings.ablation);
    assert_eq!(h.state().settings.plan().expect("plan").arms().len(), 8);
}
