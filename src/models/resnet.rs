//! ResNet v1.5 (torchvision's layout and names): basic blocks (ResNet-8/18) or bottlenecks
//! (ResNet-50) with the stride on the 3×3 convolution, and two stems — CIFAR (3×3 stride-1
//! conv, no max-pool, for 32-px inputs) and ImageNet (7×7 stride-2 conv + 3×3 stride-2
//! max-pool, for 224-px inputs and torchvision's pretrained weights).

use candle_core::{Result, Tensor};

use super::Network;
use super::error::ModelError;
use super::layers::conv::{Conv2d, ConvBias, ConvInit, ConvSpec};
use super::layers::linear::Linear;
use super::layers::norm::BatchNorm2d;
use super::layers::{ForwardCtx, activation::add_relu, pool};
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
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    /// The third 1×1 convolution of a bottleneck.
    conv3: Option<(Conv2d, BatchNorm2d)>,
    downsample: Option<(Conv2d, BatchNorm2d)>,
}

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
        let bn = |b: &mut Builder, n: &str, c| {
            BatchNorm2d::new(b, &join(name, n), c, BN_EPS, BN_MOMENTUM)
        };
        let conv = |b: &mut Builder, n: &str, ci, co, k, spec| {
            Conv2d::new(
                b,
                &join(name, n),
                ci,
                co,
                k,
                spec,
                ConvBias::Without,
                ConvInit::KaimingFanOut,
            )
        };
        let unit = match block {
            Block::Basic => Self {
                conv1: conv(b, "conv1", c_in, width, 3, ConvSpec::new(stride, 1))?,
                bn1: bn(b, "bn1", width)?,
                conv2: conv(b, "conv2", width, width, 3, ConvSpec::new(1, 1))?,
                bn2: bn(b, "bn2", width)?,
                conv3: None,
                downsample: None,
            },
            Block::Bottleneck => Self {
                conv1: conv(b, "conv1", c_in, width, 1, ConvSpec::new(1, 0))?,
                bn1: bn(b, "bn1", width)?,
                conv2: conv(b, "conv2", width, width, 3, ConvSpec::new(stride, 1))?,
                bn2: bn(b, "bn2", width)?,
                conv3: Some((
                    conv(b, "conv3", width, c_out, 1, ConvSpec::new(1, 0))?,
                    bn(b, "bn3", c_out)?,
                )),
                downsample: None,
            },
        };
        let downsample = if stride != 1 || c_in != c_out {
            Some((
                conv(b, "downsample.0", c_in, c_out, 1, ConvSpec::new(stride, 0))?,
                bn(b, "downsample.1", c_out)?,
            ))
        } else {
            None
        };
        Ok(Self { downsample, ..unit })
    }

    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let y = self.bn1.forward_relu(&self.conv1.forward(x, ctx)?, ctx)?;
        let y = self.conv2.forward(&y, ctx)?;
        let y = match &self.conv3 {
            Some((conv3, bn3)) => {
                bn3.forward(&conv3.forward(&self.bn2.forward_relu(&y, ctx)?, ctx)?, ctx)?
            }
            None => self.bn2.forward(&y, ctx)?,
        };
        let shortcut = match &self.downsample {
            Some((conv, bn)) => bn.forward(&conv.forward(x, ctx)?, ctx)?,
            None => x.clone(),
        };
        add_relu(&y, &shortcut)
    }
}

pub struct ResNet {
    stem: Stem,
    conv1: Conv2d,
    bn1: BatchNorm2d,
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
        let conv1 = match cfg.stem {
            Stem::Cifar => Conv2d::new(
                b,
                "conv1",
                3,
                stem_width,
                3,
                ConvSpec::new(1, 1),
                ConvBias::Without,
                ConvInit::KaimingFanOut,
            )?,
            Stem::ImageNet => Conv2d::new(
                b,
                "conv1",
                3,
                stem_width,
                7,
                ConvSpec::new(2, 3),
                ConvBias::Without,
                ConvInit::KaimingFanOut,
            )?,
        };
        let bn1 = BatchNorm2d::new(b, "bn1", stem_width, BN_EPS, BN_MOMENTUM)?;
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
            conv1,
            bn1,
            units,
            fc,
        })
    }
}

impl Network for ResNet {
    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let mut y = self.bn1.forward_relu(&self.conv1.forward(x, ctx)?, ctx)?;
        if self.stem == Stem::ImageNet {
            y = pool::max_pool2d(&y, 3, 2, 1, ctx.kernels)?;
        }
        for unit in &self.units {
            y = unit.forward(&y, ctx)?;
        }
        self.fc.forward(&pool::global_avg_pool(&y)?)
    }
}
