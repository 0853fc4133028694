//! The Vision Transformer as torchvision's `VisionTransformer` builds it: a strided
//! convolution cuts the image into `patch × patch` patches, a learned class token is
//! prepended and learned position embeddings added, then `depth` pre-norm encoder blocks
//! (layer norm → multi-head self-attention, layer norm → GELU MLP, each residual), a final
//! layer norm, and a linear head on the class token.
//!
//! Parameter names, shapes and initialisers follow torchvision exactly, so its pretrained
//! state dicts load one-to-one ([`super::weights`]); a checkpoint made for another
//! resolution needs its position grid resampled ([`interpolate_pos_grid`]).

use candle_core::{Result, Tensor, Var, bail};

use super::Network;
use super::error::ModelError;
use super::layers::activation::{dropout, gelu};
use super::layers::attention::SelfAttention;
use super::layers::conv::{Conv2d, ConvBias, ConvInit, ConvSpec};
use super::layers::custom::attach2;
use super::layers::encoder::{EncoderLayers, encoder_block};
use super::layers::linear::{Linear, add_bias};
use super::layers::norm::LayerNorm;
use super::layers::{ForwardCtx, tape};
use super::params::{Builder, Init, ParamKind, join};

/// torchvision builds every ViT layer norm with `eps = 1e-6` (not PyTorch's 1e-5 default).
const LN_EPS: f64 = 1e-6;

/// The shape of a ViT. The named sizes are the paper's (B) and DeiT's (S, Ti) widths, all
/// 12 layers deep with an MLP four times as wide as the model.
#[derive(Clone, Debug, PartialEq)]
pub struct VitConfig {
    /// Input resolution (square images); fixes the number of position embeddings.
    pub image: usize,
    /// Patch side: the stem convolution's kernel and stride.
    pub patch: usize,
    /// Token width (torchvision's `hidden_dim`).
    pub dim: usize,
    /// Number of encoder blocks.
    pub depth: usize,
    /// Attention heads per block; must divide `dim`.
    pub heads: usize,
    /// Hidden width of each block's MLP.
    pub mlp_dim: usize,
    pub classes: usize,
    /// Dropout after the position embedding, after attention and inside the MLP
    /// (torchvision's `dropout`, 0 by default).
    pub dropout: f32,
}

impl VitConfig {
    fn sized(
        patch: usize,
        image: usize,
        classes: usize,
        dim: usize,
        heads: usize,
        mlp_dim: usize,
    ) -> Self {
        Self {
            image,
            patch,
            dim,
            depth: 12,
            heads,
            mlp_dim,
            classes,
            dropout: 0.0,
        }
    }

    /// ViT-Base: width 768, 12 heads, MLP 3072.
    pub fn b(patch: usize, image: usize, classes: usize) -> Self {
        Self::sized(patch, image, classes, 768, 12, 3072)
    }

    /// ViT-Small: width 384, 6 heads, MLP 1536.
    pub fn s(patch: usize, image: usize, classes: usize) -> Self {
        Self::sized(patch, image, classes, 384, 6, 1536)
    }

    /// ViT-Tiny: width 192, 3 heads, MLP 768.
    pub fn ti(patch: usize, image: usize, classes: usize) -> Self {
        Self::sized(patch, image, classes, 192, 3, 768)
    }

    /// Patches along each side of the image.
    pub fn grid(&self) -> usize {
        self.image.checked_div(self.patch).unwrap_or(0)
    }

    /// Tokens per image: the patches plus the class token.
    pub fn seq_len(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    fn validate(&self) -> std::result::Result<(), ModelError> {
        let bad = |detail: String| {
            Err(ModelError::BadConfig {
                model: "vit".into(),
                detail,
            })
        };
        if self.patch == 0 || self.image == 0 || !self.image.is_multiple_of(self.patch) {
            return bad(format!(
                "{}-px images in {}-px patches (the patch must divide the image)",
                self.image, self.patch
            ));
        }
        if self.dim == 0 || self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
            return bad(format!(
                "{} heads for width {} (the heads must divide the width)",
                self.heads, self.dim
            ));
        }
        if self.mlp_dim == 0 || self.classes == 0 {
            return bad(format!(
                "MLP width {} and {} classes (both must be positive)",
                self.mlp_dim, self.classes
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} (must be in [0, 1))", self.dropout));
        }
        Ok(())
    }
}

/// One pre-norm encoder block (torchvision's `EncoderBlock`). The MLP's linears keep
/// `nn.Sequential`'s indices: `mlp.0` (widen), GELU at 1, dropout at 2, `mlp.3` (narrow),
/// dropout at 4.
struct EncoderBlock {
    ln_1: LayerNorm,
    self_attention: SelfAttention,
    ln_2: LayerNorm,
    mlp_0: Linear,
    mlp_3: Linear,
}

impl EncoderBlock {
    fn new(b: &mut Builder, name: &str, cfg: &VitConfig) -> std::result::Result<Self, ModelError> {
        let (d, m) = (cfg.dim, cfg.mlp_dim);
        // torchvision's `MLPBlock` init: Xavier-uniform weights, biases N(0, 1e-6²).
        let xavier = (6.0 / (d + m) as f32).sqrt();
        let mlp = |b: &mut Builder, n: &str, d_in, d_out| {
            Linear::with_init(
                b,
                &join(name, n),
                d_in,
                d_out,
                ParamKind::Weight,
                Init::Uniform(xavier),
                Init::Normal(1e-6),
            )
        };
        Ok(Self {
            ln_1: LayerNorm::new(b, &join(name, "ln_1"), d, LN_EPS)?,
            self_attention: SelfAttention::new(b, &join(name, "self_attention"), d, cfg.heads)?,
            ln_2: LayerNorm::new(b, &join(name, "ln_2"), d, LN_EPS)?,
            mlp_0: mlp(b, "mlp.0", d, m)?,
            mlp_3: mlp(b, "mlp.3", m, d)?,
        })
    }

    /// `x`: `n × s × d` → `n × s × d`.
    fn forward(&self, x: &Tensor, p: f32, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let layers = EncoderLayers {
            ln_1: &self.ln_1,
            attention: &self.self_attention,
            ln_2: &self.ln_2,
            mlp_0: &self.mlp_0,
            mlp_3: &self.mlp_3,
        };
        if let Some(y) = encoder_block(x, &layers, p, ctx)? {
            return Ok(y);
        }
        let products = ctx.products;
        let attn = self
            .self_attention
            .forward_with(&self.ln_1.forward(x)?, products)?;
        let x = (x + dropout(&attn, p, ctx)?)?;
        let h = gelu(&self.mlp_0.forward_with(&self.ln_2.forward(&x)?, products)?)?;
        let h = dropout(&h, p, ctx)?;
        let h = dropout(&self.mlp_3.forward_with(&h, products)?, p, ctx)?;
        x + h
    }
}

/// A Vision Transformer with torchvision's state-dict layout.
pub struct Vit {
    cfg: VitConfig,
    class_token: Var,
    conv_proj: Conv2d,
    pos_embedding: Var,
    layers: Vec<EncoderBlock>,
    ln: LayerNorm,
    head: Linear,
}

impl Vit {
    /// Creates the tensors in torchvision's state-dict order with torchvision's
    /// initialisation: LeCun truncated-normal patch projection with a zero bias, zero class
    /// token, N(0, 0.02²) position embeddings, PyTorch's `MultiheadAttention` defaults,
    /// Xavier MLPs, and a zero head (so a fresh model starts from uniform predictions).
    pub fn new(b: &mut Builder, cfg: &VitConfig) -> std::result::Result<Self, ModelError> {
        cfg.validate()?;
        let d = cfg.dim;
        let class_token = b.tensor("class_token", &[1, 1, d], Init::Zeros, ParamKind::Weight)?;
        let spec = ConvSpec::new(cfg.patch, 0);
        let conv_proj = Conv2d::new(
            b,
            "conv_proj",
            3,
            d,
            cfg.patch,
            spec,
            ConvBias::With,
            ConvInit::LecunTrunc,
        )?;
        let pos_embedding = b.tensor(
            "encoder.pos_embedding",
            &[1, cfg.seq_len(), d],
            Init::Normal(0.02),
            ParamKind::Weight,
        )?;
        let layers = (0..cfg.depth)
            .map(|i| EncoderBlock::new(b, &format!("encoder.layers.encoder_layer_{i}"), cfg))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let ln = LayerNorm::new(b, "encoder.ln", d, LN_EPS)?;
        let head = Linear::with_init(
            b,
            "heads.head",
            d,
            cfg.classes,
            ParamKind::Head,
            Init::Zeros,
            Init::Zeros,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            class_token,
            conv_proj,
            pos_embedding,
            layers,
            ln,
            head,
        })
    }

    /// Images `n × 3 × image × image` → tokens `n × seq_len × dim`: patch projection, class
    /// token in front, position embeddings added.
    fn embed(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let (n, _, h, w) = x.dims4()?;
        let image = self.cfg.image;
        if h != image || w != image {
            // torchvision asserts this too: the position embeddings fix the resolution.
            bail!("vit: expected {image}×{image} images, got {h}×{w}");
        }
        let (d, g) = (self.cfg.dim, self.cfg.grid());
        let patches = tape::reshape(&self.conv_proj.forward(x, ctx)?, (n, d, g * g))?;
        let tokens = tokens(
            &patches,
            &self.class_token.as_tensor().to_dtype(patches.dtype())?,
        )?;
        // The position embeddings as a bias over the flattened tokens: one pass, and a
        // parallel sum over the batch for their gradient.
        let s = tokens.dim(1)?;
        let pos = tape::reshape(self.pos_embedding.as_tensor(), s * d)?;
        let flat = add_bias(&tape::reshape(&tokens, (n, s * d))?, &pos, 1)?;
        tape::reshape(&flat, (n, s, d))
    }
}

impl Network for Vit {
    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let p = self.cfg.dropout;
        let mut y = dropout(&self.embed(x, ctx)?, p, ctx)?;
        for layer in &self.layers {
            y = layer.forward(&y, p, ctx)?;
        }
        let y = self.ln.forward(&y)?;
        let (n, _, d) = y.dims3()?;
        self.head
            .forward(&tape::reshape(&tape::narrow(&y, 1, 0, 1)?, (n, d))?)
    }
}

/// The class token before each image's patch tokens: `n × d × g²` patches (as the patch
/// convolution gives them) and the `1 × 1 × d` token → `n × (1 + g²) × d` tokens. One
/// attached node (the transpose, broadcast and concatenation as Candle ops would be four
/// nodes outside annt's tape): the token's gradient is the sum over images of the first
/// row's, the patches' the rest transposed back.
fn tokens(patches: &Tensor, class_token: &Tensor) -> Result<Tensor> {
    let (n, d, p) = patches.dims3()?;
    let (pd, cd) = (patches.detach(), class_token.detach());
    let value = Tensor::cat(
        &[
            &cd.broadcast_as((n, 1, d))?.contiguous()?,
            &pd.transpose(1, 2)?.contiguous()?,
        ],
        1,
    )?;
    attach2(
        "annt-vit-tokens",
        patches,
        class_token,
        value,
        Box::new(move |_p, _c, g| {
            let g_patches = g.narrow(1, 1, p)?.transpose(1, 2)?.contiguous()?;
            let g_token = g.narrow(1, 0, 1)?.sum_keepdim(0)?;
            Ok((g_patches, g_token))
        }),
    )
}

/// Resamples a position-embedding grid (without the class token row) from `from_grid`² to
/// `to_grid`² positions, bicubic (PyTorch's a = -0.75, align_corners=false, border clamped),
/// `dim` channels, row-major `[pos][dim]` in and out.
///
/// This is `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)` on the
/// grid seen as a `dim × from_grid × from_grid` image, without antialiasing; it lets a
/// checkpoint trained at one resolution start a model at another. The grid is expected to
/// hold `from_grid² · dim` values; missing ones read as zero.
pub fn interpolate_pos_grid(
    grid: &[f32],
    from_grid: usize,
    to_grid: usize,
    dim: usize,
) -> Vec<f32> {
    if from_grid == 0 || to_grid == 0 || dim == 0 {
        return vec![0.0; to_grid * to_grid * dim];
    }
    // Bicubic is separable: the same four taps and weights serve rows and columns.
    let taps: Vec<([usize; 4], [f64; 4])> = (0..to_grid)
        .map(|o| cubic_taps(o, from_grid, to_grid))
        .collect();
    let at = |pos: usize, c: usize| f64::from(grid.get(pos * dim + c).copied().unwrap_or(0.0));
    let mut out = vec![0.0f32; to_grid * to_grid * dim];
    for (oy, (ys, wys)) in taps.iter().enumerate() {
        for (ox, (xs, wxs)) in taps.iter().enumerate() {
            let row = &mut out[(oy * to_grid + ox) * dim..][..dim];
            for (c, v) in row.iter_mut().enumerate() {
                let mut acc = 0.0;
                for (&y, &wy) in ys.iter().zip(wys) {
                    for (&x, &wx) in xs.iter().zip(wxs) {
                        acc += wy * wx * at(y * from_grid + x, c);
                    }
                }
                *v = acc as f32;
            }
        }
    }
    out
}

/// The four source indices (clamped to the border) and weights for output index `o` when
/// resizing `from` samples to `to` with half-pixel centres, as PyTorch's `upsample_bicubic2d`.
fn cubic_taps(o: usize, from: usize, to: usize) -> ([usize; 4], [f64; 4]) {
    const A: f64 = -0.75;
    let scale = from as f64 / to as f64;
    // PyTorch does not clamp the source coordinate at 0 for cubic (it does for linear).
    let src = (o as f64 + 0.5) * scale - 0.5;
    let base = src.floor();
    let t = src - base;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
    let last = (from - 1) as i64;
    let idx = |k: i64| (base as i64 - 1 + k).clamp(0, last) as usize;
    ([idx(0), idx(1), idx(2), idx(3)], weights)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::models::layers::loss::cross_entropy;
    use crate::models::{Architecture, Model};
    use crate::util::rng::Rng;

    fn tiny() -> VitConfig {
        VitConfig {
            image: 32,
            patch: 8,
            dim: 16,
            depth: 2,
            heads: 2,
            mlp_dim: 32,
            classes: 10,
            dropout: 0.0,
        }
    }

    fn build(cfg: VitConfig, seed: u64) -> Model {
        Model::build_arch(
            "vit-test",
            Architecture::Vit(cfg),
            Builder::new(seed, &Device::Cpu),
        )
        .expect("build")
    }

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = Rng::new(seed);
        let len: usize = shape.iter().product();
        let values: Vec<f32> = (0..len).map(|_| rng.normal()).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor")
    }

    /// Counts from `sum(p.numel() for p in VisionTransformer(224, 16, 12, 12, 768, 3072,
    /// num_classes=k).parameters())`. Building ViT-B (86 M values) takes well under a second
    /// in the dev profile.
    #[test]
    fn vit_b16_param_count_matches_torchvision() {
        let model = build(VitConfig::b(16, 224, 10), 0);
        assert_eq!(model.param_count(), 85_806_346);
        assert_eq!(
            model
                .params()
                .get("heads.head.weight")
                .expect("head")
                .var
                .dims(),
            &[10, 768]
        );
        drop(model);
        assert_eq!(
            build(VitConfig::b(16, 224, 100), 0).param_count(),
            85_875_556
        );
    }

    /// Names, shapes and order equal torchvision's
    /// `VisionTransformer(224, 16, 12, 3, 192, 768, num_classes=10).state_dict()`.
    #[test]
    fn ti16_names_and_shapes_match_torchvision() {
        let model = build(VitConfig::ti(16, 224, 10), 0);
        let params: Vec<_> = model.params().iter().collect();
        assert_eq!(params.len(), 152);
        assert_eq!(model.param_count(), 5_526_346);
        assert_eq!(params[0].name, "class_token");
        assert_eq!(params[1].name, "conv_proj.weight");
        assert_eq!(params[3].name, "encoder.pos_embedding");
        assert_eq!(params[4].name, "encoder.layers.encoder_layer_0.ln_1.weight");
        assert_eq!(params[151].name, "heads.head.bias");
        let expect = [
            ("class_token", vec![1, 1, 192], ParamKind::Weight),
            ("conv_proj.weight", vec![192, 3, 16, 16], ParamKind::Weight),
            ("conv_proj.bias", vec![192], ParamKind::Bias),
            (
                "encoder.pos_embedding",
                vec![1, 197, 192],
                ParamKind::Weight,
            ),
            (
                "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
                vec![576, 192],
                ParamKind::Weight,
            ),
            (
                "encoder.layers.encoder_layer_0.self_attention.in_proj_bias",
                vec![576],
                ParamKind::Bias,
            ),
            (
                "encoder.layers.encoder_layer_0.self_attention.out_proj.weight",
                vec![192, 192],
                ParamKind::Weight,
            ),
            (
                "encoder.layers.encoder_layer_0.ln_2.bias",
                vec![192],
                ParamKind::Norm,
            ),
            (
                "encoder.layers.encoder_layer_0.mlp.0.weight",
                vec![768, 192],
                ParamKind::Weight,
            ),
            (
                "encoder.layers.encoder_layer_0.mlp.0.bias",
                vec![768],
                ParamKind::Bias,
            ),
            (
                "encoder.layers.encoder_layer_11.mlp.3.weight",
                vec![192, 768],
                ParamKind::Weight,
            ),
            (
                "encoder.layers.encoder_layer_11.mlp.3.bias",
                vec![192],
                ParamKind::Bias,
            ),
            ("encoder.ln.weight", vec![192], ParamKind::Norm),
            ("heads.head.weight", vec![10, 192], ParamKind::Head),
            ("heads.head.bias", vec![10], ParamKind::Head),
        ];
        for (name, shape, kind) in expect {
            let p = model
                .params()
                .get(name)
                .unwrap_or_else(|| panic!("missing {name}"));
            assert_eq!(p.var.dims(), shape.as_slice(), "{name}");
            assert_eq!(p.kind, kind, "{name}");
        }
        assert!(
            model.params().iter().all(|p| p.kind.is_trainable()),
            "a ViT has no buffers"
        );
    }

    #[test]
    fn init_follows_torchvision() {
        let model = build(
            VitConfig {
                depth: 1,
                ..VitConfig::ti(16, 64, 10)
            },
            3,
        );
        let values = |name: &str| -> Vec<f32> {
            let p = model
                .params()
                .get(name)
                .unwrap_or_else(|| panic!("missing {name}"));
            p.var
                .as_tensor()
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .expect("values")
        };
        let std = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        for zero in [
            "class_token",
            "conv_proj.bias",
            "heads.head.weight",
            "heads.head.bias",
        ] {
            assert!(values(zero).iter().all(|&v| v == 0.0), "{zero}");
        }
        let pos = values("encoder.pos_embedding");
        assert!((std(&pos) - 0.02).abs() < 0.002, "{}", std(&pos));
        // torchvision's `trunc_normal_(std=σ)` cuts at ±2 absolute (≈ ±55σ here: a plain
        // normal); the layer's `LecunTrunc` cuts at ±2σ, which shrinks the std to 0.88σ.
        // Either is accepted here.
        let conv = values("conv_proj.weight");
        let lecun = (1.0f32 / (3 * 16 * 16) as f32).sqrt();
        let ratio = std(&conv) / lecun;
        assert!(
            (0.85..1.05).contains(&ratio),
            "conv_proj std {ratio} × the LeCun std"
        );
        let xavier = (6.0f32 / (192 + 768) as f32).sqrt();
        let w = values("encoder.layers.encoder_layer_0.mlp.0.weight");
        assert!(w.iter().all(|v| v.abs() <= xavier) && w.iter().any(|v| v.abs() > 0.9 * xavier));
        let bias = values("encoder.layers.encoder_layer_0.mlp.3.bias");
        assert!(bias.iter().all(|v| v.abs() < 1e-5) && bias.iter().any(|&v| v != 0.0));
    }

    #[test]
    fn bad_configs_are_errors() {
        let mut b = Builder::new(0, &Device::Cpu);
        let patch = VitConfig { patch: 5, ..tiny() };
        assert!(matches!(
            Vit::new(&mut b, &patch),
            Err(ModelError::BadConfig { .. })
        ));
        let heads = VitConfig { heads: 3, ..tiny() };
        assert!(matches!(
            Vit::new(&mut b, &heads),
            Err(ModelError::BadConfig { .. })
        ));
        assert_eq!(tiny().grid(), 4);
        assert_eq!(tiny().seq_len(), 17);
        assert_eq!(VitConfig::b(16, 224, 10).seq_len(), 197);
    }

    #[test]
    fn forward_gives_finite_logits_in_train_and_eval() {
        let model = build(
            VitConfig {
                dropout: 0.1,
                ..tiny()
            },
            1,
        );
        // A zero head gives all-zero logits; random values make the check meaningful.
        let head = model.params().get("heads.head.weight").expect("head");
        head.var
            .set(&(randn(&[10, 16], 5) * 0.1).expect("scale"))
            .expect("set");
        let x = randn(&[2, 3, 32, 32], 2);
        let train = model
            .forward(&x, &mut ForwardCtx::train(DType::F32, 7))
            .expect("train forward");
        let eval = model
            .forward(&x, &mut ForwardCtx::eval(DType::F32))
            .expect("eval forward");
        for logits in [&train, &eval] {
            assert_eq!(logits.dims(), &[2, 10]);
            let v: Vec<f32> = logits
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .expect("values");
            assert!(v.iter().all(|x| x.is_finite()));
            assert!(v.iter().any(|&x| x != 0.0));
        }
        // Dropout makes training differ from evaluation; evaluation is deterministic.
        let again = model
            .forward(&x, &mut ForwardCtx::eval(DType::F32))
            .expect("eval forward");
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b)
                .and_then(|d| d.abs()?.sum_all()?.to_scalar::<f32>())
                .expect("diff")
        };
        assert!(diff(&train, &eval) > 0.0);
        assert_eq!(diff(&eval, &again), 0.0);
    }

    /// Mixed precision: f32 master weights, half-precision activations, f32 logits.
    #[test]
    fn half_precision_forward_is_close_to_f32() {
        let model = build(tiny(), 1);
        let head = model.params().get("heads.head.weight").expect("head");
        head.var.set(&randn(&[10, 16], 5)).expect("set");
        let x = randn(&[2, 3, 32, 32], 2);
        let full = model
            .forward(&x, &mut ForwardCtx::eval(DType::F32))
            .expect("f32 forward");
        for dtype in [DType::BF16, DType::F16] {
            let half = model
                .forward(&x, &mut ForwardCtx::eval(dtype))
                .expect("half forward");
            assert_eq!(half.dtype(), DType::F32);
            let err = (&half - &full)
                .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
                .expect("diff");
            assert!(err < 0.1, "{dtype:?}: max error {err}");
            let floor = if dtype == DType::BF16 { 1e-4 } else { 1e-5 };
            assert!(
                err > floor,
                "{dtype:?}: max error {err}: the forward did not run in half precision"
            );
        }
    }

    #[test]
    fn wrong_input_size_is_an_error() {
        let model = build(tiny(), 1);
        let x = randn(&[2, 3, 40, 40], 2);
        assert!(
            model
                .forward(&x, &mut ForwardCtx::eval(DType::F32))
                .is_err()
        );
        let x = randn(&[2, 3, 32, 24], 2);
        assert!(
            model
                .forward(&x, &mut ForwardCtx::eval(DType::F32))
                .is_err()
        );
    }

    #[test]
    fn every_trainable_tensor_gets_a_gradient() {
        let model = build(tiny(), 4);
        // The zero-initialised head would block every gradient but its own bias's.
        let head = model.params().get("heads.head.weight").expect("head");
        head.var.set(&randn(&[10, 16], 9)).expect("set");
        let x = randn(&[2, 3, 32, 32], 3);
        let labels = Tensor::new(&[3u32, 7], &Device::Cpu).expect("labels");
        let logits = model
            .forward(&x, &mut ForwardCtx::train(DType::F32, 11))
            .expect("forward");
        let loss = cross_entropy(&logits, &labels, 0.0).expect("loss");
        let grads = loss.backward().expect("backward");
        let mut checked = 0;
        for p in model.params().trainable() {
            let g = grads
                .get(p.var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {}", p.name));
            let norm = g
                .abs()
                .and_then(|a| a.sum_all()?.to_scalar::<f32>())
                .expect("norm");
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{}: gradient norm {norm}",
                p.name
            );
            checked += 1;
        }
        assert_eq!(checked, 4 + 2 * 12 + 2 + 2);
    }

    /// Every tensor set to `0.2·sin(0.7·e + 1.3·j + 0.5)` (`j`: index in the state dict,
    /// `e`: element), images to `sin(0.05·e)`; the logits are torchvision's
    /// `VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=10).double().eval()` on the same.
    #[test]
    fn eval_forward_matches_torchvision() {
        let b = Builder::new(0, &Device::Cpu).with_dtype(DType::F64);
        let model = Model::build_arch("vit-test", Architecture::Vit(tiny()), b).expect("build");
        assert_eq!(model.params().len(), 32);
        for (j, p) in model.params().iter().enumerate() {
            let values: Vec<f64> = (0..p.var.elem_count())
                .map(|e| 0.2 * (0.7 * e as f64 + 1.3 * j as f64 + 0.5).sin())
                .collect();
            let t = Tensor::from_vec(values, p.var.shape(), &Device::Cpu).expect("tensor");
            p.var.set(&t).expect("set");
        }
        let x: Vec<f64> = (0..2 * 3 * 32 * 32)
            .map(|e| (0.05 * e as f64).sin())
            .collect();
        let x = Tensor::from_vec(x, (2, 3, 32, 32), &Device::Cpu).expect("input");
        let logits = model
            .forward(&x, &mut ForwardCtx::eval(DType::F64))
            .expect("forward");
        let got: Vec<f64> = logits
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("values");
        let want = [
            0.041963742003,
            0.321447996282,
            -0.049116391306,
            -0.561116879071,
            -0.377152045439,
            0.324151491656,
            0.578964569285,
            0.102141498932,
            -0.315179900911,
            -0.081264750077,
            0.041522512373,
            0.320811845287,
            -0.048933445169,
            -0.560406450163,
            -0.377046550529,
            0.323483894708,
            0.578588023520,
            0.102656214636,
            -0.314594375564,
            -0.081541736795,
        ];
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-9, "logit {i}: {g} vs {w}");
        }
    }

    fn test_grid(grid: usize, dim: usize) -> Vec<f32> {
        (0..grid * grid)
            .flat_map(|p| (0..dim).map(move |c| ((p * p * 3 + c * 5) % 11) as f32 - 5.0))
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-5, "element {i}: {g} vs {w}");
        }
    }

    /// Expected values from `torch.nn.functional.interpolate(img, size=5, mode="bicubic",
    /// align_corners=False)` on the 2 × 3 × 3 image of [`test_grid`], in [pos][dim] order.
    #[test]
    fn interpolate_upsamples_like_torch() {
        let want = [
            -5.804864, -0.804864, -3.974624, 0.949344, -2.096, 2.904, -3.487616, 2.158656,
            -5.024512, 1.132864, -3.514656, 2.353376, -2.74672, 3.102304, -1.612, 3.388, -0.87256,
            0.973696, -0.511616, -1.057376, 0.096, 5.096, -0.748, 5.044, -1.0, 4.0, 1.988, 0.256,
            4.48, -2.576, 3.166656, 0.788384, 1.1384, 2.382736, -0.928, 4.072, 0.67328, 3.061264,
            2.421376, 1.875616, 4.900864, -3.312512, 2.250656, -0.203648, -1.0, 4.0, -1.010656,
            5.503648, -0.324864, 5.832512,
        ];
        assert_close(&interpolate_pos_grid(&test_grid(3, 2), 3, 5, 2), &want);
    }

    /// As above, 2 × 4 × 4 → 2 × 2 × 2 (downsampling without antialiasing).
    #[test]
    fn interpolate_downsamples_like_torch() {
        let want = [
            -0.5605469, 1.1738281, 0.1074219, 1.8417969, -3.1269531, 2.3886719, -2.1699219,
            3.3457031,
        ];
        assert_close(&interpolate_pos_grid(&test_grid(4, 2), 4, 2, 2), &want);
    }

    #[test]
    fn interpolate_to_the_same_size_is_the_identity() {
        let grid = test_grid(4, 3);
        assert_close(&interpolate_pos_grid(&grid, 4, 4, 3), &grid);
    }
}
