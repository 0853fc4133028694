//! The `annt` binary as a user runs it: output, JSON shape and exit codes.

use annt::data::fixtures::{self, write_dir};
use std::process::Command;

fn annt(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_annt"))
        .args(args)
        // Keep the user's log file and session journal out of the tests.
        .env("ANNT_LOG", "off")
        .env(
            "ANNT_SESSIONS_DIR",
            std::env::temp_dir().join(format!("annt-test-sessions-{}", std::process::id())),
        )
        .output()
        .expect("run annt")
}

#[test]
fn inspect_builtin_as_json() {
    let out = annt(&["data", "inspect", "builtin", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["format"], "builtin");
    assert_eq!(v["classes"].as_array().expect("classes").len(), 10);
    assert_eq!(v["train"], 10_000);
    assert_eq!(v["test"], 2_000);
    assert_eq!(v["train_per_class"][0], 1_000);
}

#[test]
fn inspect_a_cifar_folder_as_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_dir(
        &dir.path().join("cifar-10-batches-bin"),
        &fixtures::cifar10_binary_files(2, 5, 3, 1),
    )
    .expect("write");
    let out = annt(&["data", "inspect", dir.path().to_str().expect("utf8")]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CIFAR-10 binary"), "{text}");
    assert!(text.contains("10 train, 3 test"), "{text}");
    assert!(text.contains("airplane"), "{text}");
    assert!(text.contains("(published)"), "{text}");
}

#[test]
fn bad_data_exits_1_naming_the_file_and_bad_usage_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = write_dir(
        &dir.path().join("c"),
        &fixtures::cifar10_binary_files(1, 2, 2, 1),
    )
    .expect("write");
    let bad = root.join("test_batch.bin");
    std::fs::write(&bad, [0u8; 5000]).expect("w");
    let out = annt(&["data", "inspect", root.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: size 5000 bytes is not a multiple"),
        "{err}"
    );
    assert!(
        err.trim_end().ends_with(&bad.display().to_string()),
        "{err}"
    );
    // No arguments open the window; without a display that fails with a clear message.
    let windowless = Command::new(env!("CARGO_BIN_EXE_annt"))
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .expect("run");
    if cfg!(feature = "gui") {
        assert_eq!(windowless.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&windowless.stderr).contains("cannot open the window"),
            "{}",
            String::from_utf8_lossy(&windowless.stderr)
        );
    } else {
        assert_eq!(windowless.status.code(), Some(2));
    }
    assert_eq!(annt(&["data", "download", "mnist"]).status.code(), Some(2));
}

/// A CUDA device asked of a build (or machine) without one: exit 1 and a sentence that
/// says why and what to choose instead, before any data is loaded or model built.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_cuda_device_without_cuda_says_why_and_offers_the_cpu() {
    let out = annt(&["run", "--device", "cuda:0", "--epochs", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cuda:0"), "{err}");
    assert!(err.contains("no CUDA support"), "{err}");
    assert!(err.contains("--device cpu"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

/// The README's Ctrl-C behaviour: the run in progress stops after its current micro-batch
/// and is kept, marked partial, with every finished run; the report is still written; the
/// exit code is 1 with a sentence saying so.
#[cfg(unix)]
#[test]
fn ctrl_c_keeps_the_finished_run_writes_the_report_and_exits_1() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("r.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_annt"))
        .args([
            "bench",
            "--preset",
            concat!(env!("CARGO_MANIFEST_DIR"), "/presets/quick-cpu.toml"),
            "--train-limit",
            "128",
            "--test-limit",
            "64",
            "--epochs",
            "8",
            "--report",
        ])
        .arg(&report)
        .env("ANNT_LOG", "off")
        .env("ANNT_SESSIONS_DIR", dir.path().join("sessions"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start annt bench");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // Ctrl-C once the second run's first epoch has been reported: the first run has then
    // finished all its epochs and the second is mid-run.
    let mut seen = Vec::new();
    let mut second_started = false;
    for line in rx.iter() {
        second_started |= line.starts_with("run 2/2");
        let in_second_run_epoch = second_started && line.contains(" epoch 1:");
        seen.push(line);
        if in_second_run_epoch {
            break;
        }
    }
    assert!(second_started, "stderr: {seen:#?}");
    let pid = child.id().to_string();
    let kill = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = child.wait().expect("wait");
    seen.extend(rx.iter());
    reader.join().expect("reader");
    let text = seen.join("\n");
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("stopping after the current"), "{text}");
    assert!(text.contains("stopped by the user"), "{text}");
    let session = annt::report::read_json(&report).expect("the report was written");
    assert_eq!(session.runs.len(), 2, "{text}");
    assert_eq!(
        session.runs[0].status,
        annt::bench::result::RunStatus::Finished
    );
    assert_eq!(session.runs[0].epochs.len(), 8);
    assert_eq!(
        session.runs[1].status,
        annt::bench::result::RunStatus::Partial
    );
    assert!(session.runs[1].epochs.len() < 8);
    let cut = &session
        .summary
        .iter()
        .find(|a| a.arm == session.runs[1].arm)
        .expect("row");
    assert_eq!(
        cut.runs_counted, 0,
        "the stopped run is kept out of the means"
    );
}

/// The CPU build has nothing to check: it says so (and why) and exits 0, as text and JSON.
#[cfg(not(feature = "cuda"))]
#[test]
fn selftest_on_the_cpu_build_explains_itself_and_exits_0() {
    let out = annt(&["selftest"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("annt selftest: nothing to check") && text.contains("no CUDA support"),
        "{text}"
    );
    let out = annt(&["selftest", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(json["nothing_to_check"].is_string(), "{json}");
    assert_eq!(json["checks"].as_array().map(Vec::len), Some(0));
    // A GPU cannot be asked for in a build without CUDA: exit 1 with the reason.
    let out = annt(&["selftest", "--device", "cuda:0"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CUDA"),
        "{out:?}"
    );
}

#[test]
fn a_run_is_recorded_and_its_report_written_back_from_the_journal() {
    let dir = tempfile::tempdir().expect("dir");
    let sessions = dir.path().join("sessions");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_annt"))
            .args(args)
            .env("ANNT_LOG", "off")
            .env("ANNT_SESSIONS_DIR", &sessions)
            .output()
            .expect("run annt")
    };
    let out = run(&[
        "run",
        "--train-limit",
        "128",
        "--test-limit",
        "64",
        "--epochs",
        "1",
        "--batch",
        "32",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["sessions", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let first = &listed[0];
    assert_eq!(first["finished"], true, "{listed}");
    assert_eq!(first["runs"], 1, "{listed}");
    let id = first["id"].as_str().expect("id");
    let report = dir.path().join("again.md");
    let out = run(&[
        "sessions",
        "report",
        id,
        "--report",
        report.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(&report).expect("report");
    assert!(md.contains("baseline"), "{md}");
    let out = run(&["sessions", "show", "no-such-session"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such session"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
