//! A bias-free convolution, batch norm and an optional activation: the pair ResNet and
//! EfficientNet are built from, written once. With ReLU, batch norm and the activation run
//! as one op on the CPU ([`BatchNorm2d::forward_relu`]).

use candle_core::{DType, Result, Tensor};

use crate::models::error::ModelError;
use crate::models::params::Builder;

use super::activation::{add_relu, silu};
use super::conv::{Conv2d, ConvBias, ConvInit, ConvSpec, window};
use super::custom::{attach_many, map_real_n, raw2};
use super::kernels::cpu as kernels_cpu;
use super::norm::{After, BatchNorm2d};
use super::{ForwardCtx, Kernels};

/// What follows the batch norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Nothing (a residual branch's last pair, a projection).
    Identity,
    Relu,
    /// `x·σ(x)` (EfficientNet).
    Silu,
}

/// Batch norm's `eps` and momentum (PyTorch's convention: the new statistic's weight).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormConfig {
    pub eps: f64,
    pub momentum: f64,
}

/// A convolution's channels in and out and its square kernel side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
}

#[derive(Clone, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
    pub activation: Activation,
}

impl ConvBn {
    /// The convolution's parameters are named `names[0]` (`.weight`), the batch norm's
    /// `names[1]` (torchvision: `conv1`/`bn1` in ResNet, `features.N.0`/`features.N.1` in
    /// EfficientNet), so checkpoints load unchanged.
    pub fn new(
        b: &mut Builder,
        names: [&str; 2],
        shape: ConvShape,
        spec: ConvSpec,
        norm: NormConfig,
        activation: Activation,
    ) -> std::result::Result<Self, ModelError> {
        let conv = Conv2d::new(
            b,
            names[0],
            shape.c_in,
            shape.c_out,
            shape.kernel,
            spec,
            ConvBias::Without,
            ConvInit::KaimingFanOut,
        )?;
        let bn = BatchNorm2d::new(b, names[1], shape.c_out, norm.eps, norm.momentum)?;
        Ok(Self {
            conv,
            bn,
            activation,
        })
    }

    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        if let Some(y) = self.forward_fused(x, ctx)? {
            return Ok(y);
        }
        let y = self.conv.forward(x, ctx)?;
        match self.activation {
            Activation::Identity => self.bn.forward(&y, ctx),
            Activation::Relu => self.bn.forward_relu(&y, ctx),
            Activation::Silu => silu(&self.bn.forward(&y, ctx)?),
        }
    }

    /// `relu(self.forward(x) + shortcut)`: a residual block's last convolution, its batch
    /// norm, the shortcut's sum and the ReLU. In training on the CPU (where the fused
    /// conv + batch-norm node applies, and this pair has no activation of its own) that is
    /// one node, so the batch norm's output needs no gradient of its own in Candle's graph;
    /// elsewhere the layers and `activation::add_relu`.
    pub fn forward_add_relu(
        &self,
        x: &Tensor,
        shortcut: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        if self.activation == Activation::Identity
            && let Some(y) = self.fused(x, Some(shortcut), ctx)?
        {
            return Ok(y);
        }
        if self.activation == Activation::Identity {
            return self
                .bn
                .forward_add_relu(&self.conv.forward(x, ctx)?, shortcut, ctx);
        }
        add_relu(&self.forward(x, ctx)?, shortcut)
    }

    /// Training on the CPU (annt's kernels, f32/f64, a dense convolution without bias, then
    /// identity or ReLU): the convolution, batch norm and activation as one node of the
    /// graph, its inputs the images, the weight, γ and β (`custom::attach_many`). As two
    /// nodes, Candle's backward zero-filled and added an activation-sized gradient for the
    /// convolution's output; here the batch norm's input gradient goes straight into the
    /// convolution's backward. Same kernels, same arithmetic. `None` elsewhere.
    fn forward_fused(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Option<Tensor>> {
        self.fused(x, None, ctx)
    }

    /// [`Self::forward_fused`], and with `shortcut` (identity activation only) the residual
    /// sum and ReLU after the batch norm in the batch norm's own pass, rounded as `add_relu`
    /// rounds (the backward's mask `bn + shortcut > 0` recomputed from the convolution's
    /// output and the shortcut), the shortcut a fifth input.
    fn fused(
        &self,
        x: &Tensor,
        shortcut: Option<&Tensor>,
        ctx: &ForwardCtx,
    ) -> Result<Option<Tensor>> {
        let relu = match self.activation {
            Activation::Identity => false,
            Activation::Relu => true,
            Activation::Silu => return Ok(None),
        };
        let dtype = x.dtype();
        if !ctx.train
            || ctx.kernels != Kernels::Annt
            || !x.device().is_cpu()
            || !matches!(dtype, DType::F32 | DType::F64)
            || (dtype == DType::F64 && ctx.products.bf16().is_some())
            || self.conv.spec.groups != 1
            || self.conv.bias.is_some()
            || (relu && shortcut.is_some())
        {
            return Ok(None);
        }
        let x = x.contiguous()?;
        let w = self.conv.weight.as_tensor().to_dtype(dtype)?.contiguous()?;
        let g = window(&x, &w, self.conv.spec)?;
        let c_out = w.dim(0)?;
        let out_shape = (g.n, c_out, g.out_h(), g.out_w());
        let shortcut = match shortcut {
            None => None,
            Some(sc) => {
                if !sc.device().is_cpu()
                    || sc.dtype() != dtype
                    || sc.dims() != [out_shape.0, out_shape.1, out_shape.2, out_shape.3]
                {
                    return Ok(None);
                }
                Some(sc.contiguous()?)
            }
        };
        let products = ctx.products;
        let (xd, wd) = (x.detach(), w.detach());
        let y = raw2(
            &xd,
            &wd,
            out_shape,
            |a, b| kernels_cpu::conv_forward(a, b, &g, c_out, products),
            |a, b| kernels_cpu::conv_forward(a, b, &g, c_out, products),
        )?
        .into_tensor()?;
        // With a shortcut the node's value is relu(bn + shortcut), made in the same pass as
        // the batch norm's output (which is not kept: the backward recomputes the ReLU's mask
        // from the convolution's output and the shortcut).
        let after = match (&shortcut, relu) {
            (Some(sc), _) => After::AddRelu(sc),
            (None, true) => After::Relu,
            (None, false) => After::Nothing,
        };
        let (value, fit) = self.bn.train_value(&y, after)?;
        let residual = shortcut.as_ref().map(Tensor::detach);
        let gamma = self.bn.weight.as_tensor().clone();
        let beta = self.bn.bias.as_tensor().clone();
        let (gd, bd) = (gamma.detach(), beta.detach());
        let want_dx = x.track_op();
        let mut inputs = vec![&x, &w, &gamma, &beta];
        if let Some(sc) = &shortcut {
            inputs.push(sc);
        }
        let name = match (relu, shortcut.is_some()) {
            (true, _) => "annt-conv-bn-relu",
            (false, true) => "annt-conv-bn-add-relu",
            (false, false) => "annt-conv-bn",
        };
        attach_many(
            name,
            &inputs,
            value,
            Box::new(move |grad| {
                // Through the residual ReLU first: the same gradient reaches the batch norm
                // and the shortcut.
                let passed = match &residual {
                    None => None,
                    Some(sc) => Some(fit.add_relu_grad(&y, sc, grad)?),
                };
                let grad = passed.as_ref().unwrap_or(grad);
                let (dy, dgamma, dbeta) = fit.backward(&y, &gd, &bd, grad)?;
                let (x_len, w_len) = (xd.elem_count(), wd.elem_count());
                let both = map_real_n(
                    &[&xd, &wd, &dy],
                    x_len + w_len,
                    |v| {
                        kernels_cpu::conv_backward_joined(
                            v[0], v[1], v[2], &g, c_out, products, want_dx,
                        )
                    },
                    |v| {
                        kernels_cpu::conv_backward_joined(
                            v[0], v[1], v[2], &g, c_out, products, want_dx,
                        )
                    },
                )?;
                let mut grads = vec![
                    both.narrow(0, 0, x_len)?.reshape(xd.shape())?,
                    both.narrow(0, x_len, w_len)?.reshape(wd.shape())?,
                    dgamma,
                    dbeta,
                ];
                if let Some(p) = passed {
                    grads.push(p);
                }
                Ok(grads)
            }),
        )
        .map(Some)
    }
}
