//! The comparison as Markdown tables.

use std::fmt::Write as _;

use super::fmt::{
    RUN_HEADER, SWITCHES_EXPLAINED, VERDICT_HEADER, arm_name, comparison_header, comparison_row,
    run_cells, status, verdict_cells,
};
use crate::bench::result::{SessionResult, definitions};
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
    let header = comparison_header(s);
    let _ = writeln!(o, "| {} |", header.join(" | "));
    let _ = writeln!(o, "|{}", "---|".repeat(header.len()));
    for a in &s.summary {
        let cells: Vec<String> = comparison_row(s, a).iter().map(|c| cell(c)).collect();
        let _ = writeln!(o, "| {} |", cells.join(" | "));
    }
    let _ = writeln!(o);
    for d in definitions::ALL {
        let _ = writeln!(o, "- {}", cell(d));
    }
    if let Some(note) = super::fmt::target_note(s) {
        let _ = writeln!(o, "- {}", cell(&note));
    }
    let paper = super::fmt::paper_rows(s);
    if let Some(p) = s.paper.as_ref().filter(|_| !paper.is_empty()) {
        let _ = writeln!(o, "\n## The paper's figures beside these\n");
        let _ = writeln!(o, "| {} |", super::fmt::PAPER_HEADER.join(" | "));
        let _ = writeln!(o, "|{}", "---|".repeat(super::fmt::PAPER_HEADER.len()));
        for row in &paper {
            let cells = row.clone().map(|c| cell(&c));
            let _ = writeln!(o, "| {} |", cells.join(" | "));
        }
        let _ = writeln!(o, "\nPaper figures: {}. {}", cell(&p.source), cell(&p.note));
    }
    let verdict = crate::bench::verdict::verdict(s);
    let _ = writeln!(o, "\n## Verdict per switch\n");
    if !verdict.effects.is_empty() {
        let _ = writeln!(o, "| {} |", VERDICT_HEADER.join(" | "));
        let _ = writeln!(o, "|{}", "---|".repeat(VERDICT_HEADER.len()));
        for e in &verdict.effects {
            let cells = verdict_cells(e).map(|c| cell(&c));
            let _ = writeln!(o, "| {} |", cells.join(" | "));
        }
        let _ = writeln!(o);
    }
    for i in &verdict.interactions {
        let _ = writeln!(
            o,
            "- {} on {}: {} (estimate, untested; {} = no interaction)",
            i.factors,
            i.metric.label(),
            i.estimate_text(),
            i.neutral_text()
        );
    }
    for n in &verdict.notes {
        let _ = writeln!(o, "- {}", cell(n));
    }
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
        let _ = writeln!(o, "| {} | {} |", cell(&arm_name(a)), cells.join(" | "));
    }
    let _ = writeln!(o, "\n## Runs\n");
    let _ = writeln!(o, "| arm | repeat | status | {} |", RUN_HEADER.join(" | "));
    let _ = writeln!(o, "|---|---|---|{}", "---|".repeat(RUN_HEADER.len()));
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
