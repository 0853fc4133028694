//! One CSV row per run, a header first. Fields holding a comma, quote or line break are
//! quoted with inner quotes doubled (RFC 4180); lines end in `\n`. Numbers are plain
//! (fractions, seconds, bytes) so a spreadsheet can compute with them.

use crate::bench::result::SessionResult;
use crate::train::timing::Phase;

fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or(String::new(), |v| v.to_string())
}

pub fn render(s: &SessionResult) -> String {
    let mut header: Vec<String> = [
        "arm",
        "repeat",
        "status",
        "grad_accum_steps",
        "amp",
        "pinned_memory",
        "micro_batch",
        "effective_batch",
        "order",
        "optimizer_steps",
        "trained_images",
        "final_test_accuracy",
        "final_macro_f1",
        "wall_secs",
        "train_secs",
        "eval_secs",
        "images_per_sec",
        "ms_per_step",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect();
    header.extend(
        Phase::ALL
            .iter()
            .map(|p| format!("{}_ms", serde_plain(*p).replace('-', "_"))),
    );
    header.extend(
        [
            "peak_host_bytes",
            "host_bytes_at_start",
            "peak_device_bytes",
            "device_bytes_at_start",
            "skipped_steps",
            "final_scale",
            "time_to_target_secs",
        ]
        .map(String::from),
    );
    let mut out = header.join(",") + "\n";
    for r in &s.runs {
        let mut row = vec![
            field(&r.arm),
            r.repeat.to_string(),
            field(&serde_plain(r.status)),
            r.switches.grad_accum_steps.to_string(),
            r.switches.amp.label().to_string(),
            r.switches.pinned_memory.to_string(),
            r.micro_batch.to_string(),
            r.effective_batch.to_string(),
            r.order.to_string(),
            r.optimizer_steps.to_string(),
            r.trained_images.to_string(),
            format!("{:.6}", r.final_test_accuracy),
            format!("{:.6}", r.final_macro_f1),
            format!("{:.3}", r.wall_secs),
            format!("{:.3}", r.train_secs),
            format!("{:.3}", r.eval_secs),
            format!("{:.2}", r.timing.images_per_sec),
            format!("{:.3}", r.timing.ms_per_step),
        ];
        for p in Phase::ALL {
            row.push(
                r.timing
                    .phase_ms_per_step
                    .iter()
                    .find(|x| x.0 == p)
                    .map_or(String::new(), |x| format!("{:.3}", x.1)),
            );
        }
        row.extend([
            opt(r.peak_host_bytes),
            opt(r.host_bytes_at_start),
            opt(r.peak_device_bytes),
            opt(r.device_bytes_at_start),
            r.amp.skipped_steps.to_string(),
            opt(r.amp.final_scale),
            opt(r.time_to_target_secs),
        ]);
        out += &(row.join(",") + "\n");
    }
    out
}

/// The verdict per switch ([`crate::bench::verdict`]) as CSV: one row per switch and
/// metric, with the test's numbers in their own columns.
pub fn render_verdict(s: &SessionResult) -> String {
    let v = crate::bench::verdict::verdict(s);
    let mut out = String::from(
        "switch,metric,off_mean,off_sd,off_n,on_mean,on_sd,on_n,change,welch_t,welch_df,welch_p,verdict\n",
    );
    for e in &v.effects {
        let (t, df, p) = e
            .test
            .map_or((String::new(), String::new(), String::new()), |w| {
                (w.t.to_string(), w.df.to_string(), w.p.to_string())
            });
        let row = [
            field(&e.factor),
            serde_plain(e.metric),
            e.off.mean.to_string(),
            e.off.sd.to_string(),
            e.off.n.to_string(),
            e.on.mean.to_string(),
            e.on.sd.to_string(),
            e.on.n.to_string(),
            e.change.to_string(),
            t,
            df,
            p,
            serde_plain(e.conclusion),
        ];
        out += &(row.join(",") + "\n");
    }
    out
}

/// A unit enum's serde name (`partial`, `reached-target`, `data-wait`): the words the JSON
/// report uses.
fn serde_plain<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
