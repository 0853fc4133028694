//! 2-D convolution (regular and depthwise) with a fast backward pass.
//!
//! On the CPU, annt's path ([`kernels_cpu::conv_forward`], [`kernels_cpu::conv_backward`])
//! works one image at a time: it unfolds the image's patches into a cache-sized matrix and
//! multiplies it by the weight straight into the NCHW output; the backward pass rebuilds the
//! patches and does two more products per image plus a fold, so the input gradient costs
//! what the forward costs instead of Candle's naive transposed convolution, and no
//! batch-sized patch matrix is ever held. Depthwise convolutions get direct kernels instead
//! of Candle's one-conv-per-channel loop. [`Kernels::CandleStock`] selects Candle's own
//! `conv2d` (and its backward) — the reference the tests and the benchmark compare against.
//! On CUDA (the `cudnn` build) convolutions and both gradients run on cuDNN
//! (`kernels::cuda::conv`); [`super::kernels::Backend`] decides, once per call.

use candle_core::{DType, Result, Tensor, bail};

use super::Kernels;
use super::custom::{attach2, map_real_n, map_real2, raw2};
use super::kernels::{Backend, Products, Window, cpu as kernels_cpu};

pub use super::kernels::ConvSpec;

/// `x`: `n × c × h × w`; `w`: `c_out × c/groups × kh × kw` → `n × c_out × oh × ow`.
///
/// Half-precision inputs on the CPU are computed in f32 and rounded back, which is what a
/// tensor core does (half inputs, f32 accumulation); Candle's CPU matmul has no bf16 at all.
pub fn conv2d(x: &Tensor, w: &Tensor, spec: ConvSpec, kernels: Kernels) -> Result<Tensor> {
    conv2d_with(x, w, spec, kernels, Products::Native)
}

/// [`conv2d`] with the CPU's dense convolutions' matrix products in `products` (bf16 units
/// under `--amp bf16`; depthwise convolutions, which are no matrix product, stay f32).
pub fn conv2d_with(
    x: &Tensor,
    w: &Tensor,
    spec: ConvSpec,
    kernels: Kernels,
    products: Products,
) -> Result<Tensor> {
    let dtype = x.dtype();
    let w = w.to_dtype(dtype)?;
    let (_, c, _, _) = x.dims4()?;
    let (c_out, c_per_group, _, _) = w.dims4()?;
    if c != c_per_group * spec.groups {
        bail!(
            "conv2d: input has {c} channels, weight expects {c_per_group} × {} groups",
            spec.groups
        );
    }
    let backend = Backend::select(x.device(), kernels);
    match backend {
        Backend::Cpu if matches!(dtype, DType::F16 | DType::BF16) => conv2d_with(
            &x.to_dtype(DType::F32)?,
            &w.to_dtype(DType::F32)?,
            spec,
            kernels,
            products,
        )?
        .to_dtype(dtype),
        Backend::Cpu if spec.groups == 1 => dense(x, &w, spec, products),
        Backend::Cpu if spec.groups == c && c_out == c => depthwise(x, &w, spec),
        #[cfg(feature = "cudnn")]
        Backend::Cuda => super::kernels::cuda::conv::conv2d(x, &w, spec),
        // Candle's reference; also other group counts on the CPU (no model annt builds uses
        // them: Candle's loop is correct, just slow) and a `cuda` build without cuDNN.
        _ => x.conv2d(&w, spec.padding, spec.stride, 1, spec.groups),
    }
}

pub(super) fn window(x: &Tensor, w: &Tensor, spec: ConvSpec) -> Result<Window> {
    let (n, c, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    if h + 2 * spec.padding < kh || wd + 2 * spec.padding < kw || spec.stride == 0 {
        bail!(
            "conv2d: a {kh}×{kw} kernel does not fit a {h}×{wd} input with padding {}",
            spec.padding
        );
    }
    Ok(Window {
        n,
        c,
        h,
        w: wd,
        kh,
        kw,
        stride: spec.stride,
        pad: spec.padding,
    })
}

fn dense(x: &Tensor, w: &Tensor, spec: ConvSpec, products: Products) -> Result<Tensor> {
    let g = window(x, w, spec)?;
    let c_out = w.dim(0)?;
    let out_shape = (g.n, c_out, g.out_h(), g.out_w());
    let y = raw2(
        &x.detach(),
        &w.detach(),
        out_shape,
        |a, b| kernels_cpu::conv_forward(a, b, &g, c_out, products),
        |a, b| kernels_cpu::conv_forward(a, b, &g, c_out, products),
    )?;
    // The images a network starts from track no op: their gradient is never read, so the
    // first convolution's backward computes dW alone (and `attach2` hands Candle no dx).
    let want_dx = x.track_op();
    attach2(
        "annt-conv2d",
        x,
        w,
        y,
        Box::new(move |x, w, grad| {
            // One pass over the images gives both gradients, returned end to end.
            let (x_len, w_len) = (x.elem_count(), w.elem_count());
            let both = map_real_n(
                &[x, w, &grad.contiguous()?],
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
            let grad_x = both.narrow(0, 0, x_len)?.reshape(x.shape())?;
            let grad_w = both.narrow(0, x_len, w_len)?.reshape(w.shape())?;
            Ok((grad_x, grad_w))
        }),
    )
}

fn depthwise(x: &Tensor, w: &Tensor, spec: ConvSpec) -> Result<Tensor> {
    let g = window(x, w, spec)?;
    let out_shape = (g.n, g.c, g.out_h(), g.out_w());
    let y = raw2(
        &x.detach(),
        &w.detach(),
        out_shape,
        |a, b| kernels_cpu::depthwise_forward(a, b, &g),
        |a, b| kernels_cpu::depthwise_forward(a, b, &g),
    )?;
    attach2(
        "annt-depthwise-conv2d",
        x,
        w,
        y,
        Box::new(move |x, w, grad| {
            let grad_x = map_real2(
                grad,
                w,
                (g.n, g.c, g.h, g.w),
                |a, b| kernels_cpu::depthwise_grad_input(a, b, &g),
                |a, b| kernels_cpu::depthwise_grad_input(a, b, &g),
            )?;
            let grad_w = map_real2(
                x,
                grad,
                w.shape(),
                |a, b| kernels_cpu::depthwise_grad_weight(a, b, &g),
                |a, b| kernels_cpu::depthwise_grad_weight(a, b, &g),
            )?;
            Ok((grad_x, grad_w))
        }),
    )
}

/// A convolution layer with PyTorch's `weight` `[c_out, c_in/groups, k, k]` and optional
/// `bias`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub weight: candle_core::Var,
    pub bias: Option<candle_core::Var>,
    pub spec: ConvSpec,
}

/// Whether a convolution adds a per-channel bias (ResNets and EfficientNet's convolutions
/// that feed a batch norm have none: the norm's β takes its place).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvBias {
    With,
    Without,
}

/// How a convolution's weight is initialised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ConvInit {
    /// PyTorch's default: `U(±1/√fan_in)` (kaiming-uniform with a = √5), bias likewise.
    Default,
    /// Kaiming normal, fan-out mode, gain √2 (torchvision ResNet and EfficientNet).
    KaimingFanOut,
    /// Truncated normal with std `√(1/fan_in)` (torchvision ViT's patch projection).
    LecunTrunc,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        b: &mut crate::models::params::Builder,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        spec: ConvSpec,
        bias: ConvBias,
        init: ConvInit,
    ) -> std::result::Result<Self, crate::models::error::ModelError> {
        use crate::models::params::{Init, ParamKind, join};
        let fan_in = (c_in / spec.groups) * k * k;
        let fan_out = c_out * k * k;
        let default_bound = 1.0 / (fan_in as f32).sqrt();
        let weight_init = match init {
            ConvInit::Default => Init::Uniform(default_bound),
            ConvInit::KaimingFanOut => Init::Normal((2.0 / fan_out as f32).sqrt()),
            ConvInit::LecunTrunc => Init::TruncNormal((1.0 / fan_in as f32).sqrt()),
        };
        let bias_init = match init {
            ConvInit::Default => Init::Uniform(default_bound),
            _ => Init::Zeros,
        };
        let weight = b.tensor(
            &join(name, "weight"),
            &[c_out, c_in / spec.groups, k, k],
            weight_init,
            ParamKind::Weight,
        )?;
        let bias = if bias == ConvBias::With {
            Some(b.tensor(&join(name, "bias"), &[c_out], bias_init, ParamKind::Bias)?)
        } else {
            None
        };
        Ok(Self { weight, bias, spec })
    }

    /// The convolution (and bias) with the kernels and matrix-product precision `ctx` names.
    pub fn forward(&self, x: &Tensor, ctx: &super::ForwardCtx) -> Result<Tensor> {
        let y = conv2d_with(
            x,
            self.weight.as_tensor(),
            self.spec,
            ctx.kernels,
            ctx.products,
        )?;
        match &self.bias {
            Some(bias) => super::linear::add_bias(&y, bias.as_tensor(), 1),
            None => Ok(y),
        }
    }
}
