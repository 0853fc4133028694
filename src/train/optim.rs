//! Optimisers with PyTorch's exact update rules — SGD (momentum, Nesterov, weight decay),
//! Adam (L2 decay) and AdamW (decoupled decay) — over parameter groups, and gradient
//! clipping. Candle-nn's optimisers have no momentum, no decay groups and no clipping.
//!
//! Groups: rules are tried in order and the first match wins; parameters no rule matches
//! form the "default" group with the base learning rate. With `no_decay_on_norm_and_bias`,
//! biases and norm scales/shifts of every group get weight decay 0 (their own subgroup).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::models::params::{Param, ParamKind, ParamStore};

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn eps() -> f64 {
    1e-8
}
fn adamw_wd() -> f64 {
    1e-2
}
fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OptimizerConfig {
    Sgd {
        lr: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        nesterov: bool,
        #[serde(default)]
        weight_decay: f64,
    },
    /// `torch.optim.Adam`: weight decay is an L2 term added to the gradient.
    Adam {
        lr: f64,
        #[serde(default = "beta1")]
        beta1: f64,
        #[serde(default = "beta2")]
        beta2: f64,
        #[serde(default = "eps")]
        eps: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    /// `torch.optim.AdamW`: decoupled decay `p ← p·(1 − lr·wd)` before the Adam update.
    AdamW {
        lr: f64,
        #[serde(default = "beta1")]
        beta1: f64,
        #[serde(default = "beta2")]
        beta2: f64,
        #[serde(default = "eps")]
        eps: f64,
        #[serde(default = "adamw_wd")]
        weight_decay: f64,
    },
}

impl OptimizerConfig {
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { lr, .. }
            | OptimizerConfig::Adam { lr, .. }
            | OptimizerConfig::AdamW { lr, .. } => *lr,
        }
    }
    pub fn weight_decay(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { weight_decay, .. }
            | OptimizerConfig::Adam { weight_decay, .. }
            | OptimizerConfig::AdamW { weight_decay, .. } => *weight_decay,
        }
    }
}

/// Which parameters get which learning rate and decay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    pub name: String,
    /// Parameter-name prefixes (e.g. `features.0.`, `classifier.`); empty = any name.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Parameter kinds; empty = any kind.
    #[serde(default)]
    pub kinds: Vec<ParamKind>,
    /// This group's learning rate (None = the optimiser's).
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default)]
    pub weight_decay: Option<f64>,
}

impl GroupRule {
    fn matches(&self, p: &Param) -> bool {
        (self.prefixes.is_empty()
            || self
                .prefixes
                .iter()
                .any(|pre| p.name.starts_with(pre.as_str())))
            && (self.kinds.is_empty() || self.kinds.contains(&p.kind))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSpec {
    pub optimizer: OptimizerConfig,
    #[serde(default = "yes")]
    pub no_decay_on_norm_and_bias: bool,
    #[serde(default)]
    pub groups: Vec<GroupRule>,
}

#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("{what} must be {rule}, got {value}")]
    Invalid {
        what: &'static str,
        rule: &'static str,
        value: f64,
    },
    #[error("parameter group {0:?} matches no parameter of this model")]
    EmptyGroup(String),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// A set of parameters sharing a learning rate and weight decay.
pub struct ParamGroup {
    pub name: String,
    pub base_lr: f64,
    pub weight_decay: f64,
    pub params: Vec<Param>,
    lr: f64,
}

struct State {
    /// SGD momentum buffer, or Adam's first moment.
    m: Option<Tensor>,
    /// Adam's second moment.
    v: Option<Tensor>,
    steps: u64,
}

pub struct Optimizer {
    config: OptimizerConfig,
    groups: Vec<ParamGroup>,
    state: Vec<Vec<State>>,
    steps: u64,
}

fn check(what: &'static str, value: f64, ok: bool, rule: &'static str) -> Result<(), OptimError> {
    if ok && value.is_finite() {
        Ok(())
    } else {
        Err(OptimError::Invalid { what, rule, value })
    }
}

fn decay_exempt(p: &Param) -> bool {
    matches!(p.kind, ParamKind::Bias | ParamKind::Norm)
        || (p.kind == ParamKind::Head && p.var.rank() == 1)
}

impl Optimizer {
    pub fn new(spec: &OptimSpec, store: &ParamStore) -> Result<Self, OptimError> {
        let c = &spec.optimizer;
        check("lr", c.lr(), c.lr() >= 0.0, "≥ 0")?;
        check(
            "weight_decay",
            c.weight_decay(),
            c.weight_decay() >= 0.0,
            "≥ 0",
        )?;
        match *c {
            OptimizerConfig::Sgd { momentum, .. } => check(
                "momentum",
                momentum,
                (0.0..1.0).contains(&momentum),
                "in [0, 1)",
            )?,
            OptimizerConfig::Adam {
                beta1, beta2, eps, ..
            }
            | OptimizerConfig::AdamW {
                beta1, beta2, eps, ..
            } => {
                check("beta1", beta1, (0.0..1.0).contains(&beta1), "in [0, 1)")?;
                check("beta2", beta2, (0.0..1.0).contains(&beta2), "in [0, 1)")?;
                check("eps", eps, eps > 0.0, "> 0")?;
            }
        }
        let mut groups: Vec<ParamGroup> = Vec::new();
        let mut used = vec![false; spec.groups.len()];
        for p in store.trainable() {
            let rule = spec.groups.iter().position(|r| r.matches(p));
            let (mut name, lr, mut wd) = match rule {
                Some(i) => {
                    used[i] = true;
                    let r = &spec.groups[i];
                    (
                        r.name.clone(),
                        r.lr.unwrap_or(c.lr()),
                        r.weight_decay.unwrap_or(c.weight_decay()),
                    )
                }
                None => ("default".to_string(), c.lr(), c.weight_decay()),
            };
            if spec.no_decay_on_norm_and_bias && decay_exempt(p) && wd != 0.0 {
                wd = 0.0;
                name.push_str(" (no decay)");
            }
            match groups.iter_mut().find(|g| g.name == name) {
                Some(g) => g.params.push(p.clone()),
                None => groups.push(ParamGroup {
                    name,
                    base_lr: lr,
                    weight_decay: wd,
                    params: vec![p.clone()],
                    lr,
                }),
            }
        }
        if let Some(i) = used.iter().position(|u| !u) {
            return Err(OptimError::EmptyGroup(spec.groups[i].name.clone()));
        }
        let state = groups
            .iter()
            .map(|g| {
                g.params
                    .iter()
                    .map(|_| State {
                        m: None,
                        v: None,
                        steps: 0,
                    })
                    .collect()
            })
            .collect();
        Ok(Self {
            config: c.clone(),
            groups,
            state,
            steps: 0,
        })
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }
    /// Sets every group's learning rate to its base rate × `factor` (from a schedule).
    pub fn set_lr_factor(&mut self, factor: f64) {
        for g in &mut self.groups {
            g.lr = g.base_lr * factor;
        }
    }
    pub fn lr_of_group(&self, i: usize) -> f64 {
        self.groups.get(i).map_or(0.0, |g| g.lr)
    }
    pub fn steps_taken(&self) -> u64 {
        self.steps
    }

    /// One update from `grads`. A parameter without a gradient is left alone and its state
    /// does not advance (as PyTorch skips parameters whose `.grad` is None). Returns how
    /// many parameters were updated.
    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<usize> {
        let mut updated = 0;
        for (g, states) in self.groups.iter().zip(self.state.iter_mut()) {
            for (p, st) in g.params.iter().zip(states.iter_mut()) {
                let Some(grad) = grads.get(p.var.as_tensor()) else {
                    continue;
                };
                let w = p.var.as_tensor();
                let grad = grad.to_dtype(w.dtype())?;
                let new = match self.config {
                    OptimizerConfig::Sgd {
                        momentum, nesterov, ..
                    } => {
                        let mut d = if g.weight_decay != 0.0 {
                            (&grad + (w * g.weight_decay)?)?
                        } else {
                            grad
                        };
                        if momentum != 0.0 {
                            let buf = match st.m.take() {
                                None => d.clone(),
                                Some(b) => ((b * momentum)? + &d)?,
                            };
                            d = if nesterov {
                                (&d + (&buf * momentum)?)?
                            } else {
                                buf.clone()
                            };
                            st.m = Some(buf);
                        }
                        (w - (d * g.lr)?)?
                    }
                    OptimizerConfig::Adam {
                        beta1, beta2, eps, ..
                    }
                    | OptimizerConfig::AdamW {
                        beta1, beta2, eps, ..
                    } => {
                        let decoupled = matches!(self.config, OptimizerConfig::AdamW { .. });
                        let (w0, d) = if decoupled {
                            ((w * (1.0 - g.lr * g.weight_decay))?, grad)
                        } else if g.weight_decay != 0.0 {
                            (w.clone(), (&grad + (w * g.weight_decay)?)?)
                        } else {
                            (w.clone(), grad)
                        };
                        st.steps += 1;
                        let m = match st.m.take() {
                            None => (&d * (1.0 - beta1))?,
                            Some(m) => ((m * beta1)? + (&d * (1.0 - beta1))?)?,
                        };
                        let v = match st.v.take() {
                            None => (d.sqr()? * (1.0 - beta2))?,
                            Some(v) => ((v * beta2)? + (d.sqr()? * (1.0 - beta2))?)?,
                        };
                        let t = st.steps as i32;
                        let bc1 = 1.0 - beta1.powi(t);
                        let bc2 = 1.0 - beta2.powi(t);
                        let denom = ((v.sqrt()? / bc2.sqrt())? + eps)?;
                        let new = (w0 - (m.div(&denom)? * (g.lr / bc1))?)?;
                        st.m = Some(m);
                        st.v = Some(v);
                        new
                    }
                };
                p.var.set(&new)?;
                updated += 1;
            }
        }
        self.steps += 1;
        Ok(updated)
    }
}

/// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before
/// clipping (as `torch.nn.utils.clip_grad_norm_`, including its 1e-6 guard).
pub fn clip_grad_norm(
    grads: &mut GradStore,
    params: &[&Var],
    max_norm: f64,
) -> candle_core::Result<f64> {
    let mut total = 0.0f64;
    for p in params {
        if let Some(g) = grads.get(p.as_tensor()) {
            total += g
                .to_dtype(candle_core::DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
    }
    let norm = total.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for p in params {
            if let Some(g) = grads.remove(p.as_tensor()) {
                grads.insert(p.as_tensor(), (g * coef)?);
            }
        }
    }
    Ok(norm)
}

/// Clamps every gradient element to `[-clip, clip]` (`torch.nn.utils.clip_grad_value_`).
pub fn clip_grad_value(
    grads: &mut GradStore,
    params: &[&Var],
    clip: f64,
) -> candle_core::Result<()> {
    for p in params {
        if let Some(g) = grads.remove(p.as_tensor()) {
            grads.insert(p.as_tensor(), g.clamp(-clip, clip)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Model, ModelSpec};
    use candle_core::{DType, Device};

    /// Three steps on p = [1, −2, 3] (f64) with gradients g_t = [0.5, −1, 2]·t.
    fn three_steps(config: OptimizerConfig) -> Vec<f64> {
        let mut b = crate::models::params::Builder::new(0, &Device::Cpu).with_dtype(DType::F64);
        let v = b
            .tensor(
                "w",
                &[3],
                crate::models::params::Init::Zeros,
                ParamKind::Weight,
            )
            .expect("var");
        v.set(&Tensor::new(&[1f64, -2.0, 3.0], &Device::Cpu).expect("t"))
            .expect("set");
        let store = b.finish();
        let spec = OptimSpec {
            optimizer: config,
            no_decay_on_norm_and_bias: true,
            groups: vec![],
        };
        let mut opt = Optimizer::new(&spec, &store).expect("optimizer");
        for t in 1..=3 {
            let loss = (v.as_tensor()
                * &Tensor::new(
                    &[0.5f64 * t as f64, -(t as f64), 2.0 * t as f64],
                    &Device::Cpu,
                )
                .expect("g"))
                .and_then(|x| x.sum_all())
                .expect("loss");
            let grads = loss.backward().expect("backward");
            opt.step(&grads).expect("step");
        }
        v.as_tensor().to_vec1().expect("values")
    }

    fn close(a: &[f64], b: &[f64]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
    }

    // Expected values from torch 2.15:
    // p = torch.tensor([1., -2., 3.], dtype=torch.float64, requires_grad=True)
    // opt = torch.optim.<Opt>([p], ...)
    // for t in (1, 2, 3): opt.zero_grad(); (p * torch.tensor([0.5, -1., 2.], dtype=torch.float64) * t).sum().backward(); opt.step()
    #[test]
    fn sgd_nesterov_with_decay_matches_pytorch() {
        let got = three_steps(OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
        });
        close(&got, &SGD_EXPECTED);
    }

    #[test]
    fn adam_and_adamw_match_pytorch() {
        let got = three_steps(OptimizerConfig::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-3,
        });
        close(&got, &ADAM_EXPECTED);
        let got = three_steps(OptimizerConfig::AdamW {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
        });
        close(&got, &ADAMW_EXPECTED);
    }

    const SGD_EXPECTED: [f64; 3] = [0.2716913789117676, -0.5433827578235352, 0.08716793087792767];
    const ADAM_EXPECTED: [f64; 3] = [0.9707660379368027, -1.9707660481608382, 2.9707665798892373];
    const ADAMW_EXPECTED: [f64; 3] = [0.9692837411964048, -1.967784490866167, 2.9662852406385483];

    #[test]
    fn groups_exempt_norms_and_biases_and_rules_set_their_own_rates() {
        let model = Model::build(&ModelSpec::new("resnet8-tiny", 10), &Device::Cpu).expect("model");
        let spec = OptimSpec {
            optimizer: OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.9,
                nesterov: false,
                weight_decay: 5e-4,
            },
            no_decay_on_norm_and_bias: true,
            groups: vec![GroupRule {
                name: "head".into(),
                prefixes: vec!["fc.".into()],
                lr: Some(0.5),
                ..GroupRule::default()
            }],
        };
        let opt = Optimizer::new(&spec, model.params()).expect("optimizer");
        let names: Vec<&str> = opt.groups().iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            names,
            ["default", "default (no decay)", "head", "head (no decay)"]
        );
        for g in opt.groups() {
            let exempt = g.name.ends_with("(no decay)");
            assert_eq!(g.weight_decay == 0.0, exempt, "{}", g.name);
            assert!(
                g.params.iter().all(|p| p.kind.is_trainable()),
                "buffers are never optimised"
            );
            if g.name.starts_with("head") {
                assert_eq!(g.base_lr, 0.5);
                assert!(g.params.iter().all(|p| p.name.starts_with("fc.")));
            }
        }
        let count: usize = opt.groups().iter().map(|g| g.params.len()).sum();
        assert_eq!(count, model.params().trainable().count());
        let bad = OptimSpec {
            groups: vec![GroupRule {
                name: "nothing".into(),
                prefixes: vec!["nope.".into()],
                ..GroupRule::default()
            }],
            ..spec
        };
        assert!(
            matches!(Optimizer::new(&bad, model.params()), Err(OptimError::EmptyGroup(n)) if n == "nothing")
        );
    }

    #[test]
    fn clipping_by_norm_returns_the_norm_and_scales_to_the_limit() {
        let v = Var::new(&[3f32, 4.0], &Device::Cpu).expect("var");
        let mut grads = (v.as_tensor() * &Tensor::new(&[3f32, 4.0], &Device::Cpu).expect("t"))
            .and_then(|x| x.sum_all())
            .and_then(|l| l.backward())
            .expect("grads");
        // gradient = [3, 4], norm 5
        let norm = clip_grad_norm(&mut grads, &[&v], 1.0).expect("clip");
        assert!((norm - 5.0).abs() < 1e-6);
        let g: Vec<f32> = grads.get(v.as_tensor()).expect("g").to_vec1().expect("v");
        assert!(
            (g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5,
            "{g:?}"
        );
        clip_grad_value(&mut grads, &[&v], 0.7).expect("clip");
        let g: Vec<f32> = grads.get(v.as_tensor()).expect("g").to_vec1().expect("v");
        assert!((g[1] - 0.7).abs() < 1e-6);
    }
}
