//! Learning-rate schedules as a factor on each group's base rate, indexed by optimiser step
//! (or by micro-batch when a run asks for the paper's per-micro-batch stepping).

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
    Constant,
    /// `torch.optim.lr_scheduler.OneCycleLR` (two phases): the optimiser's lr is the peak.
    OneCycle {
        #[serde(default = "pct")]
        pct_start: f64,
        #[serde(default = "div")]
        div_factor: f64,
        #[serde(default = "fdiv")]
        final_div_factor: f64,
        #[serde(default = "yes")]
        anneal_cos: bool,
    },
    /// Linear warm-up to the base rate over `warmup_steps` (factor (s+1)/warmup), then
    /// cosine decay to `min_factor` at the last step.
    CosineWarmup {
        warmup_steps: u64,
        #[serde(default)]
        min_factor: f64,
    },
    /// Per epoch, as torch's ExponentialLR stepped once an epoch: factor γ^epoch.
    Exponential {
        gamma: f64,
    },
    /// Per epoch, as torch's StepLR: factor γ^(epoch / step_epochs).
    Step {
        step_epochs: u64,
        gamma: f64,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("schedule: {0}")]
pub struct ScheduleError(String);

#[derive(Clone, Debug)]
pub struct Schedule {
    cfg: ScheduleConfig,
    total_steps: u64,
    steps_per_epoch: u64,
}

impl Schedule {
    pub fn new(
        cfg: &ScheduleConfig,
        total_steps: u64,
        steps_per_epoch: u64,
    ) -> Result<Self, ScheduleError> {
        match *cfg {
            ScheduleConfig::OneCycle {
                pct_start,
                div_factor,
                final_div_factor,
                ..
            } => {
                if !(pct_start > 0.0 && pct_start < 1.0)
                    || div_factor <= 0.0
                    || final_div_factor <= 0.0
                {
                    return Err(ScheduleError(format!(
                        "one-cycle needs 0 < pct_start < 1 and positive divisors, got {cfg:?}"
                    )));
                }
                if total_steps < 2 {
                    return Err(ScheduleError(format!(
                        "one-cycle needs at least 2 steps, the run has {total_steps}"
                    )));
                }
            }
            ScheduleConfig::Exponential { gamma } | ScheduleConfig::Step { gamma, .. }
                if gamma.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) =>
            {
                return Err(ScheduleError(format!("gamma must be > 0, got {gamma}")));
            }
            ScheduleConfig::Step { step_epochs: 0, .. } => {
                return Err(ScheduleError("step_epochs must be ≥ 1".into()));
            }
            _ => {}
        }
        Ok(Self {
            cfg: cfg.clone(),
            total_steps: total_steps.max(1),
            steps_per_epoch: steps_per_epoch.max(1),
        })
    }

    /// The learning-rate factor for step `step` (0-based).
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
                let initial = 1.0 / div_factor;
                let min = initial / final_div_factor;
                let end1 = pct_start * self.total_steps as f64 - 1.0;
                let end2 = self.total_steps as f64 - 1.0;
                let s = step as f64;
                let anneal = |start: f64, end: f64, pct: f64| {
                    if anneal_cos {
                        end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
                    } else {
                        (end - start) * pct + start
                    }
                };
                if s <= end1 {
                    anneal(initial, 1.0, s / end1)
                } else {
                    anneal(1.0, min, (s - end1) / (end2 - end1))
                }
            }
            ScheduleConfig::CosineWarmup {
                warmup_steps,
                min_factor,
            } => {
                if step < warmup_steps {
                    (step + 1) as f64 / warmup_steps as f64
                } else {
                    let span = self.total_steps.saturating_sub(warmup_steps).max(1) as f64;
                    let p = ((step - warmup_steps) as f64 / span).min(1.0);
                    min_factor + (1.0 - min_factor) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
                }
            }
            ScheduleConfig::Exponential { gamma } => gamma.powi(epoch as i32),
            ScheduleConfig::Step { step_epochs, gamma } => gamma.powi((epoch / step_epochs) as i32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cycle_matches_pytorch() {
        // opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        // s = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10)
        // lrs = []; for _ in range(10): lrs.append(opt.param_groups[0]["lr"]); opt.step(); s.step()
        let s = Schedule::new(
            &ScheduleConfig::OneCycle {
                pct_start: 0.3,
                div_factor: 25.0,
                final_div_factor: 1e4,
                anneal_cos: true,
            },
            10,
            5,
        )
        .expect("schedule");
        for (step, expected) in ONE_CYCLE.iter().enumerate() {
            assert!(
                (s.factor(step as u64) - expected).abs() < 1e-12,
                "step {step}: {} vs {expected}",
                s.factor(step as u64)
            );
        }
    }

    const ONE_CYCLE: [f64; 10] = [
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

    #[test]
    fn per_epoch_schedules_and_cosine_warmup() {
        let e = Schedule::new(&ScheduleConfig::Exponential { gamma: 0.975 }, 100, 10).expect("s");
        assert_eq!(e.factor(9), 1.0);
        assert!(
            (e.factor(10) - 0.975).abs() < 1e-15 && (e.factor(25) - 0.975f64.powi(2)).abs() < 1e-15
        );
        let st = Schedule::new(
            &ScheduleConfig::Step {
                step_epochs: 3,
                gamma: 0.1,
            },
            100,
            10,
        )
        .expect("s");
        assert_eq!((st.factor(29), st.factor(30)), (1.0, 0.1));
        let c = Schedule::new(
            &ScheduleConfig::CosineWarmup {
                warmup_steps: 4,
                min_factor: 0.0,
            },
            14,
            7,
        )
        .expect("s");
        assert_eq!((c.factor(0), c.factor(3)), (0.25, 1.0));
        assert!((c.factor(9) - 0.5).abs() < 1e-12 && c.factor(14).abs() < 1e-12);
        assert!(
            Schedule::new(
                &ScheduleConfig::Step {
                    step_epochs: 0,
                    gamma: 0.1
                },
                10,
                1
            )
            .is_err()
        );
    }
}
