//! Batch norm and layer norm, computed in f32 whatever the compute dtype.
//!
//! Both are written from primitive ops so that their gradients flow (Candle 0.11's
//! `LayerNorm::forward` drops them), and batch norm follows PyTorch exactly: batch
//! statistics in training with the biased variance for normalising and the unbiased one for
//! the running estimate, `running = (1 − momentum)·running + momentum·batch`, running
//! statistics in evaluation.

use candle_core::{D, Result, Tensor, Var};

use crate::models::error::ModelError;
use crate::models::params::{Builder, Init, ParamKind, join};

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
        let nd = norm_dtype(dtype);
        let x = x.to_dtype(nd)?;
        let c = x.dim(1)?;
        let per_channel =
            |v: &Var| -> Result<Tensor> { v.as_tensor().to_dtype(nd)?.reshape((1, c, 1, 1)) };
        let (centered, var) = if ctx.train {
            let mean = x.mean_keepdim((0, 2, 3))?;
            let centered = x.broadcast_sub(&mean)?;
            let var = centered.sqr()?.mean_keepdim((0, 2, 3))?;
            let count = x.elem_count() / c;
            let unbiased = if count > 1 {
                count as f64 / (count - 1) as f64
            } else {
                1.0
            };
            let m = self.momentum;
            let rm = self.running_mean.as_tensor();
            let rv = self.running_var.as_tensor();
            let new_mean =
                ((rm * (1.0 - m))? + (mean.detach().flatten_all()?.to_dtype(rm.dtype())? * m)?)?;
            let new_var = ((rv * (1.0 - m))?
                + (var.detach().flatten_all()?.to_dtype(rv.dtype())? * (m * unbiased))?)?;
            self.running_mean.set(&new_mean)?;
            self.running_var.set(&new_var)?;
            (centered, var)
        } else {
            (
                x.broadcast_sub(&per_channel(&self.running_mean)?)?,
                per_channel(&self.running_var)?,
            )
        };
        let scale = (var + self.eps)?
            .sqrt()?
            .recip()?
            .broadcast_mul(&per_channel(&self.weight)?)?;
        centered
            .broadcast_mul(&scale)?
            .broadcast_add(&per_channel(&self.bias)?)?
            .to_dtype(dtype)
    }
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

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let nd = norm_dtype(dtype);
        let x = x.to_dtype(nd)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight.as_tensor().to_dtype(nd)?)?
            .broadcast_add(&self.bias.as_tensor().to_dtype(nd)?)?
            .to_dtype(dtype)
    }
}
