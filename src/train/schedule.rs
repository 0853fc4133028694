//! Learning-rate schedules as a factor on each group's base rate, indexed by optimiser step
//! (or by micro-batch when a run asks for the paper's per-micro-batch stepping).
//!
//! Every schedule reproduces a PyTorch (or Hugging Face) scheduler driven the usual way —
//! the rate used for step `s` is the one the scheduler shows after `s` calls of
//! `scheduler.step()` (per-epoch schedulers: after `s / steps_per_epoch` calls). The tests
//! compare against values computed with torch 2.15.

use serde::{Deserialize, Serialize};

fn pct() -> f64 {
    0.3
}
fn div() -> f64 {
    25.0
}
fn fdiv() -> f64 {
    1e4
}
fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ScheduleConfig {
    /// The base rate throughout.
    Constant,
    /// `torch.optim.lr_scheduler.OneCycleLR` with `three_phase=False`, stepped once per
    /// optimiser step: the optimiser's lr is `max_lr`. Starts at `1/div_factor`, peaks at
    /// step `pct_start·total − 1`, ends at `1/(div_factor·final_div_factor)` on the last step.
    OneCycle {
        #[serde(default = "pct")]
        pct_start: f64,
        #[serde(default = "div")]
        div_factor: f64,
        #[serde(default = "fdiv")]
        final_div_factor: f64,
        /// Cosine annealing (torch's `anneal_strategy="cos"`); false: linear.
        #[serde(default = "yes")]
        anneal_cos: bool,
    },
    /// Hugging Face's `get_cosine_with_min_lr_schedule_with_warmup` (`min_lr_rate =
    /// min_factor`; with `min_factor = 0` it is `get_cosine_schedule_with_warmup`): linear
    /// warm-up from 0, factor `s / warmup_steps` for `s < warmup_steps`, then
    /// `min + (1 − min)·½(1 + cos(π·p))` with `p = (s − warmup) / (total − warmup)`, which
    /// reaches `min_factor` at the end of the run (and stays there past it).
    CosineWarmup {
        warmup_steps: u64,
        #[serde(default)]
        min_factor: f64,
    },
    /// `torch.optim.lr_scheduler.ExponentialLR` stepped once per epoch: factor γ^epoch.
    Exponential { gamma: f64 },
    /// `torch.optim.lr_scheduler.StepLR(step_size = step_epochs)` stepped once per epoch:
    /// factor γ^⌊epoch / step_epochs⌋.
    Step { step_epochs: u64, gamma: f64 },
}

impl ScheduleConfig {
    /// Cosine decay after a linear warm-up over the first 5 % of `total_steps` (at least
    /// one), to zero.
    pub fn cosine_warmup_for(total_steps: u64) -> Self {
        ScheduleConfig::CosineWarmup {
            warmup_steps: (total_steps / 20).max(1),
            min_factor: 0.0,
        }
    }

    /// ×0.975 per epoch.
    pub fn exponential() -> Self {
        ScheduleConfig::Exponential { gamma: 0.975 }
    }

    /// ×0.1 after each third of `epochs` (at least every epoch).
    pub fn step_for(epochs: u64) -> Self {
        ScheduleConfig::Step {
            step_epochs: epochs.div_ceil(3).max(1),
            gamma: 0.1,
        }
    }

    /// One-cycle with PyTorch's defaults: what `kind = "one-cycle"` alone gives in a preset.
    pub fn one_cycle() -> Self {
        ScheduleConfig::OneCycle {
            pct_start: pct(),
            div_factor: div(),
            final_div_factor: fdiv(),
            anneal_cos: yes(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("schedule: {0}")]
pub struct ScheduleError(String);

/// A schedule bound to a run's length.
#[derive(Clone, Debug)]
pub struct Schedule {
    cfg: ScheduleConfig,
    total_steps: u64,
    steps_per_epoch: u64,
}

fn positive(what: &str, v: f64) -> Result<(), ScheduleError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(ScheduleError(format!("{what} must be > 0, got {v}")))
    }
}

/// `base·γ^n` as PyTorch's recursive schedulers compute it: one multiplication per
/// `scheduler.step()`, so the rounding matches theirs (`powi` rounds differently).
fn repeated(gamma: f64, n: u64) -> f64 {
    (0..n).fold(1.0, |f, _| f * gamma)
}

impl Schedule {
    /// `total_steps`: optimiser steps in the whole run; `steps_per_epoch`: optimiser steps
    /// per epoch (0 counts as 1).
    pub fn new(
        cfg: &ScheduleConfig,
        total_steps: u64,
        steps_per_epoch: u64,
    ) -> Result<Self, ScheduleError> {
        match *cfg {
            ScheduleConfig::Constant => {}
            ScheduleConfig::OneCycle {
                pct_start,
                div_factor,
                final_div_factor,
                ..
            } => {
                if !(0.0..=1.0).contains(&pct_start) {
                    return Err(ScheduleError(format!(
                        "one-cycle pct_start must be in [0, 1], got {pct_start}"
                    )));
                }
                positive("one-cycle div_factor", div_factor)?;
                positive("one-cycle final_div_factor", final_div_factor)?;
                if total_steps == 0 {
                    return Err(ScheduleError("one-cycle needs at least 1 step".into()));
                }
            }
            ScheduleConfig::CosineWarmup { min_factor, .. } => {
                if !(0.0..=1.0).contains(&min_factor) {
                    return Err(ScheduleError(format!(
                        "cosine-warmup min_factor must be in [0, 1], got {min_factor}"
                    )));
                }
            }
            ScheduleConfig::Exponential { gamma } => positive("exponential gamma", gamma)?,
            ScheduleConfig::Step { step_epochs, gamma } => {
                positive("step gamma", gamma)?;
                if step_epochs == 0 {
                    return Err(ScheduleError("step_epochs must be ≥ 1".into()));
                }
            }
        }
        Ok(Self {
            cfg: cfg.clone(),
            total_steps: total_steps.max(1),
            steps_per_epoch: steps_per_epoch.max(1),
        })
    }

    /// The learning-rate factor (multiplying each group's base rate) for optimiser step
    /// `step` (0-based).
    pub fn factor(&self, step: u64) -> f64 {
        let epoch = step / self.steps_per_epoch;
        match self.cfg {
            ScheduleConfig::Constant => 1.0,
            ScheduleConfig::OneCycle {
                pct_start,
                div_factor,
                final_div_factor,
                anneal_cos,
            } => {
                // torch's OneCycleLR.get_lr with max_lr = 1 (torch refuses steps past the
                // end; the last rate is kept there instead).
                let initial = 1.0 / div_factor;
                let min = initial / final_div_factor;
                let end1 = pct_start * self.total_steps as f64 - 1.0;
                let end2 = self.total_steps as f64 - 1.0;
                let s = step.min(self.total_steps - 1) as f64;
                let anneal = |start: f64, end: f64, pct: f64| {
                    if anneal_cos {
                        let cos_out = (std::f64::consts::PI * pct).cos() + 1.0;
                        end + (start - end) / 2.0 * cos_out
                    } else {
                        (end - start) * pct + start
                    }
                };
                if s <= end1 {
                    // end1 > 0 here unless s = end1 = 0, where torch divides by zero; the
                    // peak is reached at the end of the (one-step) warm-up phase.
                    let pct = if end1 > 0.0 { s / end1 } else { 1.0 };
                    anneal(initial, 1.0, pct)
                } else {
                    let pct = if end2 > end1 {
                        (s - end1) / (end2 - end1)
                    } else {
                        1.0
                    };
                    anneal(1.0, min, pct)
                }
            }
            ScheduleConfig::CosineWarmup {
                warmup_steps,
                min_factor,
            } => {
                if step < warmup_steps {
                    step as f64 / warmup_steps.max(1) as f64
                } else {
                    let span = self.total_steps.saturating_sub(warmup_steps).max(1) as f64;
                    let progress = ((step - warmup_steps) as f64 / span).min(1.0);
                    let f = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                    (f * (1.0 - min_factor) + min_factor).max(0.0)
                }
            }
            ScheduleConfig::Exponential { gamma } => repeated(gamma, epoch),
            ScheduleConfig::Step { step_epochs, gamma } => repeated(gamma, epoch / step_epochs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_values(s: &Schedule, expected: &[f64]) {
        for (step, e) in expected.iter().enumerate() {
            let got = s.factor(step as u64);
            assert!((got - e).abs() < 1e-12, "step {step}: {got} vs {e}");
        }
    }

    fn one_cycle(pct_start: f64, div_factor: f64, final_div_factor: f64, cos: bool) -> Schedule {
        let cfg = ScheduleConfig::OneCycle {
            pct_start,
            div_factor,
            final_div_factor,
            anneal_cos: cos,
        };
        Schedule::new(&cfg, 10, 5).expect("schedule")
    }

    // lrs(sched, n): opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0);
    //   s = sched(opt); out = []
    //   for _ in range(n): out.append(opt.param_groups[0]["lr"]); opt.step(); s.step()
    #[test]
    fn one_cycle_matches_pytorch() {
        // lrs(lambda o: OneCycleLR(o, max_lr=1.0, total_steps=10), 10)
        const COS: [f64; 10] = [
            0.040000000000000036,
            0.52,
            1.0,
            0.9504846320134737,
            0.8117456539497631,
            0.6112620219362893,
            0.38874197806371075,
            0.18825834605023697,
            0.049519367986526286,
            4e-06,
        ];
        assert_values(&one_cycle(0.3, 25.0, 1e4, true), &COS);
        // lrs(lambda o: OneCycleLR(o, max_lr=1.0, total_steps=10, pct_start=0.25,
        //     anneal_strategy="linear", div_factor=10, final_div_factor=100), 10)
        const LINEAR: [f64; 10] = [
            0.1,
            0.7,
            0.9334,
            0.8002,
            0.667,
            0.5338,
            0.40060000000000007,
            0.2674000000000001,
            0.13419999999999999,
            0.0010000000000000009,
        ];
        let s = one_cycle(0.25, 10.0, 100.0, false);
        assert_values(&s, &LINEAR);
        assert_eq!(
            s.factor(50),
            s.factor(9),
            "the last rate holds past the end"
        );
    }

    #[test]
    fn cosine_warmup_matches_hugging_face() {
        // lrs(lambda o: LambdaLR(o, hf), 14) with transformers'
        // get_cosine_with_min_lr_schedule_with_warmup lambda written out:
        // def hf(s, w=4, total=14, min_rate=0.1):
        //     if s < w: return s / max(1, w)
        //     p = (s - w) / max(1, total - w)
        //     return max(0, 0.5 * (1 + math.cos(math.pi * 0.5 * 2.0 * p)) * (1 - min_rate) + min_rate)
        const HF: [f64; 14] = [
            0.0,
            0.25,
            0.5,
            0.75,
            1.0,
            0.9779754323328191,
            0.9140576474687263,
            0.8145033635316129,
            0.6890576474687263,
            0.55,
            0.41094235253127376,
            0.2854966364683872,
            0.18594235253127372,
            0.12202456766718092,
        ];
        let cfg = ScheduleConfig::CosineWarmup {
            warmup_steps: 4,
            min_factor: 0.1,
        };
        let s = Schedule::new(&cfg, 14, 7).expect("schedule");
        assert_values(&s, &HF);
        assert!((s.factor(14) - 0.1).abs() < 1e-15 && (s.factor(100) - 0.1).abs() < 1e-15);
    }

    #[test]
    fn per_epoch_schedules_match_pytorch() {
        // lrs(lambda o: ExponentialLR(o, gamma=0.975), 12): one value per epoch.
        const EXP: [f64; 12] = [
            1.0,
            0.975,
            0.9506249999999999,
            0.9268593749999999,
            0.9036878906249999,
            0.8810956933593749,
            0.8590683010253904,
            0.8375915934997556,
            0.8166518036622618,
            0.7962355085707052,
            0.7763296208564376,
            0.7569213803350267,
        ];
        let e = Schedule::new(&ScheduleConfig::Exponential { gamma: 0.975 }, 36, 3).expect("s");
        for step in 0..36u64 {
            assert_eq!(e.factor(step), EXP[(step / 3) as usize], "step {step}");
        }
        // lrs(lambda o: StepLR(o, step_size=3, gamma=0.1), 10)
        const STEP: [f64; 10] = [
            1.0,
            1.0,
            1.0,
            0.1,
            0.1,
            0.1,
            0.010000000000000002,
            0.010000000000000002,
            0.010000000000000002,
            0.0010000000000000002,
        ];
        let cfg = ScheduleConfig::Step {
            step_epochs: 3,
            gamma: 0.1,
        };
        let st = Schedule::new(&cfg, 20, 2).expect("s");
        for step in 0..20u64 {
            assert_eq!(st.factor(step), STEP[(step / 2) as usize], "step {step}");
        }
        let c = Schedule::new(&ScheduleConfig::Constant, 5, 1).expect("s");
        assert_eq!((c.factor(0), c.factor(99)), (1.0, 1.0));
    }

    #[test]
    fn invalid_settings_are_refused() {
        let bad = [
            ScheduleConfig::Step {
                step_epochs: 0,
                gamma: 0.1,
            },
            ScheduleConfig::Exponential { gamma: 0.0 },
            ScheduleConfig::Exponential { gamma: f64::NAN },
            ScheduleConfig::OneCycle {
                pct_start: 1.5,
                div_factor: 25.0,
                final_div_factor: 1e4,
                anneal_cos: true,
            },
            ScheduleConfig::CosineWarmup {
                warmup_steps: 2,
                min_factor: 2.0,
            },
        ];
        for cfg in bad {
            assert!(Schedule::new(&cfg, 10, 2).is_err(), "{cfg:?}");
        }
        let cfg: ScheduleConfig =
            toml::from_str("kind = \"one-cycle\"\npct_start = 0.25").expect("toml");
        assert_eq!(
            cfg,
            ScheduleConfig::OneCycle {
                pct_start: 0.25,
                div_factor: 25.0,
                final_div_factor: 1e4,
                anneal_cos: true
            }
        );
    }
}
