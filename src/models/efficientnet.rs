//! EfficientNet (torchvision's layout and names): a 3×3 stride-2 stem, seven stages of
//! MBConv blocks (1×1 expansion → depthwise k×k → squeeze-and-excitation → 1×1 linear
//! projection, with a stochastic-depth residual where the shape allows), a 1×1 head
//! convolution to four times the last stage's width, global average pooling, dropout and a
//! linear classifier.
//!
//! B0 is the paper's fine-tuned convnet, so everything a pretrained checkpoint depends on
//! follows `torchvision.models.efficientnet_b0` exactly: the state-dict names
//! (`features.2.0.block.1.0.weight`), the shapes, the batch-norm hyper-parameters and the
//! initialisation. Width and depth multipliers scale the stage table by torchvision's rules
//! ([`EfficientNetConfig::scaled`]), which the tests use for small, fast models.

use candle_core::{Result, Tensor};

use super::Network;
use super::error::ModelError;
use super::layers::activation::{dropout, sigmoid, silu, stochastic_depth};
use super::layers::conv::{Conv2d, ConvBias, ConvInit, ConvSpec};
use super::layers::conv_bn::{Activation, ConvBn, ConvShape, NormConfig};
use super::layers::linear::Linear;
use super::layers::norm::BatchNorm2d;
use super::layers::{ForwardCtx, norm_dtype, pool, tape};
use super::params::{Builder, Init, ParamKind, join};

/// The EfficientNet paper's batch-norm settings (TensorFlow's eps 1e-3 and decay 0.99, i.e.
/// momentum 0.01 in PyTorch's convention), which annt's spec asks for. Decision: kept even
/// though `torchvision.models.efficientnet_b0` itself uses `nn.BatchNorm2d`'s defaults
/// (1e-5, 0.1; only its B5–B7 pass these values): with torchvision's pretrained B0 weights
/// the larger eps shifts normalised activations slightly (a channel with running variance v
/// is scaled by √((v + 1e-5)/(v + 1e-3))), which fine-tuning absorbs in its first steps.
/// These are only the defaults of [`EfficientNetConfig::bn_eps`] and
/// [`EfficientNetConfig::bn_momentum`]: setting those fields to 1e-5 and 0.1 gives
/// torchvision's B0 exactly (the PyTorch reference tests do).
const BN_EPS: f64 = 1e-3;
/// PyTorch's convention: the weight of the new batch statistic.
const BN_MOMENTUM: f64 = 0.01;

/// Channel counts are rounded to multiples of this (`_make_divisible`'s divisor).
const CHANNEL_DIVISOR: usize = 8;

/// B0's stem width, before width scaling.
const B0_STEM: usize = 32;

/// One row of a stage table: (expand ratio, kernel, stride, in, out, layers).
type StageRow = (usize, usize, usize, usize, usize, usize);

/// B0's stages before scaling.
const B0_STAGES: [StageRow; 7] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
];

/// The shape of an EfficientNet: B0's stage table scaled in width and depth, plus the
/// regularisation of training.
#[derive(Clone, Debug, PartialEq)]
pub struct EfficientNetConfig {
    /// Multiplies every channel count (rounded to a multiple of 8).
    pub width_mult: f64,
    /// Multiplies every stage's block count (rounded up).
    pub depth_mult: f64,
    pub classes: usize,
    /// Dropout before the classifier.
    pub dropout: f32,
    /// Stochastic-depth probability of the last block; earlier blocks get linearly less.
    pub stochastic_depth: f32,
    /// Batch-norm epsilon (annt: 1e-3; torchvision's B0: 1e-5).
    pub bn_eps: f64,
    /// Batch-norm momentum, PyTorch's convention (annt: 0.01; torchvision's B0: 0.1).
    pub bn_momentum: f64,
}

/// One stage of MBConv blocks after scaling; its first block has `stride` and `c_in`
/// input channels, the rest stride 1 and `c_out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageConfig {
    pub expand_ratio: usize,
    pub kernel: usize,
    pub stride: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub layers: usize,
}

impl EfficientNetConfig {
    /// EfficientNet-B0 with torchvision's defaults (dropout 0.2, stochastic depth 0.2).
    pub fn b0(classes: usize) -> Self {
        Self::scaled(1.0, 1.0, classes)
    }

    /// B0's stages scaled as torchvision's `_efficientnet_conf(width_mult, depth_mult)` does
    /// (B1 is `scaled(1.0, 1.1, k)`, B2 `scaled(1.1, 1.2, k)`, …), with B0's dropout 0.2 and
    /// stochastic depth 0.2.
    pub fn scaled(width_mult: f64, depth_mult: f64, classes: usize) -> Self {
        Self {
            width_mult,
            depth_mult,
            classes,
            dropout: 0.2,
            stochastic_depth: 0.2,
            bn_eps: BN_EPS,
            bn_momentum: BN_MOMENTUM,
        }
    }

    /// The stage table after scaling: channels `_make_divisible(c · width_mult, 8)`, layers
    /// `⌈n · depth_mult⌉`.
    pub fn stages(&self) -> Vec<StageConfig> {
        B0_STAGES
            .iter()
            .map(
                |&(expand_ratio, kernel, stride, c_in, c_out, layers)| StageConfig {
                    expand_ratio,
                    kernel,
                    stride,
                    c_in: self.channels(c_in),
                    c_out: self.channels(c_out),
                    layers: (layers as f64 * self.depth_mult).ceil() as usize,
                },
            )
            .collect()
    }

    /// Output channels of the stem (the first stage's input).
    pub fn stem_channels(&self) -> usize {
        self.channels(B0_STEM)
    }

    /// Output channels of the head convolution: four times the last stage's (1280 for B0).
    pub fn head_channels(&self) -> usize {
        4 * self.channels(B0_STAGES[B0_STAGES.len() - 1].4)
    }

    fn channels(&self, c: usize) -> usize {
        make_divisible(c as f64 * self.width_mult, CHANNEL_DIVISOR)
    }

    fn validate(&self) -> std::result::Result<(), ModelError> {
        let bad = |detail: String| {
            Err(ModelError::BadConfig {
                model: "efficientnet".into(),
                detail,
            })
        };
        let positive = |m: f64| m.is_finite() && m > 0.0;
        if !positive(self.width_mult) || !positive(self.depth_mult) {
            return bad(format!(
                "width multiplier {} and depth multiplier {} (both must be positive)",
                self.width_mult, self.depth_mult
            ));
        }
        if self.classes == 0 {
            return bad("0 classes".into());
        }
        if !positive(self.bn_eps) || !(0.0..=1.0).contains(&self.bn_momentum) {
            return bad(format!(
                "batch-norm eps {} and momentum {} (eps must be positive, momentum in [0, 1])",
                self.bn_eps, self.bn_momentum
            ));
        }
        // A probability of 1 would scale the kept values by 1/0.
        if !(0.0..1.0).contains(&self.dropout) || !(0.0..1.0).contains(&self.stochastic_depth) {
            return bad(format!(
                "dropout {} and stochastic depth {} (both must lie in [0, 1))",
                self.dropout, self.stochastic_depth
            ));
        }
        Ok(())
    }
}

/// torchvision's `_make_divisible` (from the TensorFlow reference): the nearest multiple of
/// `divisor` to `v`, at least `divisor`, and never more than 10 % below `v`.
fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    // Python's `int(v + d / 2) // d * d`: truncation, then floor division (v > 0).
    let mut rounded = ((v + d / 2.0).trunc() as usize / divisor * divisor).max(divisor);
    if (rounded as f64) < 0.9 * v {
        rounded += divisor;
    }
    rounded
}

/// Mean over the spatial dimensions, accumulated in f32 (f64 for f64 input) and returned in
/// the input's dtype: what PyTorch's half-precision pooling kernels do, and a sum of up to
/// 112² half-precision values would otherwise lose most of its bits.
fn spatial_mean(x: &Tensor, keepdim: bool) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(norm_dtype(dtype))?;
    let mean = pool::global_avg_pool(&x)?;
    let mean = if keepdim {
        let (n, c) = mean.dims2()?;
        tape::reshape(&mean, (n, c, 1, 1))?
    } else {
        mean
    };
    mean.to_dtype(dtype)
}

/// torchvision's `Conv2dNormActivation`: a bias-free convolution (`{name}.0`), batch norm
/// (`{name}.1`) and SiLU or nothing.
fn conv_bn(
    b: &mut Builder,
    name: &str,
    (c_in, c_out, kernel): (usize, usize, usize),
    spec: ConvSpec,
    activation: Activation,
) -> std::result::Result<ConvBn, ModelError> {
    let norm = NormConfig {
        eps: BN_EPS,
        momentum: BN_MOMENTUM,
    };
    let shape = ConvShape {
        c_in,
        c_out,
        kernel,
    };
    ConvBn::new(
        b,
        [&join(name, 0), &join(name, 1)],
        shape,
        spec,
        norm,
        activation,
    )
}

/// Squeeze-and-excitation: pooled channels → 1×1 conv (`fc1`, with bias) → SiLU → 1×1 conv
/// (`fc2`) → sigmoid, which gates the input's channels. Kept as convolutions (not linear
/// layers) because that is what torchvision's names and weight shapes are.
struct SqueezeExcite {
    fc1: Conv2d,
    fc2: Conv2d,
}

impl SqueezeExcite {
    fn new(
        b: &mut Builder,
        name: &str,
        channels: usize,
        squeeze: usize,
    ) -> std::result::Result<Self, ModelError> {
        let pointwise = ConvSpec::new(1, 0);
        Ok(Self {
            fc1: Conv2d::new(
                b,
                &join(name, "fc1"),
                channels,
                squeeze,
                1,
                pointwise,
                ConvBias::With,
                ConvInit::KaimingFanOut,
            )?,
            fc2: Conv2d::new(
                b,
                &join(name, "fc2"),
                squeeze,
                channels,
                1,
                pointwise,
                ConvBias::With,
                ConvInit::KaimingFanOut,
            )?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let s = spatial_mean(x, true)?;
        let s = silu(&self.fc1.forward(&s, ctx)?)?;
        let gate = sigmoid(&self.fc2.forward(&s, ctx)?)?;
        tape::broadcast_mul(x, &gate)
    }
}

/// An inverted-residual block (torchvision's `MBConv`), its layers numbered in `block` as
/// torchvision numbers them: the expansion only exists when the ratio is not 1, so the
/// depthwise convolution is `block.0` or `block.1` and the rest shift with it.
struct MbConv {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    se: SqueezeExcite,
    project: ConvBn,
    /// Stride 1 and as many channels out as in: the input is added back.
    residual: bool,
    /// Probability of dropping the residual branch for a sample in training.
    sd_prob: f32,
}

impl MbConv {
    #[allow(clippy::too_many_arguments)]
    fn new(
        b: &mut Builder,
        name: &str,
        expand_ratio: usize,
        kernel: usize,
        stride: usize,
        c_in: usize,
        c_out: usize,
        sd_prob: f32,
    ) -> std::result::Result<Self, ModelError> {
        let block = join(name, "block");
        let expanded = make_divisible((c_in * expand_ratio) as f64, CHANNEL_DIVISOR);
        let mut index = 0;
        let mut next = || {
            index += 1;
            join(&block, index - 1)
        };
        let expand = if expand_ratio != 1 {
            Some(conv_bn(
                b,
                &next(),
                (c_in, expanded, 1),
                ConvSpec::new(1, 0),
                Activation::Silu,
            )?)
        } else {
            None
        };
        let dw_spec = ConvSpec::depthwise(stride, (kernel - 1) / 2, expanded);
        let depthwise = conv_bn(
            b,
            &next(),
            (expanded, expanded, kernel),
            dw_spec,
            Activation::Silu,
        )?;
        // torchvision squeezes relative to the block's input width, not the expanded one.
        let se = SqueezeExcite::new(b, &next(), expanded, (c_in / 4).max(1))?;
        let project = conv_bn(
            b,
            &next(),
            (expanded, c_out, 1),
            ConvSpec::new(1, 0),
            Activation::Identity,
        )?;
        Ok(Self {
            expand,
            depthwise,
            se,
            project,
            residual: stride == 1 && c_in == c_out,
            sd_prob,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let mut y = match &self.expand {
            Some(expand) => expand.forward(x, ctx)?,
            None => x.clone(),
        };
        y = self.depthwise.forward(&y, ctx)?;
        y = self.se.forward(&y, ctx)?;
        y = self.project.forward(&y, ctx)?;
        if self.residual {
            y = tape::add(&stochastic_depth(&y, self.sd_prob, ctx)?, x)?;
        }
        Ok(y)
    }
}

pub struct EfficientNet {
    stem: ConvBn,
    blocks: Vec<MbConv>,
    head: ConvBn,
    dropout: f32,
    classifier: Linear,
}

impl EfficientNet {
    pub fn new(b: &mut Builder, cfg: &EfficientNetConfig) -> std::result::Result<Self, ModelError> {
        cfg.validate()?;
        let stages = cfg.stages();
        let stem_channels = cfg.stem_channels();
        let stem = conv_bn(
            b,
            "features.0",
            (3, stem_channels, 3),
            ConvSpec::new(2, 1),
            Activation::Silu,
        )?;

        let total_blocks: usize = stages.iter().map(|s| s.layers).sum();
        let mut blocks = Vec::with_capacity(total_blocks);
        let mut c_in = stem_channels;
        for (s, stage) in stages.iter().enumerate() {
            for i in 0..stage.layers {
                // Linear in the block's index over the whole network, from 0 for the first
                // block; computed in f64 as torchvision's Python floats are.
                let sd_prob = (f64::from(cfg.stochastic_depth) * blocks.len() as f64
                    / total_blocks as f64) as f32;
                let stride = if i == 0 { stage.stride } else { 1 };
                let name = format!("features.{}.{i}", s + 1);
                blocks.push(MbConv::new(
                    b,
                    &name,
                    stage.expand_ratio,
                    stage.kernel,
                    stride,
                    c_in,
                    stage.c_out,
                    sd_prob,
                )?);
                c_in = stage.c_out;
            }
        }

        let head_channels = cfg.head_channels();
        let head_name = format!("features.{}", stages.len() + 1);
        let head = conv_bn(
            b,
            &head_name,
            (c_in, head_channels, 1),
            ConvSpec::new(1, 0),
            Activation::Silu,
        )?;
        // torchvision's override of PyTorch's default: U(±1/√out_features), zero bias.
        let bound = 1.0 / (cfg.classes as f32).sqrt();
        let classifier = Linear::with_init(
            b,
            "classifier.1",
            head_channels,
            cfg.classes,
            ParamKind::Head,
            Init::Uniform(bound),
            Init::Zeros,
        )?;
        let mut net = Self {
            stem,
            blocks,
            head,
            dropout: cfg.dropout,
            classifier,
        };
        for bn in net.batch_norms_mut() {
            bn.eps = cfg.bn_eps;
            bn.momentum = cfg.bn_momentum;
        }
        Ok(net)
    }

    fn batch_norms_mut(&mut self) -> impl Iterator<Item = &mut BatchNorm2d> {
        let blocks = self.blocks.iter_mut().flat_map(|b| {
            b.expand
                .iter_mut()
                .chain([&mut b.depthwise, &mut b.project])
                .map(|cb| &mut cb.bn)
        });
        std::iter::once(&mut self.stem.bn)
            .chain(blocks)
            .chain(std::iter::once(&mut self.head.bn))
    }
}

impl Network for EfficientNet {
    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let mut y = self.stem.forward(x, ctx)?;
        for block in &self.blocks {
            y = block.forward(&y, ctx)?;
        }
        y = self.head.forward(&y, ctx)?;
        let pooled = dropout(&spatial_mean(&y, false)?, self.dropout, ctx)?;
        self.classifier.forward(&pooled)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::models::layers::Kernels;
    use crate::models::{Architecture, Model};
    use crate::util::rng::Rng;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn build(cfg: EfficientNetConfig) -> std::result::Result<Model, ModelError> {
        Model::build_arch(
            "efficientnet-b0",
            Architecture::EfficientNet(cfg),
            Builder::new(0, &Device::Cpu),
        )
    }

    fn images(n: usize, size: usize, seed: u64) -> candle_core::Result<Tensor> {
        let mut rng = Rng::new(seed);
        let values: Vec<f32> = (0..n * 3 * size * size).map(|_| rng.normal()).collect();
        Tensor::from_vec(values, (n, 3, size, size), &Device::Cpu)
    }

    fn tiny() -> std::result::Result<Model, ModelError> {
        build(EfficientNetConfig::scaled(0.25, 0.25, 10))
    }

    /// FNV-1a (64-bit), to compare a long list with torchvision's in one number.
    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    #[test]
    fn parameter_counts_match_torchvision() -> TestResult {
        // sum(p.numel() for p in efficientnet_b0(num_classes=k).parameters())
        assert_eq!(build(EfficientNetConfig::b0(10))?.param_count(), 4_020_358);
        assert_eq!(build(EfficientNetConfig::b0(100))?.param_count(), 4_135_648);
        // EfficientNet(_efficientnet_conf(w=0.25, d=0.25), num_classes=10)
        assert_eq!(tiny()?.param_count(), 126_822);
        Ok(())
    }

    #[test]
    fn names_and_shapes_match_torchvision() -> TestResult {
        let model = build(EfficientNetConfig::b0(10))?;
        let params = model.params();
        let shape_of = |name: &str| params.get(name).map(|p| p.var.dims().to_vec());
        // torchvision's state dict without `num_batches_tracked`: 311 tensors, 4,062,374
        // scalars with the running statistics.
        assert_eq!(params.len(), 311);
        assert_eq!(
            params.iter().map(|p| p.var.elem_count()).sum::<usize>(),
            4_062_374
        );
        let expected: &[(&str, &[usize])] = &[
            ("features.0.0.weight", &[32, 3, 3, 3]),
            ("features.0.1.running_var", &[32]),
            ("features.1.0.block.0.0.weight", &[32, 1, 3, 3]),
            ("features.1.0.block.1.fc1.weight", &[8, 32, 1, 1]),
            ("features.1.0.block.1.fc1.bias", &[8]),
            ("features.1.0.block.1.fc2.weight", &[32, 8, 1, 1]),
            ("features.1.0.block.2.0.weight", &[16, 32, 1, 1]),
            ("features.2.0.block.0.0.weight", &[96, 16, 1, 1]),
            ("features.2.0.block.1.0.weight", &[96, 1, 3, 3]),
            ("features.2.0.block.2.fc1.weight", &[4, 96, 1, 1]),
            ("features.2.0.block.3.1.running_mean", &[24]),
            ("features.3.1.block.1.0.weight", &[240, 1, 5, 5]),
            ("features.6.3.block.2.fc2.weight", &[1152, 48, 1, 1]),
            ("features.7.0.block.3.0.weight", &[320, 1152, 1, 1]),
            ("features.8.0.weight", &[1280, 320, 1, 1]),
            ("features.8.1.running_var", &[1280]),
            ("classifier.1.weight", &[10, 1280]),
            ("classifier.1.bias", &[10]),
        ];
        for (name, shape) in expected {
            assert_eq!(shape_of(name).as_deref(), Some(*shape), "{name}");
        }
        // State-dict order, as torchvision's ends.
        let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names[names.len() - 7..],
            [
                "features.8.0.weight",
                "features.8.1.weight",
                "features.8.1.bias",
                "features.8.1.running_mean",
                "features.8.1.running_var",
                "classifier.1.weight",
                "classifier.1.bias",
            ]
        );
        // The whole set: sorted `name:d0xd1x…` lines joined by newlines, hashed the same way
        // from torchvision's state dict.
        let mut lines: Vec<String> = params
            .iter()
            .map(|p| {
                let dims: Vec<String> = p.var.dims().iter().map(ToString::to_string).collect();
                format!("{}:{}", p.name, dims.join("x"))
            })
            .collect();
        lines.sort();
        assert_eq!(fnv1a(lines.join("\n").as_bytes()), 0xc2a0_69af_1a2b_d9d2);
        // Kinds: buffers for running statistics, the head for the classifier.
        for p in params.iter() {
            let kind = if p.name.ends_with("running_mean") || p.name.ends_with("running_var") {
                ParamKind::Buffer
            } else if p.name.starts_with("classifier.") {
                ParamKind::Head
            } else if p.var.rank() == 1 && !p.name.contains(".fc") {
                ParamKind::Norm
            } else if p.var.rank() == 1 {
                ParamKind::Bias
            } else {
                ParamKind::Weight
            };
            assert_eq!(p.kind, kind, "{}", p.name);
        }
        Ok(())
    }

    #[test]
    fn stages_scale_as_torchvision() {
        // [(c.expand_ratio, c.kernel, c.stride, c.input_channels, c.out_channels,
        //   c.num_layers) for c in _efficientnet_conf(..., width_mult=w, depth_mult=d)[0]]
        let table = |cfg: &EfficientNetConfig| -> Vec<StageRow> {
            cfg.stages()
                .iter()
                .map(|s| {
                    (
                        s.expand_ratio,
                        s.kernel,
                        s.stride,
                        s.c_in,
                        s.c_out,
                        s.layers,
                    )
                })
                .collect()
        };
        let cases: &[(f64, f64, [StageRow; 7], usize)] = &[
            (1.0, 1.0, B0_STAGES, 1280),
            (
                1.1,
                1.2,
                [
                    (1, 3, 1, 32, 16, 2),
                    (6, 3, 2, 16, 24, 3),
                    (6, 5, 2, 24, 48, 3),
                    (6, 3, 2, 48, 88, 4),
                    (6, 5, 1, 88, 120, 4),
                    (6, 5, 2, 120, 208, 5),
                    (6, 3, 1, 208, 352, 2),
                ],
                1408,
            ),
            (
                1.4,
                1.8,
                [
                    (1, 3, 1, 48, 24, 2),
                    (6, 3, 2, 24, 32, 4),
                    (6, 5, 2, 32, 56, 4),
                    (6, 3, 2, 56, 112, 6),
                    (6, 5, 1, 112, 160, 6),
                    (6, 5, 2, 160, 272, 8),
                    (6, 3, 1, 272, 448, 2),
                ],
                1792,
            ),
            (
                0.25,
                0.25,
                [
                    (1, 3, 1, 8, 8, 1),
                    (6, 3, 2, 8, 8, 1),
                    (6, 5, 2, 8, 16, 1),
                    (6, 3, 2, 16, 24, 1),
                    (6, 5, 1, 24, 32, 1),
                    (6, 5, 2, 32, 48, 1),
                    (6, 3, 1, 48, 80, 1),
                ],
                320,
            ),
        ];
        for &(w, d, stages, head) in cases {
            let cfg = EfficientNetConfig::scaled(w, d, 10);
            assert_eq!(table(&cfg), stages.to_vec(), "width {w}, depth {d}");
            assert_eq!(cfg.stem_channels(), stages[0].3, "width {w}");
            assert_eq!(cfg.head_channels(), head, "width {w}");
        }
        assert_eq!(
            EfficientNetConfig::b0(10),
            EfficientNetConfig {
                width_mult: 1.0,
                depth_mult: 1.0,
                classes: 10,
                dropout: 0.2,
                stochastic_depth: 0.2,
                bn_eps: 1e-3,
                bn_momentum: 0.01,
            }
        );
    }

    #[test]
    fn stochastic_depth_and_residuals_follow_torchvision() -> TestResult {
        let net = EfficientNet::new(
            &mut Builder::new(0, &Device::Cpu),
            &EfficientNetConfig::b0(10),
        )?;
        assert_eq!(net.blocks.len(), 16);
        // features.1.0 → 0, features.6.3 → 0.2·14/16, features.7.0 → 0.2·15/16.
        assert_eq!(net.blocks[0].sd_prob, 0.0);
        assert!((net.blocks[14].sd_prob - 0.175).abs() < 1e-7);
        assert!((net.blocks[15].sd_prob - 0.1875).abs() < 1e-7);
        // Residual blocks: every block but each stage's first (which changes the stride or
        // the width; features.1.0 maps 32 → 16 channels).
        let residual: Vec<usize> = net
            .blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| b.residual)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(residual, [2, 4, 6, 7, 9, 10, 12, 13, 14]);
        Ok(())
    }

    #[test]
    fn rejects_bad_configs() {
        let bad = [
            EfficientNetConfig::b0(0),
            EfficientNetConfig::scaled(0.0, 1.0, 10),
            EfficientNetConfig::scaled(1.0, f64::NAN, 10),
            EfficientNetConfig {
                dropout: 1.0,
                ..EfficientNetConfig::b0(10)
            },
            EfficientNetConfig {
                stochastic_depth: -0.1,
                ..EfficientNetConfig::b0(10)
            },
        ];
        for cfg in bad {
            assert!(
                matches!(build(cfg.clone()), Err(ModelError::BadConfig { .. })),
                "{cfg:?}"
            );
        }
    }

    #[test]
    fn forward_train_and_eval() -> TestResult {
        let model = tiny()?;
        let x = images(2, 32, 1)?;
        let eval1 = model.forward(&x, &mut ForwardCtx::eval(DType::F32))?;
        let eval2 = model.forward(&x, &mut ForwardCtx::eval(DType::F32))?;
        assert_eq!(eval1.dims(), [2, 10]);
        assert_eq!(
            eval1.flatten_all()?.to_vec1::<f32>()?,
            eval2.flatten_all()?.to_vec1::<f32>()?
        );

        let train1 = model.forward(&x, &mut ForwardCtx::train(DType::F32, 1))?;
        let train2 = model.forward(&x, &mut ForwardCtx::train(DType::F32, 2))?;
        assert_eq!(train1.dims(), [2, 10]);
        let (t1, t2) = (
            train1.flatten_all()?.to_vec1::<f32>()?,
            train2.flatten_all()?.to_vec1::<f32>()?,
        );
        assert_ne!(t1, t2, "dropout masks should differ between seeds");
        for v in eval1
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .chain(&t1)
            .chain(&t2)
        {
            assert!(v.is_finite());
        }
        // Training moved the running statistics, so evaluation changes too.
        let eval3 = model.forward(&x, &mut ForwardCtx::eval(DType::F32))?;
        assert_ne!(
            eval1.flatten_all()?.to_vec1::<f32>()?,
            eval3.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn kernel_paths_agree() -> TestResult {
        let model = tiny()?;
        let x = images(2, 32, 3)?;
        let annt = model.forward(&x, &mut ForwardCtx::eval(DType::F32))?;
        let stock = model.forward(
            &x,
            &mut ForwardCtx::eval(DType::F32).with_kernels(Kernels::CandleStock),
        )?;
        let diff = (annt - stock)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "annt and Candle convolutions differ by {diff}");
        Ok(())
    }

    #[test]
    fn backward_reaches_every_parameter() -> TestResult {
        let model = tiny()?;
        let x = images(2, 32, 2)?;
        let logits = model.forward(&x, &mut ForwardCtx::train(DType::F32, 7))?;
        let grads = logits.sqr()?.sum_all()?.backward()?;
        let mut checked = 0;
        for p in model.params().trainable() {
            let g = grads
                .get(p.var.as_tensor())
                .ok_or_else(|| format!("no gradient for {}", p.name))?;
            assert_eq!(g.dims(), p.var.dims(), "{}", p.name);
            let norm = g.abs()?.sum_all()?.to_scalar::<f32>()?;
            assert!(
                norm.is_finite() && norm > 0.0,
                "{}: gradient norm {norm}",
                p.name
            );
            checked += 1;
        }
        assert_eq!(
            checked,
            model
                .params()
                .iter()
                .filter(|p| p.kind != ParamKind::Buffer)
                .count()
        );
        for p in model
            .params()
            .iter()
            .filter(|p| p.kind == ParamKind::Buffer)
        {
            assert!(
                grads.get(p.var.as_tensor()).is_none(),
                "{} is a buffer",
                p.name
            );
        }
        Ok(())
    }
}
