//! Benchmark plans: which arms a session trains. Every arm shares the preset's seed, so all
//! arms start from the same initial weights and see the same data order and augmentation;
//! only the switches differ.

use serde::{Deserialize, Serialize};

use crate::accel::amp::AmpMode;
use crate::config::{DeviceChoice, Preset, RunConfig, Switches};
use crate::util::rng::{Rng, mix_seed};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanKind {
    /// Baseline vs tuned.
    #[default]
    Ab,
    /// Every switch of the tuned arm alone and in every combination: 2³ = 8 arms on a GPU.
    /// On the CPU pinned memory does not apply (there is no host-to-device copy), so its
    /// four arms would train exactly what the other four do and their "speed-ups" would be
    /// noise: the CPU ablation is the 2² = 4 arms of GA × AMP.
    Ablation,
    /// One arm: the preset's run as given (what `annt run` does).
    Single,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub kind: PlanKind,
    /// Each arm is trained this many times (mean ± sd in the summary).
    pub repeats: usize,
    pub preset: Preset,
}

/// One arm of a plan: a label and the run it trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    pub label: String,
    pub run: RunConfig,
}

impl Plan {
    /// The arms in the order they run; the first is the reference for speed-ups.
    pub fn arms(&self) -> Vec<Arm> {
        let base = &self.preset.run;
        let with = |switches: Switches| {
            let mut run = base.clone();
            run.switches = switches;
            Arm {
                label: switches.label(),
                run,
            }
        };
        let off = Switches::default();
        let tuned = self.preset.tuned;
        match self.kind {
            PlanKind::Single => vec![Arm {
                label: base.switches.label(),
                run: base.clone(),
            }],
            PlanKind::Ab => vec![with(off), with(tuned)],
            PlanKind::Ablation => {
                // The tuned arm's own settings for each switch, or the off value of a switch
                // the tuned arm leaves off (then that switch's on-value is a default: GA×2,
                // bf16, pinned).
                let ga = if tuned.grad_accum_steps > 1 {
                    tuned.grad_accum_steps
                } else {
                    2
                };
                let amp = if tuned.amp != AmpMode::Off {
                    tuned.amp
                } else {
                    AmpMode::Bf16
                };
                let masks = if base.device == DeviceChoice::Cpu {
                    0..4u8
                } else {
                    0..8u8
                };
                masks
                    .map(|mask| {
                        with(Switches {
                            grad_accum_steps: if mask & 1 != 0 { ga } else { 1 },
                            amp: if mask & 2 != 0 { amp } else { AmpMode::Off },
                            pinned_memory: mask & 4 != 0,
                        })
                    })
                    .collect()
            }
        }
    }

    /// The order the arms run in repeat `repeat`, as indices into [`Plan::arms`]: a seeded
    /// shuffle of the arms (by the run's seed), rotated by one place per repeat. Over any
    /// `n` consecutive repeats of `n` arms each arm runs once in every position, so no arm
    /// always runs first (warm caches, a cool CPU's boost clock) or last; two arms simply
    /// alternate.
    pub fn order(&self, repeat: usize) -> Vec<usize> {
        let n = self.arms().len();
        let mut order: Vec<usize> = (0..n).collect();
        Rng::new(mix_seed(&[self.preset.run.train.seed, 0x4f52_4445])).shuffle(&mut order);
        if n > 0 {
            order.rotate_left(repeat % n);
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(kind: PlanKind, tuned: Switches) -> Plan {
        Plan {
            kind,
            repeats: 1,
            preset: Preset {
                name: "p".into(),
                description: String::new(),
                run: RunConfig::quick_cpu(),
                tuned,
                paper: None,
            },
        }
    }

    #[test]
    fn ab_is_baseline_then_tuned_and_ablation_is_every_combination() {
        let tuned = Switches {
            grad_accum_steps: 4,
            amp: AmpMode::Fp16,
            pinned_memory: true,
        };
        let ab = plan(PlanKind::Ab, tuned).arms();
        assert_eq!(
            ab.iter().map(|a| a.label.as_str()).collect::<Vec<_>>(),
            ["baseline", "GA×4 + fp16 + PM"]
        );
        let mut gpu = plan(PlanKind::Ablation, tuned);
        gpu.preset.run.device = DeviceChoice::Cuda(0);
        let arms = gpu.arms();
        assert_eq!(arms.len(), 8);
        let mut seen: Vec<(usize, AmpMode, bool)> = arms
            .iter()
            .map(|a| {
                (
                    a.run.switches.grad_accum_steps,
                    a.run.switches.amp,
                    a.run.switches.pinned_memory,
                )
            })
            .collect();
        seen.sort_by_key(|s| (s.0, s.1 as u8, s.2));
        seen.dedup();
        assert_eq!(seen.len(), 8, "all combinations, each once");
        assert_eq!(arms[0].label, "baseline");
        for a in &arms {
            let mut base = a.run.clone();
            base.switches = Switches::default();
            let mut reference = RunConfig::quick_cpu();
            reference.device = DeviceChoice::Cuda(0);
            assert_eq!(
                base, reference,
                "arms differ only in their switches (same seed, data, model)"
            );
        }
        // On the CPU pinned memory does not apply: the ablation is GA × AMP, 4 arms.
        let cpu = plan(PlanKind::Ablation, tuned).arms();
        assert_eq!(cpu.len(), 4);
        assert!(cpu.iter().all(|a| !a.run.switches.pinned_memory));
        // A tuned arm that leaves a switch off still gets it in the ablation, at its default.
        let partial = plan(
            PlanKind::Ablation,
            Switches {
                grad_accum_steps: 1,
                amp: AmpMode::Off,
                pinned_memory: false,
            },
        )
        .arms();
        assert!(
            partial.iter().any(
                |a| a.run.switches.grad_accum_steps == 2 && a.run.switches.amp == AmpMode::Bf16
            )
        );
    }

    #[test]
    fn arm_order_changes_per_repeat_and_is_seeded() {
        let tuned = Switches {
            grad_accum_steps: 2,
            amp: AmpMode::Bf16,
            pinned_memory: false,
        };
        let ab = plan(PlanKind::Ab, tuned);
        let firsts: Vec<usize> = (0..4).map(|r| ab.order(r)[0]).collect();
        assert_eq!(firsts[0], firsts[2]);
        assert_ne!(firsts[0], firsts[1], "two arms alternate: {firsts:?}");
        let mut gpu = plan(PlanKind::Ablation, tuned);
        gpu.preset.run.device = DeviceChoice::Cuda(0);
        let orders: Vec<Vec<usize>> = (0..8).map(|r| gpu.order(r)).collect();
        for o in &orders {
            let mut sorted = o.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..8).collect::<Vec<_>>(), "a permutation");
        }
        // Balanced: over 8 repeats every arm runs once in every position.
        for position in 0..8 {
            let mut at: Vec<usize> = orders.iter().map(|o| o[position]).collect();
            at.sort_unstable();
            assert_eq!(at, (0..8).collect::<Vec<_>>(), "position {position}");
        }
        assert_eq!(orders, (0..8).map(|r| gpu.order(r)).collect::<Vec<_>>());
        assert!(
            orders.iter().any(|o| o[0] != 0),
            "the baseline is not always first"
        );
        assert!(
            orders.iter().any(|o| o[7] < 4),
            "the pinned-memory arms (4..8) are not always last"
        );
        let mut other = gpu.clone();
        other.preset.run.train.seed = 1;
        assert_ne!(orders, (0..8).map(|r| other.order(r)).collect::<Vec<_>>());
    }
}
