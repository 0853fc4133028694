//! Reports of a benchmark session: JSON (complete, versioned, readable back), CSV (a row per
//! run), Markdown (the comparison tables) and a self-contained HTML page with SVG curves.
//! Every file is written atomically: a reader sees the old report or the new one, never half.

mod csv;
mod html;
mod json;
mod markdown;

use std::path::{Path, PathBuf};

use crate::bench::result::SessionResult;
use crate::util::atomic_write::write_atomic;

/// The kinds of report annt writes; [`ReportFormat::from_path`] picks one by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    /// The complete [`SessionResult`], versioned, readable back with [`read_json`].
    Json,
    /// One row per run, RFC 4180 quoting.
    Csv,
    /// The comparison tables, run details, notes and what each switch changes.
    Markdown,
    /// A single self-contained page: the Markdown tables plus inline SVG curves.
    Html,
}

/// What can go wrong writing or reading a report. Messages end with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(
        "unknown report format (use .json, .csv, .md/.markdown or .html/.htm): {}",
        path.display()
    )]
    UnknownFormat { path: PathBuf },
    #[error("cannot write report ({source}): {}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read report ({source}): {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not an annt JSON report ({reason}): {}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error(
        "report schema version {found} is newer than this annt reads ({supported}); update annt: {}",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("cannot render the report: {0}")]
    Serialize(String),
}

impl ReportFormat {
    /// The format for a file name: `.json`, `.csv`, `.md`/`.markdown`, `.html`/`.htm`
    /// (any case). Anything else is [`ReportError::UnknownFormat`] naming the file.
    pub fn from_path(path: &Path) -> Result<Self, ReportError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("json") => Ok(Self::Json),
            Some("csv") => Ok(Self::Csv),
            Some("md" | "markdown") => Ok(Self::Markdown),
            Some("html" | "htm") => Ok(Self::Html),
            _ => Err(ReportError::UnknownFormat {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// The report's text in `format`. Tables come from `session.summary`: call
/// [`SessionResult::summarize`] after changing `runs`.
pub fn render(session: &SessionResult, format: ReportFormat) -> Result<String, ReportError> {
    match format {
        ReportFormat::Json => json::render(session),
        ReportFormat::Csv => Ok(csv::render(session)),
        ReportFormat::Markdown => Ok(markdown::render(session)),
        ReportFormat::Html => Ok(html::render(session)),
    }
}

/// Renders by the path's extension and writes atomically (temp file in the same folder +
/// rename: [`write_atomic`]), so an existing report is either kept whole or replaced whole.
/// A missing folder is an error; nothing is created.
pub fn write_report(session: &SessionResult, path: &Path) -> Result<ReportFormat, ReportError> {
    let format = ReportFormat::from_path(path)?;
    let text = render(session, format)?;
    write_atomic(path, text.as_bytes()).map_err(|source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    if format == ReportFormat::Csv {
        // A CSV is one table (a row per run, so spreadsheets read it as is); the verdict
        // is a table of its own, beside it.
        let companion = verdict_csv_path(path);
        write_atomic(&companion, csv::render_verdict(session).as_bytes()).map_err(|source| {
            ReportError::Write {
                path: companion.clone(),
                source,
            }
        })?;
    }
    Ok(format)
}

/// Where a CSV report's verdict table goes: `report.csv` → `report.verdict.csv`.
pub fn verdict_csv_path(path: &Path) -> std::path::PathBuf {
    path.with_extension("verdict.csv")
}

/// Reads a JSON report back (the GUI's "Open report…", or one made by a headless run on a
/// GPU server). A file with a `schema_version` newer than
/// [`SCHEMA_VERSION`](crate::bench::result::SCHEMA_VERSION) is refused with
/// [`ReportError::NewerSchema`].
pub fn read_json(path: &Path) -> Result<SessionResult, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    json::parse(path, &text)
}

/// Shared number formatting.
/// How numbers read in every report and in the window's table (one place, so they agree).
pub mod fmt {
    use crate::bench::result::{ArmSummary, RunResult, RunStatus, Stat};
    use crate::bench::verdict::Effect;

    /// The verdict table's header (window, Markdown, HTML, the CSV's companion file).
    pub const VERDICT_HEADER: [&str; 7] = [
        "switch",
        "metric",
        "off: mean ± sd (n)",
        "on: mean ± sd (n)",
        "change",
        "Welch's t-test",
        "verdict",
    ];

    /// The header of the paper-vs-measured table.
    pub const PAPER_HEADER: [&str; 4] = [
        "figure",
        "paper (with tuning)",
        "measured: baseline",
        "measured: tuned",
    ];

    /// The paper's figures beside the measured ones (baseline and the most-tuned arm:
    /// means over finished runs); empty when the preset carries none.
    pub fn paper_rows(s: &crate::bench::result::SessionResult) -> Vec<[String; 4]> {
        let Some(p) = &s.paper else {
            return Vec::new();
        };
        let counted = |base: bool| -> Vec<&RunResult> {
            let on = |r: &RunResult| {
                let w = r.switches;
                usize::from(w.grad_accum_steps > 1)
                    + usize::from(w.amp != crate::accel::amp::AmpMode::Off)
                    + usize::from(w.pinned_memory)
            };
            let finished = s.runs.iter().filter(|r| r.status.counts());
            if base {
                finished.filter(|r| on(r) == 0).collect()
            } else {
                let most = s
                    .runs
                    .iter()
                    .filter(|r| r.status.counts())
                    .map(on)
                    .max()
                    .unwrap_or(0);
                finished.filter(|r| most > 0 && on(r) == most).collect()
            }
        };
        let mean = |runs: &[&RunResult], f: &dyn Fn(&RunResult) -> f64| -> Option<f64> {
            (!runs.is_empty()).then(|| runs.iter().map(|r| f(r)).sum::<f64>() / runs.len() as f64)
        };
        let (base, tuned) = (counted(true), counted(false));
        let pct = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1} %"));
        let mins = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1} min"));
        let train_acc = |r: &RunResult| 100.0 * r.epochs.last().map_or(0.0, |e| e.train_accuracy);
        // (figure, the paper's value, the measured value of a run, whether it is a time)
        type Row<'a> = (&'a str, Option<f64>, &'a dyn Fn(&RunResult) -> f64, bool);
        let rows: [Row; 4] = [
            (
                "test accuracy",
                p.test_accuracy,
                &|r| 100.0 * r.final_test_accuracy,
                false,
            ),
            ("train accuracy", p.train_accuracy, &train_acc, false),
            ("F1 (macro, %)", p.f1, &|r| 100.0 * r.final_macro_f1, false),
            (
                "execution time",
                p.execution_minutes,
                &|r| r.wall_secs / 60.0,
                true,
            ),
        ];
        rows.iter()
            .filter(|(_, paper, _, _)| paper.is_some())
            .map(|(name, paper, f, time)| {
                let show = |v| if *time { mins(v) } else { pct(v) };
                [
                    name.to_string(),
                    if *time {
                        format!("{} (GPU not named)", mins(*paper))
                    } else {
                        pct(*paper)
                    },
                    show(mean(&base, *f)),
                    show(mean(&tuned, *f)),
                ]
            })
            .collect()
    }

    /// `123.4 ± 5.6 (3)`; the sd only where there are two values or more.
    pub fn stat_text(s: &Stat, decimals: usize) -> String {
        if s.n > 1 {
            format!("{:.decimals$} ± {:.decimals$} ({})", s.mean, s.sd, s.n)
        } else {
            format!("{:.decimals$} ({})", s.mean, s.n)
        }
    }

    /// One verdict row.
    pub fn verdict_cells(e: &Effect) -> [String; 7] {
        let decimals = 1;
        [
            e.factor.clone(),
            e.metric.label().to_string(),
            stat_text(&e.off, decimals),
            stat_text(&e.on, decimals),
            e.change_text(),
            e.p_text(),
            e.conclusion.label().to_string(),
        ]
    }

    /// The comparison table's header, shared by the Markdown and HTML reports and the
    /// window: speed-up first after the arm, then what it rests on. Each column means what
    /// [`crate::bench::result::definitions`] says, and reports print those definitions
    /// under the table.
    pub const COMPARISON_HEADER: [&str; 11] = [
        "arm",
        "speed-up vs baseline",
        "images/s",
        "n (finished/runs)",
        "test accuracy",
        "macro-F1",
        "wall time (s)",
        "train time (s)",
        "host peak (MiB)",
        "host above start (MiB)",
        "device peak (MiB)",
    ];

    /// An arm's name with what kept runs out of its figures.
    pub fn arm_name(a: &ArmSummary) -> String {
        let mut flags = Vec::new();
        if a.partial {
            flags.push("partial");
        }
        if a.failed {
            flags.push("failed");
        }
        if flags.is_empty() {
            a.arm.clone()
        } else {
            format!("{} ({})", a.arm, flags.join(", "))
        }
    }

    /// The target test accuracy the session's runs trained towards, when one was set: the
    /// comparison tables then have a time-to-target column.
    pub fn target_accuracy(s: &crate::bench::result::SessionResult) -> Option<f64> {
        s.config.as_ref()?.train.target_accuracy
    }

    /// The machine a report was measured on, short enough for a legend: the GPU where the
    /// run used one, else the CPU model and the threads annt trained with (the same CPU
    /// with other thread counts is another measurement); the device name for a report
    /// written before environments were recorded.
    pub fn machine_label(s: &crate::bench::result::SessionResult) -> String {
        let Some(env) = &s.environment else {
            return s.device.clone();
        };
        if let Some(g) = &env.gpu {
            return g.name.trim_start_matches("NVIDIA ").to_string();
        }
        let mut cpu = env.cpu_model.clone();
        for noise in ["(R)", "(TM)", "(tm)", " CPU", " Processor"] {
            cpu = cpu.replace(noise, "");
        }
        // "… @ 2.70GHz": the clock says little next to the model.
        if let Some(at) = cpu.find(" @ ") {
            cpu.truncate(at);
        }
        let cpu = cpu.split_whitespace().collect::<Vec<_>>().join(" ");
        match env.rayon_threads {
            1 => format!("{cpu}, 1 thread"),
            n => format!("{cpu}, {n} threads"),
        }
    }

    /// The time-to-target column's header.
    pub const TIME_TO_TARGET_HEADER: &str = "time to target (s)";

    /// An arm's time to the target accuracy ([`crate::bench::result::definitions::TIME_TO_TARGET`]):
    /// mean ± sd over the finished runs that reached it, saying how many did when not all.
    pub fn time_to_target(a: &ArmSummary) -> String {
        match &a.time_to_target_secs {
            Some(t) if t.n > 0 => {
                let v = num(t, 1);
                if t.n < a.runs_counted {
                    format!("{v} ({}/{} reached)", t.n, a.runs_counted)
                } else {
                    v
                }
            }
            _ if a.runs_counted == 0 => "–".into(),
            _ => "not reached".into(),
        }
    }

    /// The comparison table's header for `s`: [`COMPARISON_HEADER`], and the time to target
    /// where a target accuracy is set.
    pub fn comparison_header(s: &crate::bench::result::SessionResult) -> Vec<&'static str> {
        let mut header = COMPARISON_HEADER.to_vec();
        if target_accuracy(s).is_some() {
            header.push(TIME_TO_TARGET_HEADER);
        }
        header
    }

    /// One arm's row of [`comparison_header`] (plain text).
    pub fn comparison_row(s: &crate::bench::result::SessionResult, a: &ArmSummary) -> Vec<String> {
        let mut row = comparison_cells(a).to_vec();
        if target_accuracy(s).is_some() {
            row.push(time_to_target(a));
        }
        row
    }

    /// The line under the comparison table that names the target and defines the time to
    /// it, where a target is set.
    pub fn target_note(s: &crate::bench::result::SessionResult) -> Option<String> {
        target_accuracy(s).map(|t| {
            format!(
                "Target test accuracy {:.1} %. {}",
                100.0 * t,
                crate::bench::result::definitions::TIME_TO_TARGET
            )
        })
    }

    /// A speed-up, or "–" where there is nothing to compare.
    pub fn speedup(v: Option<f64>) -> String {
        v.map_or("–".into(), |v| format!("{v:.2}×"))
    }

    /// The cells of one comparison row, in [`COMPARISON_HEADER`] order (plain text; each
    /// format escapes them its own way).
    pub fn comparison_cells(a: &ArmSummary) -> [String; 11] {
        [
            arm_name(a),
            speedup(a.speedup_vs_baseline),
            num(&a.images_per_sec, 1),
            format!("{}/{}", a.runs_counted, a.runs_total),
            pct(&a.test_accuracy),
            num(&a.macro_f1, 3),
            num(&a.wall_secs, 1),
            num(&a.train_secs, 1),
            mib_stat(&a.peak_host),
            mib_stat(&a.peak_host_above_start),
            mib_stat(&a.peak_device),
        ]
    }

    /// A byte figure in MiB, mean ± sd over repeats; "–" when not measured.
    pub fn mib_stat(s: &Stat) -> String {
        let m = 1024.0 * 1024.0;
        match s.n {
            0 => "–".into(),
            1 => format!("{:.0}", s.mean / m),
            _ => format!("{:.0} ± {:.0}", s.mean / m, s.sd / m),
        }
    }

    /// The "Runs" table's columns after a run's name and status, shared by the Markdown
    /// and HTML reports.
    pub const RUN_HEADER: [&str; 11] = [
        "order in repeat",
        "micro-batch",
        "k",
        "effective batch",
        "optimiser steps/epoch",
        "steps",
        "images trained",
        "skipped (fp16)",
        "final scale",
        "test accuracy",
        "wall (s)",
    ];

    /// One run's cells in [`RUN_HEADER`] order.
    pub fn run_cells(r: &RunResult) -> [String; 11] {
        [
            (r.order + 1).to_string(),
            r.micro_batch.to_string(),
            r.switches.grad_accum_steps.to_string(),
            r.effective_batch.to_string(),
            r.optimizer_steps_per_epoch.to_string(),
            r.optimizer_steps.to_string(),
            r.trained_images.to_string(),
            r.amp.skipped_steps.to_string(),
            r.amp.final_scale.map_or("–".into(), |v| format!("{v}")),
            format!("{:.1} %", 100.0 * r.final_test_accuracy),
            format!("{:.1}", r.wall_secs),
        ]
    }

    /// How a run ended, in words ("partial" for a run the user stopped).
    pub fn status(s: RunStatus) -> &'static str {
        match s {
            RunStatus::Finished => "finished",
            RunStatus::ReachedTarget => "reached target",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
        }
    }

    /// A fraction as a percentage, mean ± sd over repeats; "–" with no finished run.
    pub fn pct(s: &Stat) -> String {
        if s.n == 0 {
            "–".into()
        } else if s.n > 1 {
            format!("{:.1} ± {:.1} %", 100.0 * s.mean, 100.0 * s.sd)
        } else {
            format!("{:.1} %", 100.0 * s.mean)
        }
    }
    /// A number, mean ± sd over repeats; "–" with no finished run.
    pub fn num(s: &Stat, decimals: usize) -> String {
        if s.n == 0 {
            "–".into()
        } else if s.n > 1 {
            format!("{:.*} ± {:.*}", decimals, s.mean, decimals, s.sd)
        } else {
            format!("{:.*}", decimals, s.mean)
        }
    }
    pub fn mib(bytes: Option<u64>) -> String {
        bytes.map_or("–".to_string(), |b| {
            format!("{:.0}", b as f64 / (1024.0 * 1024.0))
        })
    }
    /// What each switch changes, in words (every report ends with it).
    pub const SWITCHES_EXPLAINED: [(&str, &str); 3] = [
        (
            "Gradient accumulation (GA)",
            "sums the gradients of k micro-batches (each loss scaled by 1/k) before one optimiser step. It changes the effective batch (micro-batch × k) and the number of optimiser steps per epoch, not the arithmetic of a forward or backward pass; it lets a large effective batch fit in memory.",
        ),
        (
            "Automatic mixed precision (AMP)",
            "runs convolutions, matrix products and activations in bf16 or fp16 while the master weights, batch/layer norm, softmax and the loss stay in f32. fp16 needs a loss scaler (steps with overflowing gradients are skipped). On GPUs with tensor cores this is where speed comes from. On a CPU with bf16 dot-product instructions (AVX512-BF16 or AMX, detected at run time) bf16 runs the dense convolutions' matrix products on them, with f32 accumulation; the notes above name the unit and what stays f32. Elsewhere, and for fp16 on any CPU, annt computes half-precision products in f32 and rounds: AMP then shows the numerics, not a speed-up.",
        ),
        (
            "Pinned memory (PM)",
            "stages batches in page-locked host memory so the host-to-device copy can run asynchronously. It changes only how batches reach a GPU; on a CPU there is no copy and the switch does not apply.",
        ),
    ];
}
