//! A self-contained HTML page: the Markdown report's tables plus inline SVG line charts.
//! No scripts, fonts or images from elsewhere: the file can be mailed or archived as is.

use std::fmt::Write as _;

use super::fmt::{
    RUN_HEADER, SWITCHES_EXPLAINED, arm_name, comparison_header, comparison_row, run_cells, status,
};
use crate::bench::result::{RunResult, RunStatus, SessionResult, definitions};
use crate::train::timing::Phase;

const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A "nice" tick step for a range.
fn tick_step(span: f64) -> f64 {
    if span.is_nan() || span <= 0.0 {
        return 1.0;
    }
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    (if n < 1.5 {
        1.0
    } else if n < 3.0 {
        2.0
    } else if n < 7.0 {
        5.0
    } else {
        10.0
    }) * mag
}

/// A named, coloured line of (x, y) points.
type Series<'a> = (String, &'a str, Vec<(f64, f64)>);

/// One line chart: a polyline per run.
fn chart(title: &str, x_label: &str, series: &[Series]) -> String {
    let (w, left, right, top, bottom) = (560.0, 60.0, 150.0, 30.0, 40.0);
    // Tall enough for the legend (one line per run) beside the plot.
    let h = f64::max(300.0, top + 16.0 * series.len() as f64 + 12.0);
    let pts = series.iter().flat_map(|s| s.2.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        if x.is_finite() && y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{}">"#,
        esc(title)
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="18" font-size="14" font-weight="bold">{}</text>"#,
        left,
        esc(title)
    );
    if !x0.is_finite() {
        let _ = write!(
            svg,
            r#"<text x="{left}" y="120" font-size="12">no data</text></svg>"#
        );
        return svg;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
        y0 -= 1.0;
    }
    let pw = w - left - right;
    let ph = h - top - bottom;
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| top + ph - (y - y0) / (y1 - y0) * ph;
    let _ = write!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
    );
    for t in ticks(y0, y1) {
        let y = sy(t);
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
            left + pw,
            left - 4.0,
            y + 3.0,
            trim(t)
        );
    }
    for t in ticks(x0, x1) {
        let x = sx(t);
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{}" font-size="10" text-anchor="middle">{}</text>"#,
            top + ph + 14.0,
            trim(t)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 6.0,
        esc(x_label)
    );
    for (i, (name, colour, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for p in &path {
            let (cx, cy) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(
                svg,
                r#"<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>"#
            );
        }
        let ly = top + 12.0 + 16.0 * i as f64;
        let _ = write!(
            svg,
            r#"<rect x="{}" y="{}" width="12" height="4" fill="{colour}"/><text x="{}" y="{}" font-size="11">{}</text>"#,
            left + pw + 10.0,
            ly - 4.0,
            left + pw + 26.0,
            ly,
            esc(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Tick values at a "nice" step within `[lo, hi]`: computed from an index, so a step lost in
/// rounding can never loop, and never more than a dozen.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let step = tick_step(hi - lo);
    let first = (lo / step).ceil();
    (0..12)
        .map(|i| (first + f64::from(i)) * step)
        .take_while(|t| t.is_finite() && *t <= hi + step * 1e-9)
        .collect()
}

/// A tick label: at most 3 decimals, no trailing zeros, never "-0".
fn trim(v: f64) -> String {
    let s = format!("{:.3}", v + 0.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

fn run_name(r: &RunResult, repeats: usize) -> String {
    let partial = if r.status == RunStatus::Partial {
        " (partial)"
    } else {
        ""
    };
    if repeats > 1 {
        format!("{} #{}{partial}", r.arm, r.repeat + 1)
    } else {
        format!("{}{partial}", r.arm)
    }
}

pub fn render(s: &SessionResult) -> String {
    let mut o = String::new();
    let title = format!("annt report: {}", s.preset_name);
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}td:first-child,th:first-child{{text-align:left}}.charts{{display:flex;flex-wrap:wrap;gap:12px}}.note{{color:#555}}</style></head><body>",
        esc(&title)
    );
    let _ = write!(
        o,
        "<h1>{}</h1><p>{} plan, {} repeat(s). Data <b>{}</b>, model <b>{}</b>, device <b>{}</b>.</p>",
        esc(&title),
        esc(&s.plan),
        s.repeats,
        esc(&s.data_name),
        esc(&s.model_name),
        esc(&s.device)
    );
    if let Some(env) = &s.environment {
        let _ = write!(
            o,
            "<p class=\"note\">Environment: {}.</p>",
            esc(&env.one_line())
        );
    }
    o.push_str("<h2>Comparison</h2><table><tr>");
    for h in comparison_header(s) {
        let _ = write!(o, "<th>{}</th>", esc(h));
    }
    o.push_str("</tr>");
    for a in &s.summary {
        o.push_str("<tr>");
        for c in comparison_row(s, a) {
            let _ = write!(o, "<td>{}</td>", esc(&c));
        }
        o.push_str("</tr>");
    }
    o.push_str("</table><ul class=\"note\">");
    for d in definitions::ALL {
        let _ = write!(o, "<li>{}</li>", esc(d));
    }
    if let Some(note) = super::fmt::target_note(s) {
        let _ = write!(o, "<li>{}</li>", esc(&note));
    }
    o.push_str("</ul>");
    let mut by_epoch_acc = Vec::new();
    let mut by_epoch_loss = Vec::new();
    let mut by_epoch_speed = Vec::new();
    let mut by_time_acc = Vec::new();
    let (mut step_loss, mut step_speed, mut step_mem) = (Vec::new(), Vec::new(), Vec::new());
    for (i, r) in s.runs.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let name = run_name(r, s.repeats);
        let per_step = |f: &dyn Fn(&crate::bench::result::CurvePoint) -> Option<f64>| {
            r.curve
                .iter()
                .filter_map(|p| f(p).filter(|v| v.is_finite()).map(|v| (p.step as f64, v)))
                .collect::<Vec<_>>()
        };
        step_loss.push((name.clone(), c, per_step(&|p| Some(p.loss))));
        step_speed.push((
            name.clone(),
            c,
            per_step(&|p| (p.images_per_sec > 0.0).then_some(p.images_per_sec)),
        ));
        step_mem.push((name, c, per_step(&|p| p.host_mib)));
    }
    for (i, r) in s.runs.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let name = run_name(r, s.repeats);
        by_epoch_acc.push((
            name.clone(),
            c,
            r.epochs
                .iter()
                .map(|e| (e.epoch as f64, 100.0 * e.test_accuracy))
                .collect(),
        ));
        by_epoch_loss.push((
            name.clone(),
            c,
            r.epochs
                .iter()
                .map(|e| (e.epoch as f64, e.train_loss))
                .collect(),
        ));
        by_epoch_speed.push((
            name.clone(),
            c,
            r.epochs
                .iter()
                .map(|e| (e.epoch as f64, e.images_per_sec))
                .collect(),
        ));
        by_time_acc.push((
            name,
            c,
            r.epochs
                .iter()
                .map(|e| (e.wall_secs, 100.0 * e.test_accuracy))
                .collect(),
        ));
    }
    let _ = write!(
        o,
        "<h2>Curves</h2><div class=\"charts\">{}{}{}{}</div>",
        chart("Test accuracy (%)", "epoch", &by_epoch_acc),
        chart("Training loss", "epoch", &by_epoch_loss),
        chart("Images/s", "epoch", &by_epoch_speed),
        chart("Test accuracy (%) vs wall time", "seconds", &by_time_acc)
    );
    if step_loss.iter().any(|s| !s.2.is_empty()) {
        let _ = write!(
            o,
            "<h2>Per-step curves</h2><div class=\"charts\">{}{}{}</div>",
            chart("Training loss (per step)", "optimiser step", &step_loss),
            chart(
                "Images/s (timed steps so far)",
                "optimiser step",
                &step_speed
            ),
            chart("Host memory in use (MiB)", "optimiser step", &step_mem)
        );
    }
    let paper = super::fmt::paper_rows(s);
    if let Some(p) = s.paper.as_ref().filter(|_| !paper.is_empty()) {
        o.push_str("<h2>The paper's figures beside these</h2><table><tr>");
        for h in super::fmt::PAPER_HEADER {
            let _ = write!(o, "<th>{}</th>", esc(h));
        }
        o.push_str("</tr>");
        for row in &paper {
            let cells = row.clone().map(|c| esc(&c));
            let _ = write!(o, "<tr><td>{}</td></tr>", cells.join("</td><td>"));
        }
        let _ = write!(
            o,
            "</table><p class=\"note\">Paper figures: {}. {}</p>",
            esc(&p.source),
            esc(&p.note)
        );
    }
    let verdict = crate::bench::verdict::verdict(s);
    o.push_str("<h2>Verdict per switch</h2>");
    if !verdict.effects.is_empty() {
        o.push_str("<table><tr>");
        for h in super::fmt::VERDICT_HEADER {
            let _ = write!(o, "<th>{}</th>", esc(h));
        }
        o.push_str("</tr>");
        for e in &verdict.effects {
            let cells = super::fmt::verdict_cells(e).map(|c| esc(&c));
            let _ = write!(o, "<tr><td>{}</td></tr>", cells.join("</td><td>"));
        }
        o.push_str("</table>");
    }
    o.push_str("<ul>");
    for i in &verdict.interactions {
        let _ = write!(
            o,
            "<li>{} on {}: {} (estimate, untested; {} = no interaction)</li>",
            esc(&i.factors),
            esc(i.metric.label()),
            esc(&i.estimate_text()),
            esc(i.neutral_text())
        );
    }
    for n in &verdict.notes {
        let _ = write!(o, "<li>{}</li>", esc(n));
    }
    o.push_str("</ul>");
    let _ = write!(
        o,
        "<h2>Step time breakdown (ms per optimiser step)</h2><table><tr><th>arm</th>"
    );
    for p in Phase::ALL {
        let _ = write!(o, "<th>{}</th>", esc(p.label()));
    }
    o.push_str("</tr>");
    for a in &s.summary {
        let _ = write!(o, "<tr><td>{}</td>", esc(&arm_name(a)));
        for p in Phase::ALL {
            let v = a
                .phase_ms_per_step
                .iter()
                .find(|x| x.0 == p)
                .map_or("–".into(), |x| format!("{:.1}", x.1));
            let _ = write!(o, "<td>{v}</td>");
        }
        o.push_str("</tr>");
    }
    let _ = write!(
        o,
        "</table><h2>Runs</h2><table><tr><th>run</th><th>status</th>"
    );
    for h in RUN_HEADER {
        let _ = write!(o, "<th>{}</th>", esc(h));
    }
    o.push_str("</tr>");
    for r in &s.runs {
        let status = status(r.status);
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&run_name(r, s.repeats)),
            esc(status),
            run_cells(r).join("</td><td>")
        );
    }
    o.push_str("</table>");
    for r in s.runs.iter().filter(|r| r.error.is_some()) {
        let _ = write!(
            o,
            "<p><b>{} failed:</b> {}</p>",
            esc(&run_name(r, s.repeats)),
            esc(r.error.as_deref().unwrap_or(""))
        );
    }
    if !s.notes.is_empty() {
        o.push_str("<h2>What changed in this session</h2><ul>");
        for n in &s.notes {
            let _ = write!(o, "<li>{}</li>", esc(n));
        }
        o.push_str("</ul>");
    }
    o.push_str("<h2>What each switch changes</h2><ul>");
    for (name, text) in SWITCHES_EXPLAINED {
        let _ = write!(o, "<li><b>{}</b> {}</li>", esc(name), esc(text));
    }
    o.push_str("</ul></body></html>\n");
    o
}
