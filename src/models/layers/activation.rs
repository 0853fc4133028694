//! Activations, softmax, dropout and stochastic depth — built from ops whose backward Candle
//! implements, or (ReLU on the CPU) annt's element-wise kernels with their own backward; all
//! checked against finite differences in the tests.

use candle_core::{D, DType, Result, Tensor};

use super::custom::{attach1, attach2, map_real_n, map_real2, raw, raw2};
use super::kernels::cpu as kernels_cpu;
use super::{ForwardCtx, norm_dtype};

/// Whether `x` can take annt's element-wise CPU kernels (f32/f64 on the CPU).
fn cpu_real(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// A kernel's f32 and f64 forms, `x → y`.
type PointwiseForward = (fn(&[f32]) -> Vec<f32>, fn(&[f64]) -> Vec<f64>);
/// A kernel's f32 and f64 forms, `(x, grad) → input grad`.
type PointwiseBackward = (
    fn(&[f32], &[f32]) -> Vec<f32>,
    fn(&[f64], &[f64]) -> Vec<f64>,
);

/// An element-wise CPU op with its own backward: `forward(x)` as the value, and
/// `backward(x, grad)` as the input gradient (so the graph keeps the input, not the output).
/// `x` must be an f32/f64 CPU tensor ([`cpu_real`]).
fn pointwise(
    name: &'static str,
    x: &Tensor,
    forward: PointwiseForward,
    backward: PointwiseBackward,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let y = raw(&x.detach(), x.shape(), forward.0, forward.1)?;
    attach1(
        name,
        &x,
        y,
        Box::new(move |x, grad| {
            map_real2(x, &grad.contiguous()?, x.shape(), backward.0, backward.1)
        }),
    )
}

/// `max(x, 0)`. On the CPU one pass forward and one backward (`g` where `x > 0`); Candle's
/// `relu` records a comparison, a cast and a product for its backward — three passes and
/// three buffers per activation. Elsewhere Candle's op.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !cpu_real(x) {
        return x.relu();
    }
    pointwise(
        "annt-relu",
        x,
        (
            kernels_cpu::relu_forward::<f32>,
            kernels_cpu::relu_forward::<f64>,
        ),
        (
            kernels_cpu::relu_backward::<f32>,
            kernels_cpu::relu_backward::<f64>,
        ),
    )
}

/// `max(a + b, 0)`: the end of a residual block. On the CPU one op in the graph (one pass
/// forward, one backward whose gradient both inputs share) instead of an add and a ReLU.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !cpu_real(a) || a.dtype() != b.dtype() || a.shape() != b.shape() {
        return (a + b)?.relu();
    }
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    let y = raw2(
        &a.detach(),
        &b.detach(),
        a.shape(),
        kernels_cpu::add_relu_forward::<f32>,
        kernels_cpu::add_relu_forward::<f64>,
    )?;
    attach2(
        "annt-add-relu",
        &a,
        &b,
        y,
        Box::new(|a, b, grad| {
            let g = map_real_n(
                &[a, b, &grad.contiguous()?],
                a.shape(),
                |v| kernels_cpu::add_relu_backward(v[0], v[1], v[2]),
                |v| kernels_cpu::add_relu_backward(v[0], v[1], v[2]),
            )?;
            Ok((g.clone(), g))
        }),
    )
}

/// `x · σ(x)` (EfficientNet's activation, after nearly every batch norm). On the CPU one
/// pass forward and one backward (`g·σ(x)·(1 + x·(1 − σ(x)))`) on the vectorised `exp`:
/// Candle's `silu` runs its forward on the calling thread alone through libm's `expf`, and
/// records its backward as six activation-sized ops (sigmoid from neg, exp, add, recip,
/// then products and sums). Elsewhere Candle's op.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if !cpu_real(x) {
        return x.silu();
    }
    pointwise(
        "annt-silu",
        x,
        (
            kernels_cpu::silu_forward::<f32>,
            kernels_cpu::silu_forward::<f64>,
        ),
        (
            kernels_cpu::silu_backward::<f32>,
            kernels_cpu::silu_backward::<f64>,
        ),
    )
}

/// The exact (erf) GELU, as PyTorch's `nn.GELU()` default that ViT uses. On the CPU one
/// pass forward and one backward (`g·(Φ(x) + x·φ(x))`); Candle's `gelu_erf` records its
/// backward as a chain of erf, exp, products and sums. Elsewhere Candle's op.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if !cpu_real(x) {
        return x.gelu_erf();
    }
    pointwise(
        "annt-gelu",
        x,
        (
            kernels_cpu::gelu_forward::<f32>,
            kernels_cpu::gelu_forward::<f64>,
        ),
        (
            kernels_cpu::gelu_backward::<f32>,
            kernels_cpu::gelu_backward::<f64>,
        ),
    )
}

/// `1 / (1 + e^−x)`: candle-nn's fused op (one CPU/CUDA kernel, backward from the output)
/// instead of four ops and their four backward nodes.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    super::tape::sigmoid(x)
}

/// Softmax over the last dimension, in f32 (f64 for f64 input), returned in f32/f64.
/// The maximum is subtracted for stability and detached: it cancels out of the result, so
/// its gradient is zero anyway.
///
/// On the CPU one pass forward and one backward per row (`y·(g − Σ g·y)`, `y` recomputed);
/// Candle's ops record five nodes, each with its own buffer and backward.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(norm_dtype(x.dtype()))?;
    if cpu_real(&x) && x.rank() > 0 {
        let d = x.dim(D::Minus1)?;
        let x = x.contiguous()?;
        let y = raw(
            &x.detach(),
            x.shape(),
            |v| kernels_cpu::softmax_forward(v, d),
            |v| kernels_cpu::softmax_forward(v, d),
        )?;
        return attach1(
            "annt-softmax",
            &x,
            y,
            Box::new(move |x, grad| {
                map_real2(
                    x,
                    &grad.contiguous()?,
                    x.shape(),
                    |a, b| kernels_cpu::softmax_backward(a, b, d),
                    |a, b| kernels_cpu::softmax_backward(a, b, d),
                )
            }),
        );
    }
    softmax_ops(&x)
}

/// Softmax from Candle's ops: candle-nn's `ops::softmax`, which keeps its gradient (unlike
/// `softmax_last_dim`, whose fused kernel has no backward). Any device; the reference the
/// CPU kernel is tested against.
pub fn softmax_ops(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(&x.to_dtype(norm_dtype(x.dtype()))?, D::Minus1)
}

/// Log-softmax over the last dimension, in f32 (f64 for f64 input): candle-nn's
/// `ops::log_softmax` (ops with a backward; the max-shift keeps large logits finite).
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::log_softmax(&x.to_dtype(norm_dtype(x.dtype()))?, D::Minus1)
}

/// Inverted dropout: in training, zeroes each element with probability `p` and scales the
/// rest by `1/(1−p)`; the identity in evaluation.
pub fn dropout(x: &Tensor, p: f32, ctx: &mut ForwardCtx) -> Result<Tensor> {
    if !ctx.train || p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let mask = random_mask(x.elem_count(), keep, ctx)?;
    let mask = mask
        .reshape(x.shape())?
        .to_device(x.device())?
        .to_dtype(x.dtype())?;
    super::tape::broadcast_mul(x, &mask)
}

/// Stochastic depth in torchvision's "row" mode: drops a residual branch for whole samples
/// with probability `p` (keeping and scaling by `1/(1−p)` otherwise); identity in evaluation.
pub fn stochastic_depth(x: &Tensor, p: f32, ctx: &mut ForwardCtx) -> Result<Tensor> {
    if !ctx.train || p <= 0.0 {
        return Ok(x.clone());
    }
    let n = x.dim(0)?;
    let mut shape = vec![1; x.rank()];
    shape[0] = n;
    let mask = random_mask(n, 1.0 - p, ctx)?.reshape(shape)?;
    super::tape::broadcast_mul(x, &mask.to_device(x.device())?.to_dtype(x.dtype())?)
}

/// `len` values that are `1/keep` with probability `keep` and 0 otherwise, drawn on the host
/// from the step's seeded stream (reproducible on every device).
fn random_mask(len: usize, keep: f32, ctx: &mut ForwardCtx) -> Result<Tensor> {
    let scale = if keep > 0.0 { 1.0 / keep } else { 0.0 };
    let values: Vec<f32> = ctx
        .uniform_mask(len)
        .into_iter()
        .map(|u| if u < keep { scale } else { 0.0 })
        .collect();
    Tensor::from_vec(values, len, &candle_core::Device::Cpu)?.to_dtype(DType::F32)
}
