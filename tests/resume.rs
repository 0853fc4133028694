//! Crash-safe sessions: a session killed mid-run resumes where it stopped, and damaged
//! records are reported without losing what is intact.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use annt::bench::result::{RunResult, RunStatus};
use annt::engine::journal;

/// The arguments of the session under test: an A/B of 4 epochs, a second or so each.
fn session_args(report: &Path, weights: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "bench",
        "--preset",
        concat!(env!("CARGO_MANIFEST_DIR"), "/presets/quick-cpu.toml"),
        "--train-limit",
        "512",
        "--test-limit",
        "128",
        "--epochs",
        "4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["--report".into(), report.display().to_string()]);
    args.extend(["--save-weights".into(), weights.display().to_string()]);
    args
}

fn annt(sessions: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_annt"));
    c.env("ANNT_LOG", "off").env("ANNT_SESSIONS_DIR", sessions);
    c
}

fn only_session(root: &Path) -> String {
    let listed = journal::list(root).expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    listed[0].id.clone()
}

/// Checkpoint folders of the session `dir` (any run).
fn checkpoints(dir: &Path) -> Vec<PathBuf> {
    let Ok(runs) = std::fs::read_dir(dir.join("checkpoints")) else {
        return Vec::new();
    };
    runs.filter_map(|r| r.ok())
        .flat_map(|r| annt::engine::checkpoint::complete(&r.path()))
        .collect()
}

fn run_records(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join(journal::EVENTS_FILE))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"record\":\"run\""))
        .count()
}

fn tensors(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .expect("weights")
        .into_iter()
        .map(|(name, t)| {
            let bytes: Vec<u8> = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("f32")
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (name, bytes)
        })
        .collect()
}

fn by_arm<'a>(runs: &'a [RunResult], arm: &str) -> &'a RunResult {
    runs.iter().find(|r| r.arm == arm).expect("arm in report")
}

/// The issue's test: a session is killed with SIGKILL in the middle of its second run
/// (after that run's first checkpoint), resumed, and compared with the same session never
/// interrupted: the first run's result is unchanged, the second finishes, and its final
/// test accuracy, every epoch's metrics and its trained weights are bit-identical.
#[cfg(unix)]
#[test]
fn a_session_killed_mid_run_resumes_to_the_same_weights_and_accuracy() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let killed_root = tmp.path().join("killed");
    let (report1, weights1) = (tmp.path().join("r1.json"), tmp.path().join("w1"));
    let mut child = annt(&killed_root)
        .args(session_args(&report1, &weights1))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start annt bench");
    let started = Instant::now();
    let dir = loop {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the second run never wrote a checkpoint"
        );
        assert!(
            child.try_wait().expect("poll").is_none(),
            "ended before the kill"
        );
        // The second run has begun and written its first checkpoint.
        let in_flight = journal::list(&killed_root)
            .ok()
            .and_then(|l| l.first().cloned())
            .and_then(|s| journal::open(&killed_root, &s.id).ok())
            .filter(|r| r.session.runs.len() == 1)
            .and_then(|r| r.in_flight.first().cloned().map(|f| (r.dir, f)));
        if let Some((dir, key)) = in_flight
            && !annt::engine::checkpoint::complete(
                &annt::engine::checkpoint::RunCheckpoints::dir_for(&dir, &key),
            )
            .is_empty()
        {
            break dir;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    // Killed mid-run: one run recorded, the second one's checkpoint on disk, no report.
    assert_eq!(run_records(&dir), 1);
    assert!(!report1.exists());
    let id = only_session(&killed_root);
    let before = journal::open(&killed_root, &id).expect("open the killed session");
    assert!(!before.finished);
    assert_eq!(before.in_flight.len(), 1, "{:?}", before.in_flight);
    let first = before.session.runs[0].clone();
    let second_arm = before.in_flight[0].arm.clone();
    assert_eq!(first.status, RunStatus::Finished);
    let listed = annt(&killed_root)
        .args(["sessions", "list"])
        .output()
        .expect("list");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("interrupted"));

    let (report2, weights2) = (tmp.path().join("r2.json"), tmp.path().join("w2"));
    let out = annt(&killed_root)
        .args(["bench", "--resume", &id, "--report"])
        .arg(&report2)
        .arg("--save-weights")
        .arg(&weights2)
        .output()
        .expect("resume");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resumed from"), "{stderr}");
    let resumed = annt::report::read_json(&report2).expect("report");
    assert_eq!(resumed.runs.len(), 2);
    assert_eq!(
        by_arm(&resumed.runs, &first.arm),
        &first,
        "the first run is kept as it was"
    );
    let second = by_arm(&resumed.runs, &second_arm);
    assert_eq!(second.status, RunStatus::Finished);
    let info = second.resumed.as_ref().expect("marked resumed");
    assert!(info.from_epoch >= 1 && info.bit_identical, "{info:?}");
    assert!(
        checkpoints(&dir).is_empty(),
        "finished runs keep no checkpoints"
    );
    assert!(journal::open(&killed_root, &id).expect("reopen").finished);

    // The same session, never interrupted.
    let clean_root = tmp.path().join("clean");
    let (report3, weights3) = (tmp.path().join("r3.json"), tmp.path().join("w3"));
    let out = annt(&clean_root)
        .args(session_args(&report3, &weights3))
        .output()
        .expect("uninterrupted");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let clean = annt::report::read_json(&report3).expect("report");
    let reference = by_arm(&clean.runs, &second_arm);
    assert_eq!(second.final_test_accuracy, reference.final_test_accuracy);
    assert_eq!(second.optimizer_steps, reference.optimizer_steps);
    assert_eq!(second.trained_images, reference.trained_images);
    assert_eq!(second.confusion, reference.confusion);
    for (a, b) in second.epochs.iter().zip(&reference.epochs) {
        assert_eq!(
            (a.test_loss, a.test_accuracy, a.train_accuracy, a.lr),
            (b.test_loss, b.test_accuracy, b.train_accuracy, b.lr),
            "epoch {}",
            a.epoch
        );
    }
    assert_eq!(second.epochs.len(), reference.epochs.len());
    let file = |r: &RunResult| r.weights_file.clone().expect("weights saved");
    assert_eq!(
        tensors(&file(second)),
        tensors(&file(reference)),
        "bit-identical weights"
    );
    assert_eq!(
        tensors(&file(by_arm(&resumed.runs, &first.arm))),
        tensors(&file(by_arm(&clean.runs, &first.arm)))
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("ls") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

/// Stops the session once its second run has finished its first epoch.
struct StopInSecondRun {
    stop: annt::engine::StopFlag,
    runs: usize,
    events: Vec<annt::engine::Event>,
}

impl annt::engine::EventSink for StopInSecondRun {
    fn emit(&mut self, event: annt::engine::Event) {
        use annt::engine::Event;
        match &event {
            Event::RunStarted { .. } => self.runs += 1,
            Event::EpochFinished { .. } if self.runs == 2 => self.stop.stop(),
            _ => {}
        }
        self.events.push(event);
    }
}

fn messages(events: &[annt::engine::Event]) -> Vec<String> {
    use annt::engine::Event;
    events
        .iter()
        .filter_map(|e| match e {
            Event::Warning { message } | Event::Notice { message } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// The issue's second test: a journal with a torn last line, a run whose checkpoint is
/// missing, and one whose checkpoint belongs to another model or plan each resume with a
/// message that names the file and what is wrong, keep the finished run as it was, and
/// finish the interrupted one (from scratch when its checkpoint cannot be used).
#[test]
fn torn_journals_missing_and_foreign_checkpoints_are_reported_and_the_rest_is_kept() {
    use annt::bench::plan::{Plan, PlanKind};
    use annt::config::{Preset, RunConfig, Switches};
    use annt::engine::session::Resume;
    use annt::engine::{SessionOptions, StopFlag, VecSink, run_session};

    let mut run = RunConfig::quick_cpu();
    run.train.batch_size = 32;
    run.data.train_limit = Some(128);
    run.data.test_limit = Some(64);
    run.train.epochs = 3;
    let plan = Plan {
        kind: PlanKind::Ab,
        repeats: 1,
        preset: Preset {
            name: "damaged".into(),
            description: String::new(),
            run,
            tuned: Switches {
                grad_accum_steps: 2,
                ..Switches::default()
            },
            paper: None,
        },
    };
    let root = tempfile::tempdir().expect("root");
    let options = SessionOptions {
        journal: Some(root.path().to_path_buf()),
        ..SessionOptions::default()
    };
    let stop = StopFlag::new();
    let mut sink = StopInSecondRun {
        stop: stop.clone(),
        runs: 0,
        events: Vec::new(),
    };
    let stopped = run_session(&plan, &options, &mut sink, &stop).expect("session");
    assert_eq!(stopped.runs[0].status, RunStatus::Finished);
    assert_eq!(stopped.runs[1].status, RunStatus::Partial);
    let second_arm = stopped.runs[1].arm.clone();
    let id = only_session(root.path());
    let dir = root.path().join(&id);
    let ckpts = checkpoints(&dir);
    assert_eq!(ckpts.len(), 1, "the stopped run's checkpoint: {ckpts:?}");

    // One copy of the stopped session per damage.
    let copy = |name: &str| {
        let to = root.path().join(format!("{id}-{name}"));
        copy_dir(&dir, &to);
        to
    };
    let missing = copy("missing");
    std::fs::remove_dir_all(missing.join("checkpoints")).expect("rm");
    let foreign_model = copy("foreign-model");
    let foreign_plan = copy("foreign-plan");
    for (d, key, value) in [
        (&foreign_model, "model", "resnet18-cifar"),
        (&foreign_plan, "fingerprint", "0123456789abcdef"),
    ] {
        let state = checkpoints(d)[0].join(annt::engine::checkpoint::STATE_FILE);
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state).expect("state")).expect("json");
        v[key] = value.into();
        std::fs::write(&state, serde_json::to_vec(&v).expect("json")).expect("write");
    }
    let torn = copy("torn");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(torn.join(journal::EVENTS_FILE))
            .expect("events");
        f.write_all(br#"{"record":"run","result":{"arm":"GA"#)
            .expect("tear");
    }
    let back = journal::open(root.path(), &format!("{id}-torn")).expect("a torn line is tolerated");
    assert!(back.torn());
    assert_eq!(
        back.session.runs, stopped.runs,
        "everything before the tear is intact"
    );

    for (name, expect, from_checkpoint) in [
        ("missing", "has no checkpoint", false),
        ("foreign-model", "it is of model resnet18-cifar", false),
        ("foreign-plan", "configuration or data set differs", false),
        ("torn", "resumed from", true),
    ] {
        let case = format!("{id}-{name}");
        let recovered = journal::open(root.path(), &case).expect("open");
        let options = SessionOptions {
            resume: Some(Resume::from(&recovered)),
            ..SessionOptions::default()
        };
        let mut events = VecSink::default();
        let resumed =
            run_session(&recovered.plan, &options, &mut events, &StopFlag::new()).expect("resume");
        let said = messages(&events.events);
        let message = said
            .iter()
            .find(|m| m.contains(expect))
            .unwrap_or_else(|| panic!("{name}: no message {expect:?} in {said:#?}"));
        if !from_checkpoint {
            assert!(
                message.contains(&case),
                "{name}: the message names the folder: {message}"
            );
            assert!(message.contains("starts over"), "{name}: {message}");
        }
        assert_eq!(
            resumed.runs[0], stopped.runs[0],
            "{name}: the finished run is kept"
        );
        let second = by_arm(&resumed.runs, &second_arm);
        assert_eq!(second.status, RunStatus::Finished, "{name}");
        assert_eq!(second.epochs.len(), 3, "{name}");
        assert_eq!(second.resumed.is_some(), from_checkpoint, "{name}");
        let after = journal::open(root.path(), &case).expect("reopen");
        assert!(after.finished, "{name}");
        assert_eq!(after.session.runs.len(), 2, "{name}");
    }
}
