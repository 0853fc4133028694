//! The comparison as Markdown tables.

use std::fmt::Write as _;

use super::fmt::{SWITCHES_EXPLAINED, mib, num, pct, run_cells, status};
use crate::bench::result::SessionResult;
use crate::train::timing::Phase;

/// Text for a table cell or a line: a `|` would end the cell, a line break the row.
fn cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\r', '\n'], " ")
}

pub fn render(s: &SessionResult) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# annt report: {} ({} plan, {} repeat(s))\n",
        cell(&s.preset_name),
        cell(&s.plan),
        s.repeats
    );
    let _ = writeln!(
        o,
        "Data **{}**, model **{}**, device **{}**.",
        cell(&s.data_name),
        cell(&s.model_name),
        cell(&s.device)
    );
    if let Some(env) = &s.environment {
        let _ = writeln!(o, "\nEnvironment: {}.", cell(&env.one_line()));
    }
    let _ = writeln!(o, "\n## Comparison\n");
    let _ = writeln!(
        o,
        "| arm | test accuracy | macro-F1 | wall time (s) | train time (s) | images/s | peak memory (MiB) | speed-up vs baseline |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
    for a in &s.summary {
        let partial = if a.partial { " (partial)" } else { "" };
        let _ = writeln!(
            o,
            "| {}{partial} | {} | {} | {} | {} | {} | {} | {:.2}× |",
            cell(&a.arm),
            pct(&a.test_accuracy),
            num(&a.macro_f1, 3),
            num(&a.wall_secs, 1),
            num(&a.train_secs, 1),
            num(&a.images_per_sec, 1),
            mib(a.peak_device_bytes.or(a.peak_host_bytes)),
            a.speedup_vs_baseline
        );
    }
    let _ = writeln!(
        o,
        "\nSpeed-up = baseline's mean training time (wall time minus evaluation) / the arm's."
    );
    let _ = writeln!(o, "\n## Step time breakdown (ms per optimiser step)\n");
    let _ = writeln!(o, "| arm | {} |", Phase::ALL.map(|p| p.label()).join(" | "));
    let _ = writeln!(o, "|---|{}", "---|".repeat(Phase::ALL.len()));
    for a in &s.summary {
        let cells: Vec<String> = Phase::ALL
            .iter()
            .map(|p| {
                a.phase_ms_per_step
                    .iter()
                    .find(|x| x.0 == *p)
                    .map_or("–".into(), |x| format!("{:.1}", x.1))
            })
            .collect();
        let partial = if a.partial { " (partial)" } else { "" };
        let _ = writeln!(o, "| {}{partial} | {} |", cell(&a.arm), cells.join(" | "));
    }
    let _ = writeln!(o, "\n## Runs\n");
    let _ = writeln!(
        o,
        "| arm | repeat | status | micro-batch | k | effective batch | optimiser steps/epoch | steps | skipped (fp16) | final scale | test accuracy | wall (s) |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &s.runs {
        let status = status(r.status);
        let _ = writeln!(
            o,
            "| {} | {} | {status} | {} |",
            cell(&r.arm),
            r.repeat + 1,
            run_cells(r).join(" | ")
        );
    }
    // After the table: a line between its rows would end it.
    for r in &s.runs {
        if let Some(e) = &r.error {
            let _ = writeln!(
                o,
                "\n> {} (repeat {}) failed: {}",
                cell(&r.arm),
                r.repeat + 1,
                cell(e)
            );
        }
    }
    if !s.notes.is_empty() {
        let _ = writeln!(o, "\n## What changed in this session\n");
        for n in &s.notes {
            let _ = writeln!(o, "- {}", cell(n));
        }
    }
    let _ = writeln!(o, "\n## What each switch changes\n");
    for (name, text) in SWITCHES_EXPLAINED {
        let _ = writeln!(o, "- **{name}** {text}");
    }
    o
}
