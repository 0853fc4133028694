//! Reports: every format shows the session's numbers, JSON round-trips and is versioned,
//! files are replaced atomically, and `annt bench` writes what it measured.

use annt::bench::result::{EpochRecord, RunResult, RunStatus, SCHEMA_VERSION, SessionResult};
use annt::config::Switches;
use annt::report::{ReportError, ReportFormat, read_json, render, write_report};
use annt::train::timing::{Phase, TimingSummary};
use std::process::Command;

fn run(
    arm: &str,
    repeat: usize,
    acc: f64,
    train_secs: f64,
    switches: Switches,
    status: RunStatus,
) -> RunResult {
    RunResult {
        arm: arm.into(),
        repeat,
        switches,
        status,
        epochs: (1..=3)
            .map(|e| EpochRecord {
                epoch: e,
                train_loss: 2.0 / e as f64,
                test_accuracy: acc * e as f64 / 3.0,
                wall_secs: train_secs * e as f64 / 3.0,
                images_per_sec: 100.0,
                ..EpochRecord::default()
            })
            .collect(),
        micro_batch: 64,
        effective_batch: 64 * switches.grad_accum_steps,
        optimizer_steps: 90 / switches.grad_accum_steps as u64,
        optimizer_steps_per_epoch: 30 / switches.grad_accum_steps as u64,
        final_test_accuracy: acc,
        final_macro_f1: acc - 0.01,
        wall_secs: train_secs + 2.0,
        train_secs,
        eval_secs: 2.0,
        timing: TimingSummary {
            measured_steps: 27,
            images_per_sec: 6400.0 / train_secs,
            ms_per_step: 10.0,
            phase_ms_per_step: Phase::ALL.iter().map(|p| (*p, 2.0)).collect(),
            ..TimingSummary::default()
        },
        trained_images: 64 * 90,
        order: repeat % 2,
        peak_host_bytes: Some((300 << 20) + (repeat as u64) * (10 << 20)),
        host_bytes_at_start: Some(200 << 20),
        ..RunResult::default()
    }
}

fn session() -> SessionResult {
    let tuned = Switches {
        grad_accum_steps: 2,
        amp: annt::accel::amp::AmpMode::Bf16,
        pinned_memory: false,
    };
    let mut s = SessionResult {
        schema_version: SCHEMA_VERSION,
        preset_name: "test, with a comma <script>alert(1)</script>".into(),
        plan: "ab".into(),
        repeats: 2,
        data_name: "built-in".into(),
        model_name: "resnet8-tiny".into(),
        device: "cpu".into(),
        runs: [
            first_round(tuned).to_vec(),
            vec![
                run(
                    "baseline",
                    1,
                    0.82,
                    40.0,
                    Switches::default(),
                    RunStatus::Finished,
                ),
                run("GA×2, bf16", 1, 0.76, 20.0, tuned, RunStatus::Partial),
            ],
        ]
        .concat(),
        ..SessionResult::default()
    };
    s.summarize();
    s
}

/// Repeat 0 of an A/B: the baseline (80 %, 40 s) and `tuned` (78 %, 20 s), both finished.
fn first_round(tuned: Switches) -> [RunResult; 2] {
    [
        run(
            "baseline",
            0,
            0.80,
            40.0,
            Switches::default(),
            RunStatus::Finished,
        ),
        run("GA×2, bf16", 0, 0.78, 20.0, tuned, RunStatus::Finished),
    ]
}

#[test]
fn every_format_shows_the_numbers() {
    let s = session();
    let speedup = s.summary[1]
        .speedup_vs_baseline
        .expect("both arms finished a run");
    assert!((speedup - 2.0).abs() < 1e-12, "{speedup}");
    for format in [ReportFormat::Markdown, ReportFormat::Html] {
        let text = render(&s, format).expect("render");
        assert!(
            text.contains("81.0 ± 1.4 %"),
            "{format:?}: baseline accuracy mean ± sd"
        );
        assert!(text.contains("2.00×"), "{format:?}: speed-up");
        assert!(text.contains("partial"), "{format:?}: partial run marked");
        assert!(
            text.contains("Gradient accumulation"),
            "{format:?}: switch explanations"
        );
    }
    let html = render(&s, ReportFormat::Html).expect("html");
    assert!(
        html.contains("<svg") && !html.contains("src=\"http") && !html.contains("href=\"http"),
        "self-contained"
    );
    assert!(
        !html.contains("<script>") && html.contains("&lt;script&gt;"),
        "text is escaped"
    );
    let csv = render(&s, ReportFormat::Csv).expect("csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + s.runs.len());
    let columns = lines[0].split(',').count();
    assert!(
        lines[2].starts_with("\"GA×2, bf16\","),
        "a label with a comma is quoted: {}",
        lines[2]
    );
    assert_eq!(lines[1].split(',').count(), columns);
    assert!(lines[4].contains(",partial,"));
    let rows = parse_csv(&csv);
    assert_eq!(rows.len(), 1 + s.runs.len());
    for row in &rows {
        assert_eq!(
            row.len(),
            columns,
            "every row has the header's columns: {row:?}"
        );
    }
    assert_eq!(
        rows[2][0], "GA×2, bf16",
        "the quoted label reads back whole"
    );
    let col = |name: &str| rows[0].iter().position(|h| h == name).expect(name);
    assert_eq!(rows[1][col("final_test_accuracy")], "0.800000");
    assert_eq!(rows[2][col("grad_accum_steps")], "2");
    assert_eq!(rows[2][col("amp")], "bf16");
    assert_eq!(rows[2][col("effective_batch")], "128");
    assert_eq!(rows[1][col("forward_ms")], "2.000");
    assert_eq!(rows[4][col("status")], "partial");
    // Every CSV row carries its run's numbers, not only its labels.
    for (row, r) in rows[1..].iter().zip(&s.runs) {
        let number = |name: &str| row[col(name)].parse::<f64>().expect(name);
        assert_eq!(number("repeat"), r.repeat as f64);
        assert_eq!(number("order"), r.order as f64);
        assert!((number("images_per_sec") - r.timing.images_per_sec).abs() < 0.01);
        assert!((number("train_secs") - r.train_secs).abs() < 0.001);
        assert!((number("wall_secs") - r.wall_secs).abs() < 0.001);
        assert_eq!(number("trained_images"), r.trained_images as f64);
        assert_eq!(
            number("peak_host_bytes"),
            r.peak_host_bytes.expect("set") as f64
        );
        assert_eq!(
            number("host_bytes_at_start"),
            r.host_bytes_at_start.expect("set") as f64
        );
        assert!((number("final_test_accuracy") - r.final_test_accuracy).abs() < 1e-6);
    }
    let json = render(&s, ReportFormat::Json).expect("json");
    assert!(
        json.contains("\"partial\"")
            && json.contains(&format!("\"schema_version\": {SCHEMA_VERSION}"))
    );
}

#[test]
fn failed_and_stopped_runs_stay_out_of_the_means() {
    let tuned = Switches {
        grad_accum_steps: 2,
        amp: annt::accel::amp::AmpMode::Bf16,
        pinned_memory: false,
    };
    let failed = RunResult {
        arm: "baseline".into(),
        repeat: 1,
        status: RunStatus::Failed,
        error: Some("out of device memory".into()),
        ..RunResult::default()
    };
    // A stopped run: a short time and a high rate over what it ran, a low accuracy.
    let mut partial = run("GA×2, bf16", 1, 0.30, 2.0, tuned, RunStatus::Partial);
    partial.timing.images_per_sec = 9999.0;
    let mut s = SessionResult {
        schema_version: SCHEMA_VERSION,
        preset_name: "p".into(),
        plan: "ab".into(),
        repeats: 2,
        device: "cpu".into(),
        arms: vec!["baseline".into(), "GA×2, bf16".into()],
        runs: [first_round(tuned).to_vec(), vec![failed, partial]].concat(),
        ..SessionResult::default()
    };
    s.summarize();
    let (base, arm) = (&s.summary[0], &s.summary[1]);
    assert_eq!((base.runs_counted, base.runs_total), (1, 2));
    assert_eq!((arm.runs_counted, arm.runs_total), (1, 2));
    assert!(base.failed && !base.partial && arm.partial && !arm.failed);
    assert_eq!(
        base.test_accuracy.mean, 0.80,
        "the failed run's zeros are not averaged in"
    );
    assert_eq!(base.test_accuracy.n, 1);
    assert_eq!(
        arm.test_accuracy.mean, 0.78,
        "the stopped run is not averaged in"
    );
    assert_eq!(arm.images_per_sec.mean, 6400.0 / 20.0);
    let speedup = arm.speedup_vs_baseline.expect("one finished run each");
    assert!((speedup - 2.0).abs() < 1e-12, "{speedup}");
    for format in [ReportFormat::Markdown, ReportFormat::Html] {
        let text = render(&s, format).expect("render");
        assert!(
            text.contains("1/2"),
            "{format:?}: how many runs a row rests on"
        );
        assert!(text.contains("2.00×"), "{format:?}");
        assert!(text.contains("failed"), "{format:?}");
    }
    // With no finished baseline there is nothing to compare: "–", not 0.00×.
    s.runs.remove(0);
    s.summarize();
    assert_eq!(s.summary[0].runs_counted, 0);
    assert!(s.summary.iter().all(|a| a.speedup_vs_baseline.is_none()));
    for format in [ReportFormat::Markdown, ReportFormat::Html] {
        let text = render(&s, format).expect("render");
        assert!(!text.contains("0.00×"), "{format:?}");
        assert!(!text.contains("inf"), "{format:?}");
    }
    let md = render(&s, ReportFormat::Markdown).expect("md");
    let base_row = md
        .lines()
        .find(|l| l.starts_with("| baseline (failed)"))
        .expect("baseline row");
    assert!(
        base_row.starts_with("| baseline (failed) | – |"),
        "{base_row}"
    );
}

#[test]
fn per_arm_memory_and_the_figures_definitions_are_in_every_format() {
    let s = session();
    // Host peak is the mean of the arm's finished runs (300 and 310 MiB for the baseline),
    // and "above start" subtracts the 200 MiB resident when each run began.
    assert_eq!(s.summary[0].peak_host.mean, (305u64 << 20) as f64);
    assert_eq!(
        s.summary[0].peak_host_above_start.mean,
        (105u64 << 20) as f64
    );
    assert_eq!(s.summary[0].peak_device.n, 0, "no device on the CPU");
    for format in [ReportFormat::Markdown, ReportFormat::Html] {
        let text = render(&s, format).expect("render");
        assert!(text.contains("305 ± 7"), "{format:?}: host peak mean ± sd");
        for header in ["host peak (MiB)", "device peak (MiB)", "n (finished/runs)"] {
            assert!(text.contains(header), "{format:?}: {header}");
        }
        for definition in annt::bench::result::definitions::ALL {
            // Up to the first quote or apostrophe (which HTML escapes), at most 30 chars.
            let start: String = definition
                .chars()
                .take_while(|c| !matches!(c, '\'' | '"'))
                .take(30)
                .collect();
            assert!(text.contains(&start), "{format:?}: {start}");
        }
    }
}

/// A strict reader for what the CSV writer produces (RFC 4180 quoting).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let (mut row, mut field) = (Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => {
                assert!(field.is_empty(), "quote inside an unquoted field");
                quoted = true;
            }
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        !quoted && field.is_empty() && row.is_empty(),
        "text ends with a line end"
    );
    rows
}

#[test]
fn labels_are_escaped_in_every_format() {
    let mut s = session();
    for r in &mut s.runs {
        if r.arm != "baseline" {
            r.arm = "<script>alert(\"x\")</script> | a, b".into();
        }
    }
    s.summarize();
    let html = render(&s, ReportFormat::Html).expect("html");
    assert!(!html.contains("<script"), "no raw script tag in the page");
    assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; | a, b"));
    let csv = render(&s, ReportFormat::Csv).expect("csv");
    let rows = parse_csv(&csv);
    assert_eq!(rows[2][0], "<script>alert(\"x\")</script> | a, b");
    assert!(csv.contains("\"<script>alert(\"\"x\"\")</script> | a, b\""));
    let md = render(&s, ReportFormat::Markdown).expect("md");
    let header_cells = md
        .lines()
        .find(|l| l.starts_with("| arm | speed-up"))
        .expect("comparison header")
        .matches(" | ")
        .count();
    let row = md
        .lines()
        .find(|l| l.starts_with("| <script>"))
        .expect("arm row");
    assert_eq!(
        row.replace("\\|", "").matches(" | ").count(),
        header_cells,
        "a | in a label does not add a column: {row}"
    );
}

#[test]
fn formats_come_from_the_extension() {
    use std::path::Path;
    for (name, format) in [
        ("a.json", ReportFormat::Json),
        ("a.CSV", ReportFormat::Csv),
        ("a.md", ReportFormat::Markdown),
        ("a.markdown", ReportFormat::Markdown),
        ("a.html", ReportFormat::Html),
        ("dir.v2/a.HTM", ReportFormat::Html),
    ] {
        assert_eq!(
            ReportFormat::from_path(Path::new(name)).expect(name),
            format
        );
    }
    for name in ["report.pdf", "report", "dir.json/report"] {
        let err = ReportFormat::from_path(Path::new(name)).expect_err(name);
        let msg = err.to_string();
        assert!(matches!(err, ReportError::UnknownFormat { .. }), "{msg}");
        assert!(msg.ends_with(name), "the file is named last: {msg}");
        for choice in [".json", ".csv", ".md", ".html"] {
            assert!(msg.contains(choice), "the choices are listed: {msg}");
        }
    }
}

#[test]
fn json_round_trips_and_refuses_a_newer_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    let s = session();
    assert_eq!(write_report(&s, &path).expect("write"), ReportFormat::Json);
    assert_eq!(read_json(&path).expect("read"), s);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("text")).expect("json");
    for key in [
        "schema_version",
        "environment",
        "config",
        "runs",
        "summary",
        "notes",
    ] {
        assert!(v.get(key).is_some(), "schema: {key}");
    }
    for key in [
        "arm",
        "switches",
        "status",
        "epochs",
        "micro_batch",
        "effective_batch",
        "optimizer_steps",
        "final_test_accuracy",
        "final_macro_f1",
        "per_class",
        "confusion",
        "wall_secs",
        "train_secs",
        "eval_secs",
        "timing",
        "peak_host_bytes",
        "amp",
    ] {
        assert!(v["runs"][0].get(key).is_some(), "schema: runs[].{key}");
    }
    v["schema_version"] = serde_json::json!(SCHEMA_VERSION + 1);
    std::fs::write(&path, v.to_string()).expect("write");
    let err = read_json(&path).expect_err("newer");
    assert!(
        matches!(err, ReportError::NewerSchema { found, supported, .. }
            if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION)
            && err.to_string().contains("r.json"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&(SCHEMA_VERSION + 1).to_string())
            && msg.contains(&SCHEMA_VERSION.to_string()),
        "{msg}"
    );
    // A version past u32 is newer too, not wrapped round to an old one.
    v["schema_version"] = serde_json::json!(u64::from(u32::MAX) + 1);
    std::fs::write(&path, v.to_string()).expect("write");
    assert!(matches!(
        read_json(&path),
        Err(ReportError::NewerSchema { .. })
    ));
}

#[test]
fn writing_is_atomic_and_paths_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("report.md");
    std::fs::write(&path, "old").expect("old");
    write_report(&session(), &path).expect("write");
    assert!(
        std::fs::read_to_string(&path)
            .expect("read")
            .starts_with("# annt report")
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        1,
        "no temporary files left"
    );
    for ext in ["json", "csv", "html"] {
        let other = dir.path().join(format!("report.{ext}"));
        std::fs::write(&other, "an older, longer report ".repeat(10_000)).expect("old");
        write_report(&session(), &other).expect("replace");
        let text = std::fs::read_to_string(&other).expect("read");
        assert!(!text.contains("older"), "{ext}: replaced whole");
    }
    // The four reports and the CSV's verdict table beside it.
    assert!(annt::report::verdict_csv_path(&dir.path().join("report.csv")).exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        5,
        "no temporary files left"
    );
    let err = write_report(&session(), &dir.path().join("report.pdf")).expect_err("pdf");
    assert!(err.to_string().contains("report.pdf"));
    assert!(!dir.path().join("report.pdf").exists());
    let missing = dir.path().join("no/such/folder/r.html");
    let err = write_report(&session(), &missing).expect_err("missing folder");
    assert!(matches!(err, ReportError::Write { .. }), "{err}");
    assert!(
        err.to_string().ends_with(&missing.display().to_string()),
        "{err}"
    );
    assert!(!dir.path().join("no").exists());
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 5);
    let err = read_json(&dir.path().join("absent.json")).expect_err("absent");
    assert!(matches!(err, ReportError::Read { .. }) && err.to_string().contains("absent.json"));
    let err = read_json(&dir.path().join("report.csv")).expect_err("not json");
    assert!(matches!(err, ReportError::Parse { .. }) && err.to_string().contains("report.csv"));
}

#[test]
fn annt_bench_writes_reports_whose_numbers_match_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("ab.json");
    let out = Command::new(env!("CARGO_BIN_EXE_annt"))
        .args([
            "bench",
            "--plan",
            "ab",
            "--epochs",
            "1",
            "--batch",
            "32",
            "--train-limit",
            "256",
            "--test-limit",
            "128",
            "--report",
        ])
        .arg(&json)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = read_json(&json).expect("report");
    assert_eq!(s.runs.len(), 2);
    // The runs are listed in the order they ran (seeded, per repeat): find each by arm.
    let base = s
        .runs
        .iter()
        .find(|r| r.switches == Switches::default())
        .expect("baseline");
    let tuned = s
        .runs
        .iter()
        .find(|r| r.switches != Switches::default())
        .expect("tuned");
    assert_eq!(base.optimizer_steps, 8);
    assert_eq!(tuned.optimizer_steps, 4, "GA×2 halves the optimiser steps");
    let mut orders = [base.order, tuned.order];
    orders.sort_unstable();
    assert_eq!(orders, [0, 1], "each run's position is recorded");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let acc = format!("{:.1} %", 100.0 * base.final_test_accuracy);
    assert!(
        stdout.contains(&acc),
        "the printed table shows the run's accuracy {acc}:\n{stdout}"
    );
    // The other formats from the same session.
    for ext in ["csv", "md", "html"] {
        let path = dir.path().join(format!("ab.{ext}"));
        write_report(&s, &path).expect("write");
        assert!(
            std::fs::read_to_string(&path)
                .expect("read")
                .contains(&format!("{:.1}", 100.0 * tuned.final_test_accuracy).replace(" %", ""))
                || ext == "csv"
        );
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_annt"))
        .args(["bench", "--report", "x.pdf"])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("x.pdf"));
}

/// The verdict per switch is in the Markdown and HTML reports and beside a CSV: a clear
/// speed-up is "better" with its p-value, an accuracy difference smaller than the repeats'
/// spread is "within noise".
#[test]
fn every_format_carries_the_verdict_per_switch() {
    let tuned = Switches {
        grad_accum_steps: 2,
        amp: annt::accel::amp::AmpMode::Bf16,
        pinned_memory: false,
    };
    let mut s = SessionResult {
        schema_version: SCHEMA_VERSION,
        preset_name: "verdict".into(),
        plan: "ab".into(),
        repeats: 3,
        ..SessionResult::default()
    };
    for (repeat, (base_secs, base_acc, tuned_secs, tuned_acc)) in [
        (40.0, 0.80, 20.0, 0.78),
        (41.0, 0.82, 21.0, 0.81),
        (39.0, 0.78, 19.5, 0.80),
    ]
    .into_iter()
    .enumerate()
    {
        s.runs.push(run(
            "baseline",
            repeat,
            base_acc,
            base_secs,
            Switches::default(),
            RunStatus::Finished,
        ));
        s.runs.push(run(
            "tuned",
            repeat,
            tuned_acc,
            tuned_secs,
            tuned,
            RunStatus::Finished,
        ));
    }
    s.summarize();
    let md = render(&s, ReportFormat::Markdown).expect("md");
    assert!(md.contains("## Verdict per switch"), "{md}");
    let row = |metric: &str| {
        md.lines()
            .find(|l| l.starts_with(&format!("| GA + AMP | {metric} |")))
            .unwrap_or_else(|| panic!("no {metric} row in {md}"))
            .to_string()
    };
    let speed = row("images/s");
    assert!(
        speed.contains("| better |") && speed.contains("p = 0.0"),
        "{speed}"
    );
    assert!(speed.contains("| +98.5 % |"), "{speed}");
    let accuracy = row("test accuracy (%)");
    assert!(accuracy.contains("| within noise |"), "{accuracy}");
    assert!(
        md.contains("cannot be separated"),
        "an A/B's switches are named as one factor"
    );
    let html = render(&s, ReportFormat::Html).expect("html");
    assert!(html.contains("<h2>Verdict per switch</h2>") && html.contains("within noise"));
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("r.csv");
    write_report(&s, &path).expect("write");
    let companion = annt::report::verdict_csv_path(&path);
    let text = std::fs::read_to_string(&companion).expect("the verdict beside the CSV");
    let rows = parse_csv(&text);
    assert_eq!(rows.len(), 1 + 4, "{text}");
    let p = rows[0]
        .iter()
        .position(|h| h == "welch_p")
        .expect("p column");
    let v = rows[0]
        .iter()
        .position(|h| h == "verdict")
        .expect("verdict column");
    let speed = rows
        .iter()
        .find(|r| r[1] == "images-per-sec")
        .expect("speed row");
    assert!(
        speed[p].parse::<f64>().expect("p") < 0.05 && speed[v] == "better",
        "{speed:?}"
    );
}

/// An empty A/B session of two repeats, and the switches of a GA×2 arm.
fn two_repeat_ab(name: &str) -> (SessionResult, Switches) {
    let s = SessionResult {
        schema_version: SCHEMA_VERSION,
        preset_name: name.into(),
        plan: "ab".into(),
        repeats: 2,
        ..SessionResult::default()
    };
    let ga = Switches {
        grad_accum_steps: 2,
        ..Switches::default()
    };
    (s, ga)
}

/// With a target accuracy the Markdown and HTML tables gain a time-to-target column: the
/// mean over the runs that reached it, "k/n reached" when not all did, "not reached" when
/// none did; without a target the column is absent.
#[test]
fn a_target_accuracy_adds_a_time_to_target_column() {
    let (mut s, ga) = two_repeat_ab("target");
    for repeat in 0..2 {
        let mut b = run(
            "baseline",
            repeat,
            0.8,
            40.0,
            Switches::default(),
            RunStatus::ReachedTarget,
        );
        b.time_to_target_secs = Some(30.0 + 2.0 * repeat as f64);
        s.runs.push(b);
        let mut t = run("tuned", repeat, 0.8, 20.0, ga, RunStatus::Finished);
        // Only the first repeat reached it.
        t.time_to_target_secs = (repeat == 0).then_some(15.0);
        s.runs.push(t);
        s.runs.push(run(
            "slow",
            repeat,
            0.3,
            50.0,
            Switches::default(),
            RunStatus::Finished,
        ));
    }
    s.summarize();
    let without = render(&s, ReportFormat::Markdown).expect("md");
    assert!(!without.contains("time to target"), "{without}");
    let mut config = annt::config::Preset::quick_cpu().run;
    config.train.target_accuracy = Some(0.75);
    s.config = Some(config);
    let md = render(&s, ReportFormat::Markdown).expect("md");
    let row = |arm: &str| {
        md.lines()
            .find(|l| l.starts_with(&format!("| {arm} |")))
            .unwrap_or_else(|| panic!("no row {arm}: {md}"))
            .to_string()
    };
    assert!(md.contains("| time to target (s) |"), "{md}");
    assert!(
        row("baseline").ends_with("| 31.0 ± 1.4 |"),
        "{}",
        row("baseline")
    );
    assert!(
        row("tuned").ends_with("| 15.0 (1/2 reached) |"),
        "{}",
        row("tuned")
    );
    assert!(row("slow").ends_with("| not reached |"), "{}", row("slow"));
    assert!(md.contains("Target test accuracy 75.0 %"), "{md}");
    let html = render(&s, ReportFormat::Html).expect("html");
    assert!(html.contains("<th>time to target (s)</th>"));
    assert!(html.contains("<td>15.0 (1/2 reached)</td>"));
}

/// A run whose steps were all warm-up has no images/s: it is left out of the arm's mean
/// (not averaged in as 0), and an arm with no timed run has no speed-up at all.
#[test]
fn a_run_without_timed_steps_has_no_speed_to_average() {
    let (mut s, ga) = two_repeat_ab("warm-up");
    for repeat in 0..2 {
        s.runs.push(run(
            "baseline",
            repeat,
            0.8,
            40.0,
            Switches::default(),
            RunStatus::Finished,
        ));
        let mut t = run("tuned", repeat, 0.8, 20.0, ga, RunStatus::Finished);
        if repeat == 1 {
            t.timing.measured_steps = 0;
            t.timing.images_per_sec = 0.0;
        }
        s.runs.push(t);
        let mut w = run("warm-up only", repeat, 0.5, 5.0, ga, RunStatus::Finished);
        w.timing.measured_steps = 0;
        w.timing.images_per_sec = 0.0;
        s.runs.push(w);
    }
    s.summarize();
    let row = |arm: &str| s.summary.iter().find(|a| a.arm == arm).expect(arm).clone();
    let tuned = row("tuned");
    assert_eq!(tuned.images_per_sec.n, 1);
    assert!(
        (tuned.images_per_sec.mean - 320.0).abs() < 1e-9,
        "{tuned:?}"
    );
    assert!((tuned.speedup_vs_baseline.expect("speed-up") - 2.0).abs() < 1e-9);
    // Its other figures still rest on both finished runs.
    assert_eq!(tuned.test_accuracy.n, 2);
    let w = row("warm-up only");
    assert_eq!(w.images_per_sec.n, 0);
    assert_eq!(w.speedup_vs_baseline, None);
    let md = render(&s, ReportFormat::Markdown).expect("md");
    assert!(!md.contains("NaN") && !md.contains("0.00×"), "{md}");
}
