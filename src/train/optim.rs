//! Optimisers with PyTorch's exact update rules — SGD (momentum, Nesterov, weight decay),
//! Adam (L2 decay) and AdamW (decoupled decay) — over parameter groups, and gradient
//! clipping. Candle-nn's optimisers have no momentum, no decay groups and no clipping.
//!
//! Groups: rules are tried in order and the first match wins; parameters no rule matches
//! form the "default" group with the base learning rate and decay. With
//! `no_decay_on_norm_and_bias`, the biases and norm scales/shifts of every group (and the
//! head's bias: a rank-1 `Head` tensor) get weight decay 0, in a subgroup named
//! "`<group> (no decay)`". Buffers (batch-norm running statistics) are never in a group.
//!
//! State (momentum buffers, Adam moments) lives in candle tensors on each parameter's
//! device and in its dtype; updates are tensor ops written back with `Var::set`, in the
//! operation order of PyTorch's single-tensor (CPU) kernels so f64 results agree to the
//! last few bits.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
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
    /// `torch.optim.SGD` (dampening 0): the momentum buffer starts as the first gradient.
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
    /// SGD with Nesterov momentum 0.9 and weight decay 5e-4 (the ResNet recipes').
    pub fn sgd_nesterov(lr: f64) -> Self {
        OptimizerConfig::Sgd {
            lr,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
        }
    }

    /// Adam with PyTorch's defaults (β 0.9/0.999, ε 1e-8, no weight decay).
    pub fn adam(lr: f64) -> Self {
        OptimizerConfig::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }

    /// AdamW with PyTorch's betas and ε and weight decay 0.05 (the ViT recipes').
    pub fn adamw(lr: f64) -> Self {
        OptimizerConfig::AdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
        }
    }

    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { lr, .. }
            | OptimizerConfig::Adam { lr, .. }
            | OptimizerConfig::AdamW { lr, .. } => *lr,
        }
    }
    /// The base weight decay.
    pub fn weight_decay(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { weight_decay, .. }
            | OptimizerConfig::Adam { weight_decay, .. }
            | OptimizerConfig::AdamW { weight_decay, .. } => *weight_decay,
        }
    }
}

/// Which parameters get which learning rate and decay. A parameter matches when its name
/// starts with one of `prefixes` (or `prefixes` is empty) and its kind is one of `kinds`
/// (or `kinds` is empty).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    /// Shown in reports.
    pub name: String,
    /// Parameter-name prefixes (e.g. `features.0.`, `classifier.`); empty = any name.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Parameter kinds; empty = any kind.
    #[serde(default)]
    pub kinds: Vec<ParamKind>,
    /// This group's absolute learning rate (None = the optimiser's).
    #[serde(default)]
    pub lr: Option<f64>,
    /// This group's weight decay (None = the optimiser's).
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
    /// Bias and Norm tensors (and the head's bias) get weight decay 0.
    #[serde(default = "yes")]
    pub no_decay_on_norm_and_bias: bool,
    /// Tried in order, first match wins.
    #[serde(default)]
    pub groups: Vec<GroupRule>,
}

#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("{what} must be {rule}, got {value}")]
    Invalid {
        what: String,
        rule: &'static str,
        value: f64,
    },
    #[error(
        "parameter group {0:?} matches no parameter of this model (or only parameters an earlier rule already took)"
    )]
    EmptyGroup(String),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// A set of parameters sharing a learning rate and weight decay.
pub struct ParamGroup {
    pub name: String,
    /// The rate before any schedule factor.
    pub base_lr: f64,
    pub weight_decay: f64,
    pub params: Vec<Param>,
    lr: f64,
}

/// Per-parameter state.
#[derive(Default)]
struct State {
    /// SGD momentum buffer, or Adam's first moment.
    m: Option<Tensor>,
    /// Adam's second moment.
    v: Option<Tensor>,
    /// Updates this parameter received (Adam's bias-correction step).
    steps: u64,
}

/// SGD / Adam / AdamW over parameter groups.
pub struct Optimizer {
    config: OptimizerConfig,
    groups: Vec<ParamGroup>,
    state: Vec<Vec<State>>,
    steps: u64,
}

fn check(what: &str, value: f64, ok: bool, rule: &'static str) -> Result<(), OptimError> {
    if ok && value.is_finite() {
        Ok(())
    } else {
        Err(OptimError::Invalid {
            what: what.to_string(),
            rule,
            value,
        })
    }
}

fn decay_exempt(p: &Param) -> bool {
    matches!(p.kind, ParamKind::Bias | ParamKind::Norm)
        || (p.kind == ParamKind::Head && p.var.rank() == 1)
}

impl Optimizer {
    /// Builds the groups from `spec.groups` over the trainable tensors of `store`, after
    /// checking the hyper-parameters.
    pub fn new(spec: &OptimSpec, store: &ParamStore) -> Result<Self, OptimError> {
        let c = &spec.optimizer;
        check("lr", c.lr(), c.lr() >= 0.0, "≥ 0")?;
        let wd = c.weight_decay();
        check("weight_decay", wd, wd >= 0.0, "≥ 0")?;
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
        for r in &spec.groups {
            if let Some(lr) = r.lr {
                check(&format!("lr of group {:?}", r.name), lr, lr >= 0.0, "≥ 0")?;
            }
            if let Some(wd) = r.weight_decay {
                let what = format!("weight_decay of group {:?}", r.name);
                check(&what, wd, wd >= 0.0, "≥ 0")?;
            }
        }

        // Groups keyed by (matching rule, decay-exempt), in order of first appearance.
        let mut keys: Vec<(Option<usize>, bool)> = Vec::new();
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
                        r.weight_decay.unwrap_or(wd),
                    )
                }
                None => ("default".to_string(), c.lr(), wd),
            };
            let exempt = spec.no_decay_on_norm_and_bias && decay_exempt(p) && wd != 0.0;
            if exempt {
                wd = 0.0;
                name.push_str(" (no decay)");
            }
            match keys.iter().position(|k| *k == (rule, exempt)) {
                Some(i) => groups[i].params.push(p.clone()),
                None => {
                    keys.push((rule, exempt));
                    groups.push(ParamGroup {
                        name,
                        base_lr: lr,
                        weight_decay: wd,
                        params: vec![p.clone()],
                        lr,
                    });
                }
            }
        }
        if let Some(i) = used.iter().position(|u| !u) {
            return Err(OptimError::EmptyGroup(spec.groups[i].name.clone()));
        }
        let state = groups
            .iter()
            .map(|g| g.params.iter().map(|_| State::default()).collect())
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

    /// The current learning rate of group `i` (0 when there is no such group).
    pub fn lr_of_group(&self, i: usize) -> f64 {
        self.groups.get(i).map_or(0.0, |g| g.lr)
    }

    /// Calls of [`Optimizer::step`] so far.
    pub fn steps_taken(&self) -> u64 {
        self.steps
    }

    /// One update from `grads`. A parameter without a gradient is left alone and its state
    /// does not advance (PyTorch skips parameters whose `.grad` is None). Returns how many
    /// parameters were updated.
    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<usize> {
        let mut updated = 0;
        for (g, states) in self.groups.iter().zip(self.state.iter_mut()) {
            for (p, st) in g.params.iter().zip(states.iter_mut()) {
                let Some(grad) = grads.get(p.var.as_tensor()) else {
                    continue;
                };
                // Detached: the update and the optimiser's state must not record ops on the
                // parameter (a variable), or each step's momentum would hold the previous
                // step's tensors through its graph — memory growing with every step.
                let w = &p.var.as_tensor().detach();
                let grad = grad.detach().to_dtype(w.dtype())?;
                let new = match self.config {
                    OptimizerConfig::Sgd {
                        momentum, nesterov, ..
                    } => sgd_update(w, grad, st, g.lr, g.weight_decay, momentum, nesterov)?,
                    OptimizerConfig::Adam {
                        beta1, beta2, eps, ..
                    } => Some(adam_update(w, grad, st, g, (beta1, beta2, eps), false)?),
                    OptimizerConfig::AdamW {
                        beta1, beta2, eps, ..
                    } => Some(adam_update(w, grad, st, g, (beta1, beta2, eps), true)?),
                };
                // `None`: the update was written into the parameter's storage itself.
                if let Some(new) = new {
                    p.var.set(&new)?;
                }
                updated += 1;
            }
        }
        self.steps += 1;
        Ok(updated)
    }

    /// The optimiser's state for a checkpoint: every parameter's moment buffers as
    /// `<param>.m` / `<param>.v` (f32, on the CPU), each parameter's update count, and the
    /// number of steps taken. [`Optimizer::restore`] puts it back exactly.
    pub fn snapshot(&self) -> candle_core::Result<OptimizerSnapshot> {
        let mut tensors = Vec::new();
        let mut param_steps = Vec::new();
        for (g, states) in self.groups.iter().zip(&self.state) {
            for (p, st) in g.params.iter().zip(states) {
                for (suffix, t) in [("m", &st.m), ("v", &st.v)] {
                    if let Some(t) = t {
                        // A copy with its own storage: on the CPU `to_device` shares the
                        // buffer, which the next SGD step updates in place.
                        tensors.push((
                            format!("{}.{suffix}", p.name),
                            t.to_device(&candle_core::Device::Cpu)?.copy()?,
                        ));
                    }
                }
                param_steps.push((p.name.clone(), st.steps));
            }
        }
        Ok(OptimizerSnapshot {
            steps: self.steps,
            param_steps,
            tensors,
        })
    }

    /// The step count and each parameter's update count (the non-tensor part of a
    /// [`Optimizer::snapshot`]).
    pub fn snapshot_counts(&self) -> (u64, Vec<(String, u64)>) {
        let per_param = self
            .groups
            .iter()
            .zip(&self.state)
            .flat_map(|(g, states)| {
                g.params
                    .iter()
                    .zip(states)
                    .map(|(p, st)| (p.name.clone(), st.steps))
            })
            .collect();
        (self.steps, per_param)
    }

    /// Restores a [`Optimizer::snapshot`] of an optimiser over the same parameters; says
    /// which parameter does not match (missing, unknown, or another shape) instead of
    /// restoring part of it.
    pub fn restore(&mut self, snap: &OptimizerSnapshot) -> Result<(), String> {
        let tensors: std::collections::HashMap<&str, &Tensor> =
            snap.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let steps: std::collections::HashMap<&str, u64> = snap
            .param_steps
            .iter()
            .map(|(n, s)| (n.as_str(), *s))
            .collect();
        let known: usize = self.groups.iter().map(|g| g.params.len()).sum();
        if steps.len() != known {
            return Err(format!(
                "the saved optimiser state covers {} parameters, this model has {known}",
                steps.len()
            ));
        }
        let mut restored = Vec::new();
        for g in &self.groups {
            let mut states = Vec::new();
            for p in &g.params {
                let Some(&n) = steps.get(p.name.as_str()) else {
                    return Err(format!("no saved optimiser state for parameter {}", p.name));
                };
                let mut st = State {
                    steps: n,
                    ..State::default()
                };
                for (suffix, slot) in [("m", &mut st.m), ("v", &mut st.v)] {
                    let name = format!("{}.{suffix}", p.name);
                    if let Some(t) = tensors.get(name.as_str()) {
                        let what = format!("optimiser state {name}");
                        let value = crate::models::params::value_for(&p.var, t, &what)?;
                        // Its own storage, which SGD may update in place (see `snapshot`).
                        *slot = Some(value.copy().map_err(|e| e.to_string())?);
                    }
                }
                states.push(st);
            }
            restored.push(states);
        }
        self.state = restored;
        self.steps = snap.steps;
        Ok(())
    }
}

/// What [`Optimizer::snapshot`] returns: enough to continue exactly where it stopped.
#[derive(Clone, Debug, Default)]
pub struct OptimizerSnapshot {
    pub steps: u64,
    /// Each parameter's update count (Adam's bias-correction step), by parameter name.
    pub param_steps: Vec<(String, u64)>,
    /// Moment buffers, `<param>.m` and `<param>.v`.
    pub tensors: Vec<(String, Tensor)>,
}

/// `torch.optim.SGD` (`_single_tensor_sgd`, dampening 0). Returns the new parameter, or
/// `None` when it was updated in place.
///
/// On contiguous f32/f64 CPU tensors the update is written into the parameter's and the
/// momentum's own storage ([`sgd_in_place`]: two passes, no allocation, no copy back through
/// `Var::set`); the first step with momentum, which creates the buffer, is one pass
/// ([`sgd_fused`]). Elsewhere (CUDA, other dtypes) it is the chain of tensor ops in
/// [`sgd_update_ops`] (eight ops, each allocating and sweeping the parameter). For
/// ResNet-18-CIFAR's 11.2 M values: the op chain 29–31 ms, the allocating pass 20–21 ms
/// (`sgd_update_speed`), and the allocating pass also zero-filled its two outputs and
/// `Var::set` copied the parameter back, both on the calling thread alone.
fn sgd_update(
    w: &Tensor,
    grad: Tensor,
    st: &mut State,
    lr: f64,
    weight_decay: f64,
    momentum: f64,
    nesterov: bool,
) -> candle_core::Result<Option<Tensor>> {
    let rule = SgdRule {
        lr,
        weight_decay,
        momentum,
        nesterov,
    };
    if momentum == 0.0 || st.m.is_some() {
        if let Some(done) = sgd_in_place(w, &grad, st.m.as_ref(), rule) {
            done?;
            st.steps += 1;
            return Ok(None);
        }
    } else if let Some(done) = sgd_fused(w, &grad, None, rule) {
        let (new, buf) = done?;
        st.m = buf;
        st.steps += 1;
        return Ok(Some(new));
    }
    sgd_update_ops(w, grad, st, rule).map(Some)
}

/// Whether `t` can be read as one contiguous run of `like`'s dtype and shape on the CPU.
fn same_cpu_run(t: &Tensor, like: &Tensor) -> bool {
    t.device().is_cpu()
        && t.dtype() == like.dtype()
        && t.shape() == like.shape()
        && t.is_contiguous()
}

/// One SGD step written into `w`'s storage and, with momentum, into `buf`'s (which must
/// exist: the first step creates it through [`sgd_fused`]): first the momentum
/// (`b = μ·b + d`, [`InPlace::momentum`]), then the parameter from it ([`InPlace::param`]), `d`
/// computed in each pass from the unchanged `w` and `grad` — the op chain's operations in
/// its order, so the same bits. `None` when the tensors are not contiguous f32/f64 CPU
/// tensors of one dtype and shape.
///
/// Writing in place is what `Var::set` did with the new value anyway: every tensor that
/// shares the parameter's storage saw it change. The momentum buffer is only ever held by
/// the optimiser (its snapshots are copies).
fn sgd_in_place(
    w: &Tensor,
    grad: &Tensor,
    buf: Option<&Tensor>,
    rule: SgdRule,
) -> Option<candle_core::Result<()>> {
    let with_momentum = rule.momentum != 0.0;
    let fits = same_cpu_run(w, w)
        && same_cpu_run(grad, w)
        && matches!(w.dtype(), DType::F32 | DType::F64)
        && match buf {
            Some(b) => same_cpu_run(b, w),
            None => !with_momentum,
        };
    if !fits {
        return None;
    }
    Some((|| {
        match buf {
            Some(b) if with_momentum => {
                b.inplace_op3(w, grad, &InPlace::momentum(rule))?;
                w.inplace_op3(grad, b, &InPlace::param(rule))
            }
            // Without momentum the third operand is not read.
            _ => w.inplace_op3(grad, grad, &InPlace::param(rule)),
        }
    })())
}

/// `dst` as a mutable contiguous run of `T` and the sources as runs, or an error naming
/// `op` (the callers checked the layouts, so this does not happen).
macro_rules! runs {
    ($op:expr, $variant:ident, $dst:expr, $dst_l:expr, $srcs:expr) => {{
        use candle_core::CpuStorage;
        let range = |l: &candle_core::Layout| {
            l.contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg(format!("{}: a strided operand", $op)))
        };
        let (d0, d1) = range($dst_l)?;
        let mut views = Vec::with_capacity(2);
        for (storage, layout) in $srcs {
            let (a, b) = range(layout)?;
            match storage {
                CpuStorage::$variant(all) => views.push(&all[a..b]),
                _ => candle_core::bail!("{}: operands of different dtypes", $op),
            }
        }
        match $dst {
            CpuStorage::$variant(all) => (&mut all[d0..d1], views),
            _ => candle_core::bail!("{}: operands of different dtypes", $op),
        }
    }};
}

/// One in-place pass of [`sgd_in_place`] as a Candle op: `dst` rewritten from two sources
/// by `f32`/`f64` (the same function for either dtype).
struct InPlace {
    name: &'static str,
    rule: SgdRule,
    f32: fn(&mut [f32], &[f32], &[f32], SgdRule),
    f64: fn(&mut [f64], &[f64], &[f64], SgdRule),
}

impl InPlace {
    /// `buf ← μ·buf + d`, `d = g + λ·w` (sources `[w, g]`).
    fn momentum(rule: SgdRule) -> Self {
        Self {
            name: "sgd-momentum",
            rule,
            f32: momentum_pass,
            f64: momentum_pass,
        }
    }

    /// `w ← w − η·d'`, `d' = d + μ·buf` (Nesterov) or `buf` (momentum) or `d` (sources
    /// `[g, buf]`; `buf` unread without momentum).
    fn param(rule: SgdRule) -> Self {
        Self {
            name: "sgd-param",
            rule,
            f32: param_pass,
            f64: param_pass,
        }
    }
}

impl candle_core::InplaceOp3 for InPlace {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(
        &self,
        dst: &mut candle_core::CpuStorage,
        dst_l: &candle_core::Layout,
        a: &candle_core::CpuStorage,
        a_l: &candle_core::Layout,
        b: &candle_core::CpuStorage,
        b_l: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let srcs = [(a, a_l), (b, b_l)];
        if matches!(dst, candle_core::CpuStorage::F32(_)) {
            let (d, v) = runs!(self.name, F32, dst, dst_l, srcs);
            (self.f32)(d, v[0], v[1], self.rule);
        } else {
            let (d, v) = runs!(self.name, F64, dst, dst_l, srcs);
            (self.f64)(d, v[0], v[1], self.rule);
        }
        Ok(())
    }
}

/// The scalars of `rule` as `T` and the op chain's scalar product (Candle's `tensor *
/// scalar` is its affine op: `v·s + 0`).
fn scalars<T: num_traits::Float + num_traits::FromPrimitive>(rule: SgdRule) -> [T; 3] {
    let scalar = |v: f64| T::from_f64(v).expect("a float converts");
    [
        scalar(rule.lr),
        scalar(rule.weight_decay),
        scalar(rule.momentum),
    ]
}

/// The op chain's `d = g + λ·w` (`g` without weight decay).
#[inline]
fn decayed<T: num_traits::Float>(g: T, w: T, wd: T, rule: SgdRule) -> T {
    if rule.weight_decay != 0.0 {
        g + (w * wd + T::zero())
    } else {
        g
    }
}

/// Elements per parallel task of the SGD passes.
const STRETCH: usize = 1 << 15;

fn momentum_pass<T>(b: &mut [T], w: &[T], g: &[T], rule: SgdRule)
where
    T: num_traits::Float + num_traits::FromPrimitive + Send + Sync,
{
    use rayon::prelude::*;
    let [_, wd, mom] = scalars::<T>(rule);
    b.par_chunks_mut(STRETCH).enumerate().for_each(|(c, b)| {
        let i0 = c * STRETCH;
        let (w, g) = (&w[i0..i0 + b.len()], &g[i0..i0 + b.len()]);
        for ((b, &w), &g) in b.iter_mut().zip(w).zip(g) {
            *b = (*b * mom + T::zero()) + decayed(g, w, wd, rule);
        }
    });
}

fn param_pass<T>(w: &mut [T], g: &[T], b: &[T], rule: SgdRule)
where
    T: num_traits::Float + num_traits::FromPrimitive + Send + Sync,
{
    use rayon::prelude::*;
    let [lr, wd, mom] = scalars::<T>(rule);
    let with_momentum = rule.momentum != 0.0;
    w.par_chunks_mut(STRETCH).enumerate().for_each(|(c, w)| {
        let i0 = c * STRETCH;
        let g = &g[i0..i0 + w.len()];
        for (k, (w, &g)) in w.iter_mut().zip(g).enumerate() {
            let d = decayed(g, *w, wd, rule);
            let d = match (with_momentum, rule.nesterov) {
                (false, _) => d,
                (true, true) => d + (b[i0 + k] * mom + T::zero()),
                (true, false) => b[i0 + k],
            };
            *w = *w - (d * lr + T::zero());
        }
    });
}

/// SGD's hyper-parameters for one group.
#[derive(Clone, Copy, Debug)]
struct SgdRule {
    lr: f64,
    weight_decay: f64,
    momentum: f64,
    nesterov: bool,
}

/// [`sgd_update_ops`] in one pass, element by element in the same operation order and with
/// the same roundings (a scalar product is Candle's affine `v·s + 0`), so the results are
/// bit-identical to the op chain (`the_fused_sgd_pass_is_bit_identical_to_the_op_chain`).
/// Returns the new parameter and momentum buffer, or `None` when the tensors are not
/// contiguous f32/f64 CPU tensors of one dtype and shape (the caller then uses the ops).
fn sgd_fused(
    w: &Tensor,
    grad: &Tensor,
    buf: Option<&Tensor>,
    rule: SgdRule,
) -> Option<candle_core::Result<(Tensor, Option<Tensor>)>> {
    use candle_core::{CpuStorage, Storage};
    let same = |t: &Tensor| same_cpu_run(t, w);
    if !same(w) || !same(grad) || !buf.is_none_or(same) {
        return None;
    }
    let guards: Vec<_> = [Some(w), Some(grad), buf]
        .into_iter()
        .flatten()
        .map(|t| t.storage_and_layout())
        .collect();
    let mut ranges = Vec::with_capacity(3);
    for (_, layout) in &guards {
        ranges.push(layout.contiguous_offsets()?);
    }
    macro_rules! fused {
        ($variant:ident, $t:ty) => {{
            let mut views: Vec<&[$t]> = Vec::with_capacity(3);
            for ((storage, _), (a, b)) in guards.iter().zip(&ranges) {
                match &**storage {
                    Storage::Cpu(CpuStorage::$variant(all)) => views.push(&all[*a..*b]),
                    _ => return None,
                }
            }
            let (new_w, new_buf) = sgd_pass::<$t>(views[0], views[1], views.get(2).copied(), rule);
            drop(guards);
            let make = |v: Vec<$t>| Tensor::from_vec(v, w.shape(), w.device());
            Some((|| {
                let buf = (rule.momentum != 0.0).then(|| make(new_buf)).transpose()?;
                Ok((make(new_w)?, buf))
            })())
        }};
    }
    match w.dtype() {
        DType::F32 => fused!(F32, f32),
        DType::F64 => fused!(F64, f64),
        _ => None,
    }
}

/// The element-wise SGD update over slices ([`sgd_fused`]'s arithmetic), in parallel over
/// stretches of the parameter. Returns the new parameter and the new momentum buffer
/// (empty without momentum).
fn sgd_pass<T>(w: &[T], g: &[T], buf: Option<&[T]>, rule: SgdRule) -> (Vec<T>, Vec<T>)
where
    T: num_traits::Float + num_traits::FromPrimitive + Send + Sync,
{
    use rayon::prelude::*;
    let [lr, wd, mom] = scalars::<T>(rule);
    let zero = T::zero();
    // Candle's `tensor * scalar` is its affine op: v·s + 0.
    let affine = |v: T, s: T| v * s + zero;
    let with_momentum = rule.momentum != 0.0;
    let mut new_w = vec![zero; w.len()];
    let mut new_buf = vec![zero; if with_momentum { w.len() } else { 0 }];
    let update = |i0: usize, out_w: &mut [T], out_b: &mut [T]| {
        for (k, o) in out_w.iter_mut().enumerate() {
            let i = i0 + k;
            let mut d = decayed(g[i], w[i], wd, rule);
            if with_momentum {
                let b = match buf {
                    None => d,
                    Some(old) => affine(old[i], mom) + d,
                };
                out_b[k] = b;
                d = if rule.nesterov { d + affine(b, mom) } else { b };
            }
            *o = w[i] - affine(d, lr);
        }
    };
    if with_momentum {
        new_w
            .par_chunks_mut(STRETCH)
            .zip(new_buf.par_chunks_mut(STRETCH))
            .enumerate()
            .for_each(|(c, (ow, ob))| update(c * STRETCH, ow, ob));
    } else {
        new_w
            .par_chunks_mut(STRETCH)
            .enumerate()
            .for_each(|(c, ow)| update(c * STRETCH, ow, &mut []));
    }
    (new_w, new_buf)
}

/// [`sgd_update`] as Candle tensor ops (any device and dtype).
fn sgd_update_ops(
    w: &Tensor,
    grad: Tensor,
    st: &mut State,
    rule: SgdRule,
) -> candle_core::Result<Tensor> {
    let SgdRule {
        lr,
        weight_decay,
        momentum,
        nesterov,
    } = rule;
    // d_p = grad.add(param, alpha=weight_decay)
    let mut d = if weight_decay != 0.0 {
        (&grad + (w * weight_decay)?)?
    } else {
        grad
    };
    if momentum != 0.0 {
        // buf = clone(d_p) on the first step, else buf.mul_(momentum).add_(d_p)
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
    st.steps += 1;
    // param.add_(d_p, alpha=-lr)
    w - (d * lr)?
}

/// `torch.optim.Adam` / `AdamW` (`_single_tensor_adam`, amsgrad off).
fn adam_update(
    w: &Tensor,
    grad: Tensor,
    st: &mut State,
    g: &ParamGroup,
    (beta1, beta2, eps): (f64, f64, f64),
    decoupled: bool,
) -> candle_core::Result<Tensor> {
    let (w0, d) = if decoupled {
        // param.mul_(1 - lr * weight_decay)
        if g.weight_decay != 0.0 {
            ((w * (1.0 - g.lr * g.weight_decay))?, grad)
        } else {
            (w.clone(), grad)
        }
    } else if g.weight_decay != 0.0 {
        // grad = grad.add(param, alpha=weight_decay)
        (w.clone(), (&grad + (w * g.weight_decay)?)?)
    } else {
        (w.clone(), grad)
    };
    st.steps += 1;
    // exp_avg.lerp_(grad, 1 - beta1): self + weight·(end − self) for weight < 0.5.
    let w1 = 1.0 - beta1;
    let m = match st.m.take() {
        None => (&d * w1)?,
        Some(m) if w1 < 0.5 => (&m + ((&d - &m)? * w1)?)?,
        Some(m) => (&d - ((&d - &m)? * (1.0 - w1))?)?,
    };
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    let dd = ((&d * (1.0 - beta2))? * &d)?;
    let v = match st.v.take() {
        None => dd,
        Some(v) => ((v * beta2)? + dd)?,
    };
    let t = st.steps as f64;
    let bc1 = 1.0 - beta1.powf(t);
    let bc2_sqrt = (1.0 - beta2.powf(t)).sqrt();
    let step_size = g.lr / bc1;
    // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    let denom = ((v.sqrt()? / bc2_sqrt)? + eps)?;
    // param.addcdiv_(exp_avg, denom, value=-step_size): param + (value·exp_avg) / denom
    let new = (w0 + ((&m * -step_size)? / &denom)?)?;
    st.m = Some(m);
    st.v = Some(v);
    Ok(new)
}

/// candle-nn's optimiser interface, so annt's SGD (with momentum and Nesterov, which
/// `candle_nn::SGD` lacks) and Adam/AdamW can drive any Candle model: all `vars` form one
/// group named "default" with the config's rate and weight decay (no parameter kinds are
/// known here, so nothing is exempt from decay).
impl candle_nn::Optimizer for Optimizer {
    type Config = OptimizerConfig;

    fn new(vars: Vec<Var>, config: OptimizerConfig) -> candle_core::Result<Self> {
        let params = vars
            .into_iter()
            .enumerate()
            .map(|(i, var)| Param {
                name: format!("var{i}"),
                var,
                kind: ParamKind::Weight,
            })
            .collect();
        let store = ParamStore::from_params(params);
        let spec = OptimSpec {
            optimizer: config,
            no_decay_on_norm_and_bias: false,
            groups: Vec::new(),
        };
        Optimizer::new(&spec, &store).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        Optimizer::step(self, grads).map(|_| ())
    }

    fn learning_rate(&self) -> f64 {
        self.lr_of_group(0)
    }

    fn set_learning_rate(&mut self, lr: f64) {
        for g in &mut self.groups {
            g.base_lr = lr;
            g.lr = lr;
        }
    }
}

/// Scales the gradients of `params` so their global L2 norm is at most `max_norm`; returns
/// the norm before clipping (as `torch.nn.utils.clip_grad_norm_`, including its
/// `max_norm / (norm + 1e-6)` coefficient, clamped to 1) as an f64 scalar tensor on the
/// device. Parameters without a gradient are skipped. Nothing is read back to the host.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    params: &[&Var],
    max_norm: f64,
) -> candle_core::Result<Tensor> {
    let mut squares: Vec<Tensor> = Vec::new();
    for p in params {
        if let Some(g) = grads.get(p.as_tensor()) {
            let g = match g.dtype() {
                DType::F16 | DType::BF16 => g.to_dtype(DType::F32)?,
                _ => g.clone(),
            };
            let s = g.sqr()?.sum_all()?.to_dtype(DType::F64)?;
            let s = match squares.first() {
                Some(first) => s.to_device(first.device())?,
                None => s,
            };
            squares.push(s);
        }
    }
    if squares.is_empty() {
        return Tensor::new(0f64, &candle_core::Device::Cpu);
    }
    let norm = Tensor::stack(&squares, 0)?.sum_all()?.sqrt()?;
    // min(max_norm / (norm + 1e-6), 1), applied to every gradient on the device (as PyTorch
    // does): no value comes back to the host, so the step does not wait for the device.
    let coef = ((&norm + 1e-6)?.recip()? * max_norm)?.clamp(0f64, 1f64)?;
    for p in params {
        if let Some(g) = grads.remove(p.as_tensor()) {
            // `coef` is on the gradients' device already (the squares were moved there).
            let c = coef.to_dtype(g.dtype())?;
            grads.insert(p.as_tensor(), g.broadcast_mul(&c)?);
        }
    }
    Ok(norm)
}

/// Clamps every gradient element of `params` to `[-clip, clip]`
/// (`torch.nn.utils.clip_grad_value_`).
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
    use crate::models::params::{Builder, Init};
    use crate::models::{Model, ModelSpec};
    use candle_core::Device;

    fn spec(optimizer: OptimizerConfig) -> OptimSpec {
        OptimSpec {
            optimizer,
            no_decay_on_norm_and_bias: true,
            groups: vec![],
        }
    }

    /// An f64 store with the named vectors.
    fn store(values: &[(&str, &[f64])]) -> (ParamStore, Vec<Var>) {
        let mut b = Builder::new(0, &Device::Cpu).with_dtype(DType::F64);
        let vars = values
            .iter()
            .map(|(name, v)| {
                let var = b
                    .tensor(name, &[v.len()], Init::Zeros, ParamKind::Weight)
                    .expect("var");
                var.set(&Tensor::new(*v, &Device::Cpu).expect("t"))
                    .expect("set");
                var
            })
            .collect();
        (b.finish(), vars)
    }

    /// Gradients of `Σ coef·var` (the gradient of each var is its coefficient vector).
    fn grads_of(terms: &[(&Var, &[f64])]) -> GradStore {
        let mut loss = Tensor::zeros((), DType::F64, &Device::Cpu).expect("zero");
        for (v, c) in terms {
            let c = Tensor::new(*c, &Device::Cpu).expect("c");
            let term = (v.as_tensor() * c).and_then(|x| x.sum_all()).expect("term");
            loss = (loss + term).expect("sum");
        }
        loss.backward().expect("backward")
    }

    /// The optimiser's state is plain data: no graph back to the parameters or to earlier
    /// steps (a tracked momentum buffer kept every step's tensors alive: a quick CPU run
    /// grew by 1.5 MiB per step).
    #[test]
    fn optimiser_state_records_no_ops_so_steps_do_not_pile_up_in_memory() {
        let sgd = OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
        };
        let adam = OptimizerConfig::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 5e-4,
        };
        for config in [sgd, adam] {
            let (store, vars) = store(&[("w", &[1.0, -2.0, 3.0])]);
            let mut opt = Optimizer::new(&spec(config.clone()), &store).expect("optimizer");
            for _ in 0..3 {
                let grads = grads_of(&[(&vars[0], &[0.5, -1.0, 2.0])]);
                opt.step(&grads).expect("step");
            }
            let states: Vec<&Tensor> = opt
                .state
                .iter()
                .flatten()
                .flat_map(|st| st.m.iter().chain(st.v.iter()))
                .collect();
            assert!(!states.is_empty(), "{config:?}: no state kept");
            assert!(
                states.iter().all(|t| !t.track_op()),
                "{config:?}: the state tracks ops"
            );
        }
    }

    /// A snapshot restored into a fresh optimiser over a copy of the parameters continues
    /// exactly as the original does (checkpoint and resume); a snapshot of other
    /// parameters is refused.
    #[test]
    fn a_restored_snapshot_continues_bit_for_bit_and_a_foreign_one_is_refused() {
        let adam = OptimizerConfig::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 5e-4,
        };
        let sgd = OptimizerConfig::sgd_nesterov(0.1);
        for config in [adam, sgd] {
            let (st1, vars) = store(&[("w", &[1.0, -2.0, 3.0]), ("b", &[0.5])]);
            let mut opt = Optimizer::new(&spec(config.clone()), &st1).expect("optimizer");
            let grads = |vars: &[Var], t: f64| {
                grads_of(&[(&vars[0], &[0.5 * t, -t, 2.0 * t]), (&vars[1], &[t])])
            };
            for t in 1..=2 {
                opt.step(&grads(&vars, t as f64)).expect("step");
            }
            let snap = opt.snapshot().expect("snapshot");
            let values: Vec<Vec<f64>> = vars.iter().map(|v| v.to_vec1().expect("v")).collect();
            let (store2, vars2) = store(&[("w", &values[0]), ("b", &values[1])]);
            let mut opt2 = Optimizer::new(&spec(config.clone()), &store2).expect("optimizer");
            opt2.restore(&snap).expect("restore");
            for t in 3..=4 {
                opt.step(&grads(&vars, t as f64)).expect("step");
                opt2.step(&grads(&vars2, t as f64)).expect("step");
            }
            for (a, b) in vars.iter().zip(&vars2) {
                assert_eq!(
                    a.to_vec1::<f64>().expect("a"),
                    b.to_vec1::<f64>().expect("b"),
                    "{config:?}"
                );
            }
            assert_eq!(opt.steps_taken(), opt2.steps_taken());
            // Without the restore the continuation differs: the test can tell.
            let (store3, vars3) = store(&[("w", &values[0]), ("b", &values[1])]);
            let mut fresh = Optimizer::new(&spec(config.clone()), &store3).expect("optimizer");
            for t in 3..=4 {
                fresh.step(&grads(&vars3, t as f64)).expect("step");
            }
            assert_ne!(
                vars[0].to_vec1::<f64>().expect("a"),
                vars3[0].to_vec1::<f64>().expect("c")
            );
            let (other, _) = store(&[("w", &[1.0, 2.0])]);
            let mut wrong = Optimizer::new(&spec(config), &other).expect("optimizer");
            let err = wrong.restore(&snap).expect_err("another model's state");
            assert!(err.contains("parameters") || err.contains("shape"), "{err}");
        }
    }

    /// Three steps on p = [1, −2, 3] (f64) with gradients g_t = [0.5, −1, 2]·t.
    fn three_steps(config: OptimizerConfig) -> Vec<f64> {
        let (store, vars) = store(&[("w", &[1.0, -2.0, 3.0])]);
        let mut opt = Optimizer::new(&spec(config), &store).expect("optimizer");
        for t in 1..=3 {
            let t = t as f64;
            let grads = grads_of(&[(&vars[0], &[0.5 * t, -t, 2.0 * t])]);
            assert_eq!(opt.step(&grads).expect("step"), 1);
        }
        assert_eq!(opt.steps_taken(), 3);
        vars[0].as_tensor().to_vec1().expect("values")
    }

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
    }

    // Expected values from torch 2.15 (/tmp/tv/bin/python):
    // def run(make):
    //     p = torch.tensor([1., -2., 3.], dtype=torch.float64, requires_grad=True)
    //     opt = make([p])
    //     for t in (1, 2, 3):
    //         opt.zero_grad()
    //         (p * torch.tensor([0.5, -1., 2.], dtype=torch.float64) * t).sum().backward()
    //         opt.step()
    //     return p.tolist()
    // run(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4))
    const SGD_NESTEROV: [f64; 3] = [0.2716913789117676, -0.5433827578235352, 0.08716793087792767];
    // run(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4))
    const SGD_MOMENTUM: [f64; 3] = [0.524234011874875, -1.04846802374975, 1.097216535499625];
    // run(lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=1e-3))
    const ADAM: [f64; 3] = [0.9707660379368027, -1.9707660481608382, 2.9707665798892373];
    // run(lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.05))
    const ADAMW: [f64; 3] = [0.9692837411964048, -1.967784490866167, 2.9662852406385483];

    /// SGD updates its momentum in place from the second step on: a snapshot taken before a
    /// step keeps the values it had (its tensors have their own storage), and one restored
    /// and stepped leaves the snapshot as it was.
    #[test]
    fn an_optimiser_snapshot_is_not_changed_by_later_in_place_steps() {
        let config = OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
        };
        let (store, vars) = store(&[("w", &[1.0, -2.0, 3.0])]);
        let mut opt = Optimizer::new(&spec(config), &store).expect("optimizer");
        let grads = || grads_of(&[(&vars[0], &[0.5, -1.0, 2.0])]);
        opt.step(&grads()).expect("step 1");
        opt.step(&grads()).expect("step 2");
        let snap = opt.snapshot().expect("snapshot");
        let values = |snap: &OptimizerSnapshot| -> Vec<Vec<f64>> {
            snap.tensors
                .iter()
                .map(|(_, t)| t.to_vec1::<f64>().expect("values"))
                .collect()
        };
        let saved = values(&snap);
        assert!(!saved.is_empty(), "SGD with momentum keeps a buffer");
        opt.step(&grads()).expect("step 3");
        assert_eq!(values(&snap), saved, "a later step changed the snapshot");
        opt.restore(&snap).expect("restore");
        opt.step(&grads()).expect("step after restore");
        assert_eq!(
            values(&snap),
            saved,
            "a step after restore changed the snapshot"
        );
    }

    /// The one-pass SGD gives the op chain's results bit for bit, for the parameter and the
    /// momentum buffer, over several steps (first step's buffer = d, then the recurrence),
    /// with and without Nesterov, decay and momentum, in f32 and f64.
    #[test]
    fn the_fused_sgd_pass_is_bit_identical_to_the_op_chain() {
        let len = 70_001; // more than two of the pass's parallel stretches, and a ragged end
        let values = |seed: u64| -> Vec<f64> {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
                })
                .collect()
        };
        for dtype in [DType::F32, DType::F64] {
            for (momentum, nesterov, weight_decay) in [
                (0.9, true, 5e-4),
                (0.9, false, 5e-4),
                (0.0, false, 1e-2),
                (0.5, true, 0.0),
            ] {
                let rule = SgdRule {
                    lr: 0.05,
                    weight_decay,
                    momentum,
                    nesterov,
                };
                let tensor = |seed: u64| {
                    Tensor::from_vec(values(seed), len, &Device::Cpu)
                        .and_then(|t| t.to_dtype(dtype))
                        .expect("tensor")
                };
                let (mut w_fused, mut w_ops) = (tensor(1), tensor(1));
                let w_update = Var::from_tensor(&tensor(1)).expect("var");
                let (mut st_fused, mut st_ops) = (State::default(), State::default());
                let mut st_update = State::default();
                for step in 0..3u64 {
                    let grad = tensor(10 + step);
                    // `sgd_update` as a step runs it: in place from the second step (the
                    // first with momentum creates the buffer), so `w_update` stays the
                    // same tensor throughout.
                    let (lr, wd, mom, nag) = (rule.lr, weight_decay, momentum, nesterov);
                    let w = w_update.as_tensor().detach();
                    let out = sgd_update(&w, grad.clone(), &mut st_update, lr, wd, mom, nag)
                        .expect("update");
                    let in_place = out.is_none();
                    if let Some(new) = out {
                        w_update.set(&new).expect("set");
                    }
                    assert_eq!(
                        in_place,
                        step > 0 || momentum == 0.0,
                        "{rule:?} step {step}"
                    );
                    let before = st_fused.m.as_ref();
                    let (new, buf) = sgd_fused(&w_fused, &grad, before, rule)
                        .expect("contiguous CPU tensors take the fused pass")
                        .expect("fused");
                    if momentum != 0.0 {
                        st_fused.m = buf;
                    }
                    w_fused = new;
                    w_ops = sgd_update_ops(&w_ops, grad, &mut st_ops, rule).expect("ops");
                    let bits = |t: &Tensor| -> Vec<u64> {
                        t.to_dtype(DType::F64)
                            .and_then(|t| t.to_vec1::<f64>())
                            .expect("values")
                            .iter()
                            .map(|v| v.to_bits())
                            .collect()
                    };
                    let what = format!("{dtype:?} {rule:?} step {step}");
                    assert!(bits(&w_fused) == bits(&w_ops), "parameter differs: {what}");
                    assert!(
                        bits(w_update.as_tensor()) == bits(&w_ops),
                        "in-place parameter differs: {what}"
                    );
                    if let (Some(a), Some(b)) = (&st_update.m, &st_ops.m) {
                        assert!(bits(a) == bits(b), "in-place momentum differs: {what}");
                    }
                    match (&st_fused.m, &st_ops.m) {
                        (Some(a), Some(b)) => {
                            assert!(bits(a) == bits(b), "momentum differs: {what}")
                        }
                        (None, None) => assert_eq!(momentum, 0.0, "{what}"),
                        _ => panic!("one path kept a momentum buffer, the other not: {what}"),
                    }
                }
            }
        }
        // A strided (non-contiguous) tensor is left to the op chain.
        let w = Tensor::zeros((4, 3), DType::F32, &Device::Cpu).expect("w");
        let t = w.t().expect("transpose");
        let rule = SgdRule {
            lr: 0.1,
            weight_decay: 0.0,
            momentum: 0.9,
            nesterov: true,
        };
        assert!(sgd_fused(&t, &t, None, rule).is_none());
    }

    /// Times one SGD update of ResNet-18-CIFAR's 11.2 M parameters (as eight f32 tensors of
    /// its largest layers' size) by the fused pass and by the op chain: `cargo test
    /// --release --lib sgd_update_speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "a timing, not a check"]
    fn sgd_update_speed() {
        let (tensors, len) = (8, 1_396_745);
        let rule = SgdRule {
            lr: 0.01,
            weight_decay: 5e-4,
            momentum: 0.9,
            nesterov: true,
        };
        let t = |v: f32| Tensor::full(v, len, &Device::Cpu).expect("tensor");
        let var = |v: f32| Var::from_tensor(&t(v)).expect("var");
        let params: Vec<_> = (0..tensors).map(|_| (var(0.5), t(0.01), t(0.1))).collect();
        let reps = 10;
        let time = |f: &mut dyn FnMut()| {
            f();
            let start = std::time::Instant::now();
            for _ in 0..reps {
                f();
            }
            start.elapsed().as_secs_f64() * 1e3 / reps as f64
        };
        // Each as a step ran it: the new value set into the variable where one is made.
        let fused = time(&mut || {
            for (w, g, m) in &params {
                let (new, buf) = sgd_fused(w.as_tensor(), g, Some(m), rule)
                    .expect("fused")
                    .expect("ok");
                w.set(&new).expect("set");
                std::hint::black_box(buf);
            }
        });
        let in_place = time(&mut || {
            for (w, g, m) in &params {
                sgd_in_place(w.as_tensor(), g, Some(m), rule)
                    .expect("in place")
                    .expect("ok");
            }
        });
        let ops = time(&mut || {
            for (w, g, m) in &params {
                let mut s = State {
                    m: Some(m.clone()),
                    ..State::default()
                };
                let new = sgd_update_ops(w.as_tensor(), g.clone(), &mut s, rule).expect("ops");
                w.set(&new).expect("set");
            }
        });
        let n = tensors * len;
        println!(
            "SGD update of {n} f32 in {tensors} tensors: in place {in_place:.2} ms, \
             one allocating pass + set {fused:.2} ms, op chain + set {ops:.2} ms"
        );
    }

    #[test]
    fn sgd_matches_pytorch() {
        let got = three_steps(OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
        });
        close(&got, &SGD_NESTEROV);
        let got = three_steps(OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
        });
        close(&got, &SGD_MOMENTUM);
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
        close(&got, &ADAM);
        let got = three_steps(OptimizerConfig::AdamW {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
        });
        close(&got, &ADAMW);
    }

    #[test]
    fn a_parameter_without_gradient_is_untouched_and_its_state_waits() {
        let (store, vars) = store(&[("w", &[1.0, 2.0]), ("u", &[5.0, -5.0])]);
        let config = OptimizerConfig::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut opt = Optimizer::new(&spec(config), &store).expect("optimizer");
        for _ in 0..2 {
            let grads = grads_of(&[(&vars[0], &[1.0, 1.0])]);
            assert_eq!(opt.step(&grads).expect("step"), 1);
        }
        let u: Vec<f64> = vars[1].as_tensor().to_vec1().expect("u");
        assert_eq!(u, [5.0, -5.0]);
        // u's first update is Adam's step 1 (moves by lr·g/|g|), as in PyTorch, not step 3.
        let grads = grads_of(&[(&vars[0], &[1.0, 1.0]), (&vars[1], &[2.0, -3.0])]);
        assert_eq!(opt.step(&grads).expect("step"), 2);
        let u: Vec<f64> = vars[1].as_tensor().to_vec1().expect("u");
        close(&u, &[4.9 + 5e-10, -4.9 - 3.3333333e-10]);
    }

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
        let mut opt = Optimizer::new(&spec, model.params()).expect("optimizer");
        let names: Vec<&str> = opt.groups().iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            names,
            ["default", "default (no decay)", "head", "head (no decay)"]
        );
        for g in opt.groups() {
            let exempt = g.name.ends_with("(no decay)");
            assert_eq!(g.weight_decay == 0.0, exempt, "{}", g.name);
            assert!(g.params.iter().all(|p| p.kind.is_trainable()));
            for p in &g.params {
                let bias_or_norm = matches!(p.kind, ParamKind::Bias | ParamKind::Norm)
                    || (p.kind == ParamKind::Head && p.var.rank() == 1);
                assert_eq!(bias_or_norm, exempt, "{}", p.name);
            }
            let head = g.name.starts_with("head");
            assert_eq!(g.base_lr, if head { 0.5 } else { 0.1 }, "{}", g.name);
            assert!(g.params.iter().all(|p| p.name.starts_with("fc.") == head));
        }
        opt.set_lr_factor(0.5);
        assert_eq!((opt.lr_of_group(0), opt.lr_of_group(2)), (0.05, 0.25));
        // Every trainable tensor is in exactly one group; no buffer is.
        let mut grouped: Vec<&str> = opt
            .groups()
            .iter()
            .flat_map(|g| g.params.iter().map(|p| p.name.as_str()))
            .collect();
        grouped.sort_unstable();
        let mut trainable: Vec<&str> = model
            .params()
            .trainable()
            .map(|p| p.name.as_str())
            .collect();
        trainable.sort_unstable();
        assert_eq!(grouped, trainable);
        assert!(model.params().iter().any(|p| p.kind == ParamKind::Buffer));

        // Without the exemption, everything is decayed.
        let plain = OptimSpec {
            no_decay_on_norm_and_bias: false,
            ..spec.clone()
        };
        let opt = Optimizer::new(&plain, model.params()).expect("optimizer");
        assert!(opt.groups().iter().all(|g| g.weight_decay == 5e-4));

        let bad = OptimSpec {
            groups: vec![GroupRule {
                name: "nothing".into(),
                prefixes: vec!["nope.".into()],
                ..GroupRule::default()
            }],
            ..spec.clone()
        };
        assert!(
            matches!(Optimizer::new(&bad, model.params()), Err(OptimError::EmptyGroup(n)) if n == "nothing")
        );
        let bad = OptimSpec {
            optimizer: OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 1.5,
                nesterov: false,
                weight_decay: 0.0,
            },
            ..spec
        };
        let err = Optimizer::new(&bad, model.params())
            .err()
            .expect("momentum 1.5 is refused")
            .to_string();
        assert!(err.contains("momentum") && err.contains("1.5"), "{err}");
    }

    #[test]
    fn clipping_by_norm_returns_the_norm_and_scales_to_the_limit() {
        // torch: v = torch.tensor([3., 4.], requires_grad=True); (v * v.detach()).sum().backward()
        // clip_grad_norm_([v], 1.0) -> 5.0, v.grad = [0.5999999046, 0.7999998331]
        let v = Var::new(&[3f32, 4.0], &Device::Cpu).expect("var");
        let u = Var::new(&[1f32], &Device::Cpu).expect("var");
        let mut grads = (v.as_tensor() * &Tensor::new(&[3f32, 4.0], &Device::Cpu).expect("t"))
            .and_then(|x| x.sum_all())
            .and_then(|l| l.backward())
            .expect("grads");
        let norm = clip_grad_norm(&mut grads, &[&v, &u], 10.0).expect("clip");
        assert!((norm.to_scalar::<f64>().expect("norm") - 5.0).abs() < 1e-6);
        let g: Vec<f32> = grads.get(v.as_tensor()).expect("g").to_vec1().expect("v");
        assert_eq!(g, [3.0, 4.0], "under the limit: unchanged");
        let norm = clip_grad_norm(&mut grads, &[&v, &u], 1.0).expect("clip");
        assert!((norm.to_scalar::<f64>().expect("norm") - 5.0).abs() < 1e-6);
        let g: Vec<f32> = grads.get(v.as_tensor()).expect("g").to_vec1().expect("v");
        assert!(
            (g[0] - 0.599_999_9).abs() < 1e-6 && (g[1] - 0.799_999_8).abs() < 1e-6,
            "{g:?}"
        );
        clip_grad_value(&mut grads, &[&v, &u], 0.7).expect("clip");
        let g: Vec<f32> = grads.get(v.as_tensor()).expect("g").to_vec1().expect("v");
        assert!((g[0] - 0.599_999_9).abs() < 1e-6 && g[1] == 0.7, "{g:?}");
        assert!(grads.get(u.as_tensor()).is_none());
    }

    #[test]
    fn annt_sgd_drives_a_plain_candle_variable_through_candle_nns_optimizer_trait() {
        use candle_nn::Optimizer as _;
        // Minimise (w − 3)² from 0 with SGD + Nesterov momentum via the trait alone.
        let w = Var::new(&[0.0f32], &candle_core::Device::Cpu).expect("var");
        let mut opt = <Optimizer as candle_nn::Optimizer>::new(
            vec![w.clone()],
            OptimizerConfig::sgd_nesterov(0.1),
        )
        .expect("optimiser");
        for _ in 0..100 {
            let loss = (w.as_tensor() - 3.0)
                .and_then(|d| d.sqr())
                .and_then(|d| d.sum_all())
                .expect("loss");
            opt.backward_step(&loss).expect("step");
        }
        let v: Vec<f32> = w.as_tensor().to_vec1().expect("value");
        assert!((v[0] - 3.0).abs() < 1e-3, "{v:?}");
        opt.set_learning_rate(0.01);
        assert_eq!(opt.learning_rate(), 0.01);
    }
}
