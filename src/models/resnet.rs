//! ResNet v1.5 (torchvision's layout and names): basic blocks (ResNet-8/18) or bottlenecks
//! (ResNet-50) with the stride on the 3×3 convolution, and two stems — CIFAR (3×3 stride-1
//! conv, no max-pool, for 32-px inputs) and ImageNet (7×7 stride-2 conv + 3×3 stride-2
//! max-pool, for 224-px inputs and torchvision's pretrained weights).

use candle_core::{Result, Tensor};

use super::Network;
use super::error::ModelError;
use super::layers::conv::ConvSpec;
use super::layers::conv_bn::{Activation, ConvBn, ConvShape, NormConfig};
use super::layers::linear::Linear;
use super::layers::{ForwardCtx, pool};
use super::params::{Builder, ParamKind, join};

const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// 3×3 stride-1 convolution, no max-pool (32-px inputs).
    Cifar,
    /// 7×7 stride-2 convolution and a 3×3 stride-2 max-pool (224-px inputs).
    ImageNet,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// Two 3×3 convolutions (expansion 1).
    Basic,
    /// 1×1 → 3×3 (strided) → 1×1 with expansion 4.
    Bottleneck,
}

impl Block {
    fn expansion(self) -> usize {
        match self {
            Block::Basic => 1,
            Block::Bottleneck => 4,
        }
    }
}

/// The shape of a ResNet. `widths[i]` is stage `i`'s base width (torchvision: 64, 128, 256,
/// 512); the first stage has stride 1, later ones stride 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    pub block: Block,
    pub blocks_per_stage: Vec<usize>,
    pub widths: Vec<usize>,
    pub stem: Stem,
    pub classes: usize,
}

impl ResNetConfig {
    pub fn resnet18(stem: Stem, classes: usize) -> Self {
        Self {
            block: Block::Basic,
            blocks_per_stage: vec![2, 2, 2, 2],
            widths: vec![64, 128, 256, 512],
            stem,
            classes,
        }
    }
    pub fn resnet50(stem: Stem, classes: usize) -> Self {
        Self {
            block: Block::Bottleneck,
            blocks_per_stage: vec![3, 4, 6, 3],
            widths: vec![64, 128, 256, 512],
            stem,
            classes,
        }
    }
    /// ResNet-8: three stages of one basic block at widths 16/32/64 (~78 k parameters),
    /// the CPU demo model.
    pub fn resnet8_tiny(classes: usize) -> Self {
        Self {
            block: Block::Basic,
            blocks_per_stage: vec![1, 1, 1],
            widths: vec![16, 32, 64],
            stem: Stem::Cifar,
            classes,
        }
    }
}

struct Unit {
    /// conv1 + bn1 + ReLU.
    first: ConvBn,
    /// conv2 + bn2 (+ ReLU in a bottleneck, before its third pair).
    second: ConvBn,
    /// conv3 + bn3 of a bottleneck.
    third: Option<ConvBn>,
    /// `downsample.0` + `downsample.1` where the shape changes.
    downsample: Option<ConvBn>,
}

const NORM: NormConfig = NormConfig {
    eps: BN_EPS,
    momentum: BN_MOMENTUM,
};

impl Unit {
    fn new(
        b: &mut Builder,
        name: &str,
        block: Block,
        c_in: usize,
        width: usize,
        stride: usize,
    ) -> std::result::Result<Self, ModelError> {
        let c_out = width * block.expansion();
        let pair = |b: &mut Builder,
                    conv: &str,
                    bn: &str,
                    (ci, co, kernel): (usize, usize, usize),
                    spec,
                    act| {
            let shape = ConvShape {
                c_in: ci,
                c_out: co,
                kernel,
            };
            ConvBn::new(
                b,
                [&join(name, conv), &join(name, bn)],
                shape,
                spec,
                NORM,
                act,
            )
        };
        let (first, second, third) = match block {
            Block::Basic => (
                pair(
                    b,
                    "conv1",
                    "bn1",
                    (c_in, width, 3),
                    ConvSpec::new(stride, 1),
                    Activation::Relu,
                )?,
                pair(
                    b,
                    "conv2",
                    "bn2",
                    (width, width, 3),
                    ConvSpec::new(1, 1),
                    Activation::Identity,
                )?,
                None,
            ),
            Block::Bottleneck => (
                pair(
                    b,
                    "conv1",
                    "bn1",
                    (c_in, width, 1),
                    ConvSpec::new(1, 0),
                    Activation::Relu,
                )?,
                pair(
                    b,
                    "conv2",
                    "bn2",
                    (width, width, 3),
                    ConvSpec::new(stride, 1),
                    Activation::Relu,
                )?,
                Some(pair(
                    b,
                    "conv3",
                    "bn3",
                    (width, c_out, 1),
                    ConvSpec::new(1, 0),
                    Activation::Identity,
                )?),
            ),
        };
        let downsample = if stride != 1 || c_in != c_out {
            Some(pair(
                b,
                "downsample.0",
                "downsample.1",
                (c_in, c_out, 1),
                ConvSpec::new(stride, 0),
                Activation::Identity,
            )?)
        } else {
            None
        };
        Ok(Self {
            first,
            second,
            third,
            downsample,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let y = self.first.forward(x, ctx)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x, ctx)?,
            None => x.clone(),
        };
        // The last pair takes the shortcut's sum and the ReLU into its own node.
        match &self.third {
            Some(third) => third.forward_add_relu(&self.second.forward(&y, ctx)?, &shortcut, ctx),
            None => self.second.forward_add_relu(&y, &shortcut, ctx),
        }
    }
}

pub struct ResNet {
    stem: Stem,
    /// conv1 + bn1 + ReLU.
    first: ConvBn,
    units: Vec<Unit>,
    fc: Linear,
}

impl ResNet {
    pub fn new(b: &mut Builder, cfg: &ResNetConfig) -> std::result::Result<Self, ModelError> {
        if cfg.widths.len() != cfg.blocks_per_stage.len()
            || cfg.widths.is_empty()
            || cfg.classes == 0
        {
            return Err(ModelError::BadConfig {
                model: "resnet".into(),
                detail: format!("{cfg:?}"),
            });
        }
        let stem_width = cfg.widths[0];
        let (kernel, spec) = match cfg.stem {
            Stem::Cifar => (3, ConvSpec::new(1, 1)),
            Stem::ImageNet => (7, ConvSpec::new(2, 3)),
        };
        let shape = ConvShape {
            c_in: 3,
            c_out: stem_width,
            kernel,
        };
        let first = ConvBn::new(b, ["conv1", "bn1"], shape, spec, NORM, Activation::Relu)?;
        let mut units = Vec::new();
        let mut c_in = stem_width;
        for (stage, (&width, &count)) in cfg.widths.iter().zip(&cfg.blocks_per_stage).enumerate() {
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let name = format!("layer{}.{i}", stage + 1);
                units.push(Unit::new(b, &name, cfg.block, c_in, width, stride)?);
                c_in = width * cfg.block.expansion();
            }
        }
        let fc = Linear::new(b, "fc", c_in, cfg.classes, ParamKind::Head)?;
        Ok(Self {
            stem: cfg.stem,
            first,
            units,
            fc,
        })
    }
}

impl Network for ResNet {
    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let mut y = self.first.forward(x, ctx)?;
        if self.stem == Stem::ImageNet {
            y = pool::max_pool2d(&y, 3, 2, 1, ctx.kernels)?;
        }
        for unit in &self.units {
            y = unit.forward(&y, ctx)?;
        }
        self.fc.forward(&pool::global_avg_pool(&y)?)
    }
}
