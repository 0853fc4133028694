//! Batch norm and layer norm, computed in f32 whatever the compute dtype.
//!
//! Both are written from primitive ops so that their gradients flow (Candle 0.11's
//! `LayerNorm::forward` drops them), and batch norm follows PyTorch exactly: batch
//! statistics in training with the biased variance for normalising and the unbiased one for
//! the running estimate, `running = (1 − momentum)·running + momentum·batch`, running
//! statistics in evaluation.

use candle_core::{DType, Result, Tensor, Var};

use crate::models::error::ModelError;
use crate::models::params::{Builder, Init, ParamKind, join};

use super::custom::{Raw, attach3, map_real, map_real_n, raw, raw_n};
use super::kernels::{Backend, cpu as kernels_cpu};
use super::{ForwardCtx, norm_dtype};

#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    pub weight: Var,
    pub bias: Var,
    pub running_mean: Var,
    pub running_var: Var,
    pub eps: f64,
    /// PyTorch's convention: the weight of the new batch statistic.
    pub momentum: f64,
}

impl BatchNorm2d {
    pub fn new(
        b: &mut Builder,
        name: &str,
        c: usize,
        eps: f64,
        momentum: f64,
    ) -> std::result::Result<Self, ModelError> {
        Ok(Self {
            weight: b.tensor(&join(name, "weight"), &[c], Init::Ones, ParamKind::Norm)?,
            bias: b.tensor(&join(name, "bias"), &[c], Init::Zeros, ParamKind::Norm)?,
            running_mean: b.tensor(
                &join(name, "running_mean"),
                &[c],
                Init::Zeros,
                ParamKind::Buffer,
            )?,
            running_var: b.tensor(
                &join(name, "running_var"),
                &[c],
                Init::Ones,
                ParamKind::Buffer,
            )?,
            eps,
            momentum,
        })
    }

    /// `x`: `n × c × h × w` in any float dtype; returns the same dtype.
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(norm_dtype(dtype))?;
        // Batch norm has no Candle op to compare against, so `Kernels::CandleStock` does not
        // change it: the backend follows the device alone.
        let y = if !ctx.train {
            self.forward_eval(&x)?
        } else {
            match Backend::select(x.device(), super::Kernels::Annt) {
                Backend::Cpu => self.forward_train_fused(&x, false)?,
                #[cfg(feature = "cuda")]
                Backend::Cuda if x.dtype() == DType::F32 => {
                    let (y, mean, var) = super::kernels::cuda::norm::batch_norm_train(
                        &x,
                        self.weight.as_tensor(),
                        self.bias.as_tensor(),
                        self.eps,
                    )?;
                    self.update_running(&mean, &var, x.elem_count() / x.dim(1)?)?;
                    y
                }
                _ => self.forward_train_ops(&x)?,
            }
        };
        y.to_dtype(dtype)
    }

    /// `relu(self.forward(x))`; in training on the CPU one fused op (the ReLU's mask is
    /// recomputed in the backward from the same coefficients, so no extra buffer is kept).
    pub fn forward_relu(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        if !ctx.train
            && let Some(y) = self.forward_eval_relu(x, None)?
        {
            return Ok(y);
        }
        if ctx.train
            && Backend::select(x.device(), super::Kernels::Annt) == Backend::Cpu
            && matches!(x.dtype(), DType::F32 | DType::F64)
        {
            return self.forward_train_fused(x, true);
        }
        super::activation::relu(&self.forward(x, ctx)?)
    }

    /// `relu(self.forward(x) + shortcut)`: in evaluation without a graph on the CPU one
    /// pass ([`Self::forward_eval_relu`]), elsewhere the batch norm and `add_relu`.
    pub fn forward_add_relu(
        &self,
        x: &Tensor,
        shortcut: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        if !ctx.train
            && let Some(y) = self.forward_eval_relu(x, Some(shortcut))?
        {
            return Ok(y);
        }
        super::activation::add_relu(&self.forward(x, ctx)?, shortcut)
    }

    fn per_channel(&self, v: &Var, like: &Tensor) -> Result<Tensor> {
        let c = like.dim(1)?;
        v.as_tensor().to_dtype(like.dtype())?.reshape((1, c, 1, 1))
    }

    /// Running statistics: one scale and one shift per channel. On the CPU that is one pass
    /// over the activations (annt's channel kernel) instead of a broadcast multiply and a
    /// broadcast add; evaluation builds no graph, so no backward is attached.
    fn forward_eval(&self, x: &Tensor) -> Result<Tensor> {
        let (scale, shift) = self.eval_scale_shift(x)?;
        if x.device().is_cpu() && x.rank() == 4 && matches!(x.dtype(), DType::F32 | DType::F64) {
            let x = x.contiguous()?;
            let (n, c, h, w) = x.dims4()?;
            let hw = h * w;
            let (a, d) = (flat(&scale)?, flat(&shift)?);
            let mean = flat(self.running_mean.as_tensor())?;
            let invstd: Vec<f64> = flat(self.running_var.as_tensor())?
                .iter()
                .map(|v| 1.0 / (v + self.eps).sqrt())
                .collect();
            let value = affine_raw(&x, None, &a, None, &d, c, hw)?;
            return attach3(
                "annt-batch-norm-eval",
                [&x, self.weight.as_tensor(), self.bias.as_tensor()],
                value,
                Box::new(move |x, gamma_t, beta_t, grad| {
                    let grad = grad.contiguous()?;
                    let mean_t = Tensor::from_vec(mean.clone(), c, x.device())?;
                    let sums = map_real_n(
                        &[&grad, x, &mean_t],
                        2 * c,
                        |v| kernels_cpu::channel_grad_sums(v[0], v[1], v[2], n, c, hw),
                        |v| kernels_cpu::channel_grad_sums(v[0], v[1], v[2], n, c, hw),
                    )?
                    .to_dtype(DType::F64)?
                    .to_vec1::<f64>()?;
                    let (s1, s2) = sums.split_at(c);
                    let zero = vec![0.0; c];
                    let grad_x = affine(&grad, None, &a, None, &zero, c, hw)?;
                    let grad_gamma: Vec<f64> = (0..c).map(|i| s2[i] * invstd[i]).collect();
                    let grad_gamma =
                        Tensor::from_vec(grad_gamma, c, x.device())?.to_dtype(gamma_t.dtype())?;
                    let grad_beta =
                        Tensor::from_vec(s1.to_vec(), c, x.device())?.to_dtype(beta_t.dtype())?;
                    Ok((grad_x, grad_gamma, grad_beta))
                }),
            );
        }
        x.broadcast_mul(&scale)?.broadcast_add(&shift)
    }

    /// The running statistics' per-channel scale `γ / √(var + ε)` and shift
    /// `β − mean · scale`, `1 × c × 1 × 1` in `x`'s dtype.
    fn eval_scale_shift(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let scale = (self.per_channel(&self.running_var, x)? + self.eps)?
            .sqrt()?
            .recip()?
            .mul(&self.per_channel(&self.weight, x)?)?;
        let shift = self
            .per_channel(&self.bias, x)?
            .sub(&self.per_channel(&self.running_mean, x)?.mul(&scale)?)?;
        Ok((scale, shift))
    }

    /// Evaluation without a graph (`custom::no_grad`) on the CPU: `relu(bn(x) + shortcut)`
    /// (or `relu(bn(x))`) from the running statistics in one pass over the activations,
    /// where [`Self::forward`] and the ReLU (and the residual sum) were two or three, each
    /// writing a fresh buffer. Rounded as those ops round (`relu((a·x + d) + z)`), so the
    /// logits are the same bits. `None` where it does not apply.
    pub fn forward_eval_relu(
        &self,
        x: &Tensor,
        shortcut: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let applies = super::custom::grad_off()
            && x.device().is_cpu()
            && x.rank() == 4
            && matches!(x.dtype(), DType::F32 | DType::F64)
            && shortcut.is_none_or(|z| z.shape() == x.shape() && z.dtype() == x.dtype());
        if !applies {
            return Ok(None);
        }
        let (scale, shift) = self.eval_scale_shift(x)?;
        let (a, d) = (flat(&scale)?, flat(&shift)?);
        let (_, c, h, w) = x.dims4()?;
        let x = x.contiguous()?;
        let y = match shortcut {
            Some(z) => affine_add_relu(&x, &z.contiguous()?, &a, &d, c, h * w)?,
            None => affine_relu(&x, &a, &d, c, h * w)?,
        };
        y.into_tensor().map(Some)
    }

    /// `running = (1 − m)·running + m·batch`, with the unbiased batch variance.
    fn update_running(&self, mean: &Tensor, biased_var: &Tensor, count: usize) -> Result<()> {
        let m = self.momentum;
        let unbiased = if count > 1 {
            count as f64 / (count - 1) as f64
        } else {
            1.0
        };
        let rm = self.running_mean.as_tensor();
        let rv = self.running_var.as_tensor();
        let new_mean =
            ((rm * (1.0 - m))? + (mean.detach().flatten_all()?.to_dtype(rm.dtype())? * m)?)?;
        let new_var = ((rv * (1.0 - m))?
            + (biased_var.detach().flatten_all()?.to_dtype(rv.dtype())? * (m * unbiased))?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)
    }

    /// Batch statistics from Candle's ops: candle-nn's `BatchNorm::forward_train` (PyTorch's
    /// rule: biased variance to normalise, unbiased for the running estimate; autograd
    /// derives the backward), sharing this layer's variables so its running statistics
    /// update. Any device; the reference annt's fused CPU and CUDA kernels are tested against.
    pub(crate) fn forward_train_ops(&self, x: &Tensor) -> Result<Tensor> {
        let c = x.dim(1)?;
        let dtype = x.dtype();
        let cast = |v: &Var| v.as_tensor().to_dtype(dtype);
        // The running statistics go in as the variables themselves (`Var::from_tensor` of a
        // variable shares it): candle-nn's update lands in this layer's buffers.
        let bn = candle_nn::BatchNorm::new_with_momentum(
            c,
            self.running_mean.as_tensor().clone(),
            self.running_var.as_tensor().clone(),
            cast(&self.weight)?,
            cast(&self.bias)?,
            self.eps,
            self.momentum,
        )?;
        bn.forward_train(x)
    }

    /// Batch statistics with CPU kernels: one pass for the statistics, one for the output,
    /// and a closed-form backward (two passes) instead of the seven-op autograd chain. With
    /// `relu`, the output is `max(·, 0)` and the backward first masks the gradient.
    fn forward_train_fused(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let x = x.contiguous()?;
        let after = if relu { After::Relu } else { After::Nothing };
        let (value, fit) = self.train_value(&x, after)?;
        attach3(
            if relu {
                "annt-batch-norm-relu"
            } else {
                "annt-batch-norm"
            },
            [&x, self.weight.as_tensor(), self.bias.as_tensor()],
            value,
            Box::new(move |x, gamma_t, beta_t, grad| fit.backward(x, gamma_t, beta_t, grad)),
        )
    }

    /// Training-mode batch norm of `x` (contiguous, `n × c × h × w`, f32 or f64 on the CPU)
    /// without a graph: its batch statistics (the running ones updated), the output
    /// `x̂·γ + β` (ReLU'd with `relu`) and what its backward needs. The convolution + batch
    /// norm node (`conv_bn`) and [`Self::forward_train_fused`] share it.
    pub(super) fn train_value(&self, x: &Tensor, after: After<'_>) -> Result<(Raw, BnFit)> {
        let relu = matches!(after, After::Relu);
        let (n, c, h, w) = x.dims4()?;
        let hw = h * w;
        let stats = map_real(
            x,
            2 * c,
            |v| kernels_cpu::channel_stats(v, n, c, hw),
            |v| kernels_cpu::channel_stats(v, n, c, hw),
        )?;
        let mean = stats.narrow(0, 0, c)?;
        let var = stats.narrow(0, c, c)?;
        self.update_running(&mean, &var, n * hw)?;
        let invstd: Vec<f64> = (var.to_dtype(DType::F64)? + self.eps)?
            .sqrt()?
            .recip()?
            .to_vec1()?;
        let mean: Vec<f64> = mean.to_dtype(DType::F64)?.to_vec1()?;
        let gamma: Vec<f64> = self.weight.as_tensor().to_dtype(DType::F64)?.to_vec1()?;
        let beta: Vec<f64> = self.bias.as_tensor().to_dtype(DType::F64)?.to_vec1()?;
        // value = x̂·γ + β in one pass; β's gradient is Σdy, which the backward's sums give
        // anyway (a separate broadcast add would cost a strided reduction per layer).
        let scale: Vec<f64> = invstd.iter().zip(&gamma).map(|(s, g)| s * g).collect();
        let shift: Vec<f64> = (0..c).map(|i| beta[i] - scale[i] * mean[i]).collect();
        let fit = BnFit {
            n,
            c,
            hw,
            relu,
            mean,
            invstd,
            scale,
            shift,
        };
        let value = match after {
            After::AddRelu(z) => fit.value_add_relu(x, z)?,
            After::Relu => affine_relu(x, &fit.scale, &fit.shift, c, hw)?,
            After::Nothing => affine_raw(x, None, &fit.scale, None, &fit.shift, c, hw)?,
        };
        Ok((value, fit))
    }
}

/// What a training-mode batch norm's output goes through in the same pass
/// ([`BatchNorm2d::train_value`]).
pub(super) enum After<'a> {
    Nothing,
    Relu,
    /// A residual block's sum with its shortcut, then the ReLU: `relu(x̂·γ + β + shortcut)`
    /// ([`BnFit::add_relu_grad`] is its gradient to the sum).
    AddRelu(&'a Tensor),
}

/// What a training-mode batch norm's backward needs from its forward
/// ([`BatchNorm2d::train_value`]): the batch statistics and the output's coefficients.
pub(super) struct BnFit {
    n: usize,
    c: usize,
    hw: usize,
    relu: bool,
    mean: Vec<f64>,
    invstd: Vec<f64>,
    scale: Vec<f64>,
    shift: Vec<f64>,
}

impl BnFit {
    /// The scale and shift of the output, converted to f32 as every f32 pass converts them.
    fn coefficients32(&self) -> (Vec<f32>, Vec<f32>) {
        (to_f32(&self.scale), to_f32(&self.shift))
    }

    /// `relu(x̂·γ + β + z)` of the batch norm's input `x` and the shortcut `z`.
    fn value_add_relu(&self, x: &Tensor, z: &Tensor) -> Result<Raw> {
        affine_add_relu(x, z, &self.scale, &self.shift, self.c, self.hw)
    }

    /// The gradient that `relu(x̂·γ + β + z)` ([`BatchNorm2d::train_value`] with a residual)
    /// passes to both terms of its sum, for the output gradient `grad`: `grad` where the sum
    /// was positive, the mask recomputed from `x` and `z`.
    pub(super) fn add_relu_grad(&self, x: &Tensor, z: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let (c, hw) = (self.c, self.hw);
        let (a32, d32) = self.coefficients32();
        let (a, d) = (&self.scale[..], &self.shift[..]);
        map_real_n(
            &[x, z, &grad.contiguous()?],
            x.shape(),
            |v| kernels_cpu::channel_affine_add_relu_grad(v[0], v[1], v[2], (&a32, &d32), c, hw),
            |v| kernels_cpu::channel_affine_add_relu_grad(v[0], v[1], v[2], (a, d), c, hw),
        )
    }

    /// The gradients of the input `x`, `γ` and `β` for the output gradient `grad`.
    pub(super) fn backward(
        &self,
        x: &Tensor,
        gamma_t: &Tensor,
        beta_t: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (n, c, hw) = (self.n, self.c, self.hw);
        let (mean, invstd) = (&self.mean, &self.invstd);
        // Behind a ReLU the gradient is masked where the output was clipped; the mask is
        // recomputed inside the two passes below from the forward's own coefficients
        // (converted to x's dtype the same way), not written out as a masked copy first.
        let grad = grad.contiguous()?;
        let (ma32, md32) = self.coefficients32();
        let (ma, md) = (&self.scale[..], &self.shift[..]);
        let relu = self.relu;
        let gamma: Vec<f64> = gamma_t.to_dtype(DType::F64)?.to_vec1()?;
        let mean_t = Tensor::from_vec(mean.clone(), c, x.device())?;
        let sums = map_real_n(
            &[&grad, x, &mean_t],
            2 * c,
            |v| match relu {
                true => kernels_cpu::channel_grad_sums_relu(
                    v[0],
                    v[1],
                    v[2],
                    (&ma32, &md32),
                    (n, c, hw),
                ),
                false => kernels_cpu::channel_grad_sums(v[0], v[1], v[2], n, c, hw),
            },
            |v| match relu {
                true => kernels_cpu::channel_grad_sums_relu(v[0], v[1], v[2], (ma, md), (n, c, hw)),
                false => kernels_cpu::channel_grad_sums(v[0], v[1], v[2], n, c, hw),
            },
        )?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
        let (s1, s2) = sums.split_at(c);
        let count = (n * hw) as f64;
        // dx = γσ⁻¹·(dy − Σdy/M − x̂·Σ(dy·x̂)/M) = A·dy + B·x + D per channel.
        let a: Vec<f64> = (0..c).map(|i| gamma[i] * invstd[i]).collect();
        let b: Vec<f64> = (0..c)
            .map(|i| -a[i] * invstd[i] * invstd[i] * s2[i] / count)
            .collect();
        let d: Vec<f64> = (0..c)
            .map(|i| -a[i] * s1[i] / count - b[i] * mean[i])
            .collect();
        let grad_x = if relu {
            let (a32, b32, d32) = (to_f32(&a), to_f32(&b), to_f32(&d));
            raw_n(
                &[&grad, x],
                x.shape(),
                |v| {
                    kernels_cpu::channel_affine_relu_grad(
                        v[0],
                        v[1],
                        (&ma32, &md32),
                        &a32,
                        &b32,
                        &d32,
                        c,
                        hw,
                    )
                },
                |v| kernels_cpu::channel_affine_relu_grad(v[0], v[1], (ma, md), &a, &b, &d, c, hw),
            )?
            .into_tensor()?
        } else {
            affine(&grad, Some(x), &a, Some(&b), &d, c, hw)?
        };
        let grad_gamma: Vec<f64> = (0..c).map(|i| s2[i] * invstd[i]).collect();
        let grad_gamma = Tensor::from_vec(grad_gamma, c, x.device())?.to_dtype(gamma_t.dtype())?;
        let grad_beta = Tensor::from_vec(s1.to_vec(), c, x.device())?.to_dtype(beta_t.dtype())?;
        Ok((grad_x, grad_gamma, grad_beta))
    }
}

/// A tensor's elements as f64.
fn flat(t: &Tensor) -> Result<Vec<f64>> {
    t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()
}

/// Per-channel coefficients (computed in f64) as an f32 pass uses them.
fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&f| f as f32).collect()
}

/// `max(a[ch]·x + d[ch], 0)`, the coefficients converted to `x`'s dtype as the backward
/// converts them (`BnFit::backward` recomputes the ReLU's mask from them).
fn affine_relu(x: &Tensor, a: &[f64], d: &[f64], c: usize, hw: usize) -> Result<Raw> {
    let (a32, d32) = (to_f32(a), to_f32(d));
    raw(
        x,
        x.shape(),
        |v| kernels_cpu::channel_affine_relu(v, &a32, &d32, c, hw),
        |v| kernels_cpu::channel_affine_relu(v, a, d, c, hw),
    )
}

/// `max(a[ch]·x + d[ch] + z, 0)` over `n × c × hw` data: batch norm, a residual sum and
/// the ReLU in one pass, the coefficients converted to `x`'s dtype.
fn affine_add_relu(
    x: &Tensor,
    z: &Tensor,
    a: &[f64],
    d: &[f64],
    c: usize,
    hw: usize,
) -> Result<Raw> {
    let (a32, d32) = (to_f32(a), to_f32(d));
    raw_n(
        &[x, z],
        x.shape(),
        |v| kernels_cpu::channel_affine_add_relu(v[0], v[1], (&a32, &d32), c, hw),
        |v| kernels_cpu::channel_affine_add_relu(v[0], v[1], (a, d), c, hw),
    )
}

/// [`affine_raw`] as a tensor.
fn affine(
    x: &Tensor,
    z: Option<&Tensor>,
    a: &[f64],
    b: Option<&[f64]>,
    d: &[f64],
    c: usize,
    hw: usize,
) -> Result<Tensor> {
    affine_raw(x, z, a, b, d, c, hw)?.into_tensor()
}

/// `a[ch]·x + b[ch]·z + d[ch]` over `n × c × hw` data with the per-channel coefficients
/// converted to `x`'s dtype.
fn affine_raw(
    x: &Tensor,
    z: Option<&Tensor>,
    a: &[f64],
    b: Option<&[f64]>,
    d: &[f64],
    c: usize,
    hw: usize,
) -> Result<Raw> {
    let zero = vec![0.0; c];
    let b = b.unwrap_or(&zero);
    let inputs: Vec<&Tensor> = match z {
        Some(z) => vec![x, z],
        None => vec![x],
    };
    let (a32, b32, d32) = (to_f32(a), to_f32(b), to_f32(d));
    raw_n(
        &inputs,
        x.shape(),
        |v| {
            kernels_cpu::channel_affine(
                v[0],
                v.get(1).copied().unwrap_or(&[]),
                &a32,
                &b32,
                &d32,
                c,
                hw,
            )
        },
        |v| kernels_cpu::channel_affine(v[0], v.get(1).copied().unwrap_or(&[]), a, b, d, c, hw),
    )
}

/// Layer norm over the last dimension with an affine `weight` and `bias`.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Var,
    pub bias: Var,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(
        b: &mut Builder,
        name: &str,
        d: usize,
        eps: f64,
    ) -> std::result::Result<Self, ModelError> {
        Ok(Self {
            weight: b.tensor(&join(name, "weight"), &[d], Init::Ones, ParamKind::Norm)?,
            bias: b.tensor(&join(name, "bias"), &[d], Init::Zeros, ParamKind::Norm)?,
            eps,
        })
    }

    /// In f32 (f64 for f64 input), returned in the input's dtype. On the CPU one fused pass
    /// forward and one backward ([`kernels_cpu::layer_norm_forward`]); elsewhere Candle's
    /// ops ([`Self::forward_ops`], also the reference the tests compare with).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !x.device().is_cpu() {
            return self.forward_ops(x);
        }
        let dtype = x.dtype();
        let nd = norm_dtype(dtype);
        let xn = x.to_dtype(nd)?.contiguous()?;
        let gamma = self.weight.as_tensor().to_dtype(nd)?;
        let beta = self.bias.as_tensor().to_dtype(nd)?;
        let eps = self.eps;
        let y = raw_n(
            &[&xn.detach(), &gamma.detach(), &beta.detach()],
            xn.shape(),
            |v| kernels_cpu::layer_norm_forward(v[0], v[1], v[2], eps),
            |v| kernels_cpu::layer_norm_forward(v[0], v[1], v[2], eps),
        )?;
        let y = attach3(
            "annt-layer-norm",
            [&xn, &gamma, &beta],
            y,
            Box::new(move |x, gamma, _beta, grad| {
                let (n, d) = (x.elem_count(), gamma.elem_count());
                let all = map_real_n(
                    &[x, gamma, &grad.contiguous()?],
                    n + 2 * d,
                    |v| kernels_cpu::layer_norm_backward(v[0], v[1], v[2], eps),
                    |v| kernels_cpu::layer_norm_backward(v[0], v[1], v[2], eps),
                )?;
                Ok((
                    all.narrow(0, 0, n)?.reshape(x.shape())?,
                    all.narrow(0, n, d)?.reshape(gamma.shape())?,
                    all.narrow(0, n + d, d)?.reshape(gamma.shape())?,
                ))
            }),
        )?;
        y.to_dtype(dtype)
    }

    /// Layer norm from Candle's ops: candle-nn's `ops::layer_norm_slow` (mean, centring,
    /// variance, division, affine; each with a backward — candle-nn's `LayerNorm` layer and
    /// fused `ops::layer_norm` drop the gradient), in f32 for half-precision input.
    pub fn forward_ops(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let nd = norm_dtype(dtype);
        candle_nn::ops::layer_norm_slow(
            &x.to_dtype(nd)?,
            &self.weight.as_tensor().to_dtype(nd)?,
            &self.bias.as_tensor().to_dtype(nd)?,
            self.eps as f32,
        )?
        .to_dtype(dtype)
    }
}
