//! A bias-free convolution, batch norm and an optional activation: the pair ResNet and
//! EfficientNet are built from, written once. With ReLU, batch norm and the activation run
//! as one op on the CPU ([`BatchNorm2d::forward_relu`]).

use candle_core::{Result, Tensor};

use crate::models::error::ModelError;
use crate::models::params::Builder;

use super::ForwardCtx;
use super::activation::silu;
use super::conv::{Conv2d, ConvBias, ConvInit, ConvSpec};
use super::norm::BatchNorm2d;

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
        let y = self.conv.forward(x, ctx)?;
        match self.activation {
            Activation::Identity => self.bn.forward(&y, ctx),
            Activation::Relu => self.bn.forward_relu(&y, ctx),
            Activation::Silu => silu(&self.bn.forward(&y, ctx)?),
        }
    }
}
