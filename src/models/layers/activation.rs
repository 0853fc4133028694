//! Activations, softmax, dropout and stochastic depth — each built from ops whose backward
//! Candle implements (checked against finite differences in the tests).

use candle_core::{D, DType, Result, Tensor};

use super::{ForwardCtx, norm_dtype};

pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.relu()
}

/// `x · σ(x)` (EfficientNet's activation).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.silu()
}

/// The exact (erf) GELU, as PyTorch's `nn.GELU()` default that ViT uses.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

/// `1 / (1 + e^−x)`.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

/// Softmax over the last dimension, in f32 (f64 for f64 input), returned in f32/f64.
/// The maximum is subtracted for stability and detached: it cancels out of the result, so
/// its gradient is zero anyway.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(norm_dtype(x.dtype()))?;
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let e = shifted.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Log-softmax over the last dimension, in f32 (f64 for f64 input).
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(norm_dtype(x.dtype()))?;
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)
}

/// Inverted dropout: in training, zeroes each element with probability `p` and scales the
/// rest by `1/(1−p)`; the identity in evaluation.
pub fn dropout(x: &Tensor, p: f32, ctx: &mut ForwardCtx) -> Result<Tensor> {
    if !ctx.train || p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let mask = random_mask(x.elem_count(), keep, ctx)?;
    x.mul(
        &mask
            .reshape(x.shape())?
            .to_device(x.device())?
            .to_dtype(x.dtype())?,
    )
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
    x.broadcast_mul(&mask.to_device(x.device())?.to_dtype(x.dtype())?)
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
