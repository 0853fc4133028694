//! Which switch helped, and how sure that is: the main effect of each switch on images/s,
//! training time, peak host memory and final test accuracy, over the session's finished
//! runs, with Welch's t-test (unequal variances, two-sided, α = 0.05) where each side has
//! at least two runs.
//!
//! A switch's effect compares every finished run with it on against every one with it off
//! (for an ablation that averages over the other switches — the main effect of a 2ᵏ
//! factorial design). Switches that are on in exactly the same runs (an A/B's tuned arm
//! turns several on at once) cannot be told apart: they form one factor, named as such.
//! In an ablation with GA and AMP both varied, the AMP × GA interaction on each metric is
//! given as an estimate (the ratio of AMP's effect with GA to its effect without), untested.
//!
//! Computed from the runs when a report or the window needs it, so reports saved before
//! this existed get a verdict too.

use serde::Serialize;

use super::result::{RunResult, SessionResult, Stat};
use crate::accel::amp::AmpMode;

/// Significance level of the test.
pub const ALPHA: f64 = 0.05;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    ImagesPerSec,
    TrainSecs,
    PeakHostMib,
    TestAccuracy,
}

impl Metric {
    pub const ALL: [Metric; 4] = [
        Metric::ImagesPerSec,
        Metric::TrainSecs,
        Metric::PeakHostMib,
        Metric::TestAccuracy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Metric::ImagesPerSec => "images/s",
            Metric::TrainSecs => "train time (s)",
            Metric::PeakHostMib => "host peak (MiB)",
            Metric::TestAccuracy => "test accuracy (%)",
        }
    }

    /// The run's value (accuracy in percent); `None` where the run has none.
    fn of(self, r: &RunResult) -> Option<f64> {
        match self {
            Metric::ImagesPerSec => {
                (r.timing.images_per_sec > 0.0).then_some(r.timing.images_per_sec)
            }
            Metric::TrainSecs => Some(r.train_secs),
            Metric::PeakHostMib => r.peak_host_bytes.map(|b| b as f64 / 1048576.0),
            Metric::TestAccuracy => Some(100.0 * r.final_test_accuracy),
        }
    }

    fn higher_is_better(self) -> bool {
        matches!(self, Metric::ImagesPerSec | Metric::TestAccuracy)
    }

    /// Accuracy changes in percentage points; the others relatively.
    fn relative(self) -> bool {
        self != Metric::TestAccuracy
    }
}

/// What the test says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Conclusion {
    /// Significantly better (p < α).
    Better,
    /// Significantly worse.
    Worse,
    /// The difference is within run-to-run noise (p ≥ α).
    WithinNoise,
    /// Fewer than two runs on a side: no uncertainty can be given.
    Untested,
}

impl Conclusion {
    pub fn label(self) -> &'static str {
        match self {
            Conclusion::Better => "better",
            Conclusion::Worse => "worse",
            Conclusion::WithinNoise => "within noise",
            Conclusion::Untested => "untested (1 run a side)",
        }
    }
}

/// Welch's t-test of two samples.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Welch {
    pub t: f64,
    pub df: f64,
    /// Two-sided p-value.
    pub p: f64,
}

/// The effect of one factor on one metric.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Effect {
    /// "GA", "AMP", "PM", or several joined with " + " when they cannot be separated.
    pub factor: String,
    pub metric: Metric,
    pub off: Stat,
    pub on: Stat,
    /// `on / off − 1` (relative metrics) or `on − off` in points (accuracy).
    pub change: f64,
    pub test: Option<Welch>,
    pub conclusion: Conclusion,
}

impl Effect {
    /// The change in words: "+12.3 %" or "−1.4 points".
    pub fn change_text(&self) -> String {
        if self.metric.relative() {
            format!("{:+.1} %", 100.0 * self.change)
        } else {
            format!("{:+.1} points", self.change)
        }
    }

    pub fn p_text(&self) -> String {
        match &self.test {
            Some(w) => format!("p = {:.3} (t = {:.2}, df = {:.1})", w.p, w.t, w.df),
            None => "–".into(),
        }
    }
}

/// An interaction estimate (ablation only): how a factor's effect changes with another on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Interaction {
    pub factors: String,
    pub metric: Metric,
    /// `(a on, b on) / (a off, b on)` ÷ `(a on, b off) / (a off, b off)` for relative
    /// metrics; the difference of differences in points for accuracy. 1 (or 0): none.
    pub estimate: f64,
}

impl Interaction {
    pub fn estimate_text(&self) -> String {
        if self.metric.relative() {
            format!("×{:.3}", self.estimate)
        } else {
            format!("{:+.1} points", self.estimate)
        }
    }

    /// What "no interaction" reads as.
    pub fn neutral_text(&self) -> &'static str {
        if self.metric.relative() {
            "×1"
        } else {
            "0 points"
        }
    }
}

/// The verdict of a session.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Verdict {
    pub effects: Vec<Effect>,
    pub interactions: Vec<Interaction>,
    /// What the verdict rests on, and what it cannot say.
    pub notes: Vec<String>,
}

type Factor = (&'static str, fn(&RunResult) -> bool);

const FACTORS: [Factor; 3] = [
    ("GA", |r| r.switches.grad_accum_steps > 1),
    ("AMP", |r| r.switches.amp != AmpMode::Off),
    // Pinned memory only where it applies (on the CPU it is a no-op).
    ("PM", |r| {
        r.switches.pinned_memory && r.pinned_memory_applicable
    }),
];

/// The verdict over the session's finished runs.
pub fn verdict(session: &SessionResult) -> Verdict {
    let runs: Vec<&RunResult> = session.runs.iter().filter(|r| r.status.counts()).collect();
    let mut out = Verdict::default();
    // Factors that vary, grouped by the runs they are on in.
    let mut groups: Vec<(Vec<&'static str>, Vec<bool>)> = Vec::new();
    for (name, on) in FACTORS {
        let pattern: Vec<bool> = runs.iter().map(|r| on(r)).collect();
        if !(pattern.iter().any(|&b| b) && pattern.iter().any(|&b| !b)) {
            continue;
        }
        match groups.iter_mut().find(|(_, p)| *p == pattern) {
            Some((names, _)) => names.push(name),
            None => groups.push((vec![name], pattern)),
        }
    }
    if groups.is_empty() {
        out.notes
            .push("No switch varies between finished runs: there is nothing to compare.".into());
        return out;
    }
    for (names, pattern) in &groups {
        let factor = names.join(" + ");
        if names.len() > 1 {
            out.notes.push(format!(
                "{factor}: on in the same runs, so their effects cannot be separated (an ablation can)."
            ));
        }
        for metric in Metric::ALL {
            let side = |want: bool| -> Vec<f64> {
                runs.iter()
                    .zip(pattern)
                    .filter(|(_, on)| **on == want)
                    .filter_map(|(r, _)| metric.of(r))
                    .collect()
            };
            let (off, on) = (side(false), side(true));
            if off.is_empty() || on.is_empty() {
                continue;
            }
            let (s_off, s_on) = (Stat::of(&off), Stat::of(&on));
            let change = if metric.relative() {
                if s_off.mean != 0.0 {
                    s_on.mean / s_off.mean - 1.0
                } else {
                    0.0
                }
            } else {
                s_on.mean - s_off.mean
            };
            let test = welch(&on, &off);
            let conclusion = match test {
                None => Conclusion::Untested,
                Some(w) if w.p >= ALPHA => Conclusion::WithinNoise,
                Some(_) => {
                    let up = s_on.mean > s_off.mean;
                    if up == metric.higher_is_better() {
                        Conclusion::Better
                    } else {
                        Conclusion::Worse
                    }
                }
            };
            out.effects.push(Effect {
                factor: factor.clone(),
                metric,
                off: s_off,
                on: s_on,
                change,
                test,
                conclusion,
            });
        }
    }
    // AMP × GA where both vary on their own (an ablation).
    let find = |n: &str| groups.iter().find(|(names, _)| names == &vec![n]);
    if let (Some((_, amp)), Some((_, ga))) = (find("AMP"), find("GA")) {
        for metric in Metric::ALL {
            let cell = |a: bool, g: bool| -> Option<f64> {
                let v: Vec<f64> = runs
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| amp[*i] == a && ga[*i] == g)
                    .filter_map(|(_, r)| metric.of(r))
                    .collect();
                (!v.is_empty()).then(|| Stat::of(&v).mean)
            };
            if let (Some(a1g1), Some(a0g1), Some(a1g0), Some(a0g0)) = (
                cell(true, true),
                cell(false, true),
                cell(true, false),
                cell(false, false),
            ) {
                let estimate = if metric.relative() {
                    if a0g1 > 0.0 && a0g0 > 0.0 && a1g0 > 0.0 {
                        (a1g1 / a0g1) / (a1g0 / a0g0)
                    } else {
                        1.0
                    }
                } else {
                    (a1g1 - a0g1) - (a1g0 - a0g0)
                };
                out.interactions.push(Interaction {
                    factors: "AMP × GA".into(),
                    metric,
                    estimate,
                });
            }
        }
    }
    let untested = out
        .effects
        .iter()
        .any(|e| e.conclusion == Conclusion::Untested);
    out.notes.push(format!(
        "Each effect compares the finished runs with the switch on against those with it off (mean ± sample sd, n runs). Welch's t-test (two-sided, unequal variances) at α = {ALPHA}: \"within noise\" means the difference could be run-to-run variation.{}",
        if untested {
            " With one run on a side there is no estimate of that variation: repeat the session (--repeats ≥ 2) to test."
        } else {
            ""
        }
    ));
    out
}

/// Welch's t-test of `a` against `b`; `None` with fewer than two values on a side.
pub fn welch(a: &[f64], b: &[f64]) -> Option<Welch> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (sa, sb) = (Stat::of(a), Stat::of(b));
    let (va, vb) = (
        sa.sd * sa.sd / a.len() as f64,
        sb.sd * sb.sd / b.len() as f64,
    );
    let diff = sa.mean - sb.mean;
    if va + vb == 0.0 {
        // No variation at all: identical samples are equal, different ones differ surely.
        let (t, p) = if diff == 0.0 {
            (0.0, 1.0)
        } else {
            (diff.signum() * f64::INFINITY, 0.0)
        };
        return Some(Welch {
            t,
            df: (a.len() + b.len() - 2) as f64,
            p,
        });
    }
    let t = diff / (va + vb).sqrt();
    let df = (va + vb).powi(2) / (va * va / (a.len() - 1) as f64 + vb * vb / (b.len() - 1) as f64);
    let p = student_t_two_sided(t, df);
    Some(Welch { t, df, p })
}

/// P(|T| ≥ |t|) for Student's t with `df` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2).
pub fn student_t_two_sided(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return 0.0;
    }
    let x = df / (df + t * t);
    incomplete_beta(x, df / 2.0, 0.5).clamp(0.0, 1.0)
}

/// The regularised incomplete beta function I_x(a, b), by its continued fraction (Lentz's
/// method), using the symmetry I_x(a, b) = 1 − I_{1−x}(b, a) where that converges faster.
fn incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_fraction(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_fraction(1.0 - x, b, a) / b
    }
}

fn beta_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        // Even step.
        let num = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2));
        d = 1.0 + num * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + num / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        // Odd step.
        let num = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0));
        d = 1.0 + num * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + num / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms: ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = G[0];
    for (i, g) in G.iter().enumerate().skip(1) {
        sum += g / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::result::RunStatus;
    use crate::config::Switches;

    #[test]
    fn the_t_distribution_matches_published_values() {
        // Two-sided p of Student's t (R: 2 * pt(-|t|, df)).
        for (t, df, p) in [
            (2.0, 8.0, 0.080_516_8),
            (2.228_139, 10.0, 0.05),
            (1.0, 1.0, 0.5),
            (0.0, 5.0, 1.0),
            (3.5, 30.0, 0.001_476_6),
        ] {
            let got = student_t_two_sided(t, df);
            assert!((got - p).abs() < 2e-6, "t={t} df={df}: {got} vs {p}");
        }
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
    }

    #[test]
    fn welch_matches_a_hand_computed_case() {
        // [1..5] vs [3..7]: means differ by 2, variances 2.5 each: t = −2, df = 8.
        let w = welch(&[1.0, 2.0, 3.0, 4.0, 5.0], &[3.0, 4.0, 5.0, 6.0, 7.0]).expect("test");
        assert!(
            (w.t + 2.0).abs() < 1e-12 && (w.df - 8.0).abs() < 1e-12,
            "{w:?}"
        );
        assert!((w.p - 0.080_516_8).abs() < 2e-6, "{w:?}");
        assert!(welch(&[1.0], &[2.0, 3.0]).is_none());
        assert_eq!(welch(&[2.0, 2.0], &[2.0, 2.0]).expect("t").p, 1.0);
    }

    fn run(arm: &str, ga: usize, amp: AmpMode, ips: f64, acc: f64, repeat: usize) -> RunResult {
        let mut r = RunResult {
            arm: arm.into(),
            repeat,
            status: RunStatus::Finished,
            switches: Switches {
                grad_accum_steps: ga,
                amp,
                pinned_memory: false,
            },
            final_test_accuracy: acc,
            train_secs: 1000.0 / ips,
            peak_host_bytes: Some(100 << 20),
            ..RunResult::default()
        };
        r.timing.images_per_sec = ips;
        r
    }

    #[test]
    fn an_ablation_separates_the_switches_and_tells_noise_from_an_effect() {
        let mut s = SessionResult::default();
        // AMP doubles images/s (clearly); GA changes nothing but noise; a failed run is
        // left out.
        for (repeat, jitter) in [(0, 1.0), (1, -1.0), (2, 0.5)] {
            s.runs.push(run(
                "base",
                1,
                AmpMode::Off,
                100.0 + jitter,
                0.50 + jitter / 100.0,
                repeat,
            ));
            s.runs
                .push(run("GA", 2, AmpMode::Off, 100.0 - jitter, 0.50, repeat));
            s.runs
                .push(run("AMP", 1, AmpMode::Bf16, 200.0 + jitter, 0.50, repeat));
            s.runs.push(run(
                "GA+AMP",
                2,
                AmpMode::Bf16,
                200.0 - jitter,
                0.50,
                repeat,
            ));
        }
        let mut failed = run("AMP", 1, AmpMode::Bf16, 1.0, 0.0, 3);
        failed.status = RunStatus::Failed;
        s.runs.push(failed);
        let v = verdict(&s);
        let get = |f: &str, m: Metric| {
            v.effects
                .iter()
                .find(|e| e.factor == f && e.metric == m)
                .unwrap_or_else(|| panic!("{f} {m:?}"))
        };
        let amp = get("AMP", Metric::ImagesPerSec);
        assert_eq!(amp.conclusion, Conclusion::Better, "{amp:?}");
        assert!((amp.change - 1.0).abs() < 0.02, "{amp:?}");
        assert_eq!(amp.on.n, 6, "the failed run is not counted");
        let ga = get("GA", Metric::ImagesPerSec);
        assert_eq!(ga.conclusion, Conclusion::WithinNoise, "{ga:?}");
        assert_eq!(get("AMP", Metric::TrainSecs).conclusion, Conclusion::Better);
        let i = v
            .interactions
            .iter()
            .find(|i| i.metric == Metric::ImagesPerSec)
            .expect("AMP × GA");
        assert!((i.estimate - 1.0).abs() < 0.05, "{i:?}");
    }

    #[test]
    fn an_ab_without_repeats_names_its_confounded_factor_and_tests_nothing() {
        let mut s = SessionResult::default();
        s.runs.push(run("baseline", 1, AmpMode::Off, 100.0, 0.5, 0));
        s.runs.push(run("tuned", 2, AmpMode::Bf16, 150.0, 0.48, 0));
        let v = verdict(&s);
        assert!(v.effects.iter().all(|e| e.factor == "GA + AMP"));
        assert!(
            v.effects
                .iter()
                .all(|e| e.conclusion == Conclusion::Untested)
        );
        assert!(v.notes.iter().any(|n| n.contains("cannot be separated")));
        assert!(v.notes.iter().any(|n| n.contains("--repeats")));
        let e = &v.effects[0];
        assert_eq!(e.change_text(), "+50.0 %");
    }
}
