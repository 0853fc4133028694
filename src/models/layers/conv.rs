//! 2-D convolution (regular and depthwise) with a fast backward pass.
//!
//! On the CPU, annt's path unfolds patches ([`kernels_cpu::im2col`]) and multiplies by the
//! weight with Candle's `matmul`; the backward pass is two more matrix products plus a fold
//! ([`kernels_cpu::col2im`]), so the input gradient costs what the forward costs instead of
//! Candle's naive transposed convolution. Depthwise convolutions get direct kernels instead
//! of Candle's one-conv-per-channel loop. [`Kernels::CandleStock`] selects Candle's own
//! `conv2d` (and its backward) — the reference the tests and the benchmark compare against.
//! On CUDA (the `cudnn` build) convolutions and both gradients run on cuDNN
//! (`kernels::cuda::conv`); [`super::kernels::Backend`] decides, once per call.

use candle_core::{DType, Result, Tensor, bail};

use super::Kernels;
use super::custom::{attach2, map_real, map_real2};
use super::kernels::{Backend, Window, cpu as kernels_cpu};

/// Stride, symmetric zero padding and channel groups of a convolution (the kernel size comes
/// from the weight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

impl ConvSpec {
    pub fn new(stride: usize, padding: usize) -> Self {
        Self {
            stride,
            padding,
            groups: 1,
        }
    }
    pub fn depthwise(stride: usize, padding: usize, channels: usize) -> Self {
        Self {
            stride,
            padding,
            groups: channels,
        }
    }
}

/// `x`: `n × c × h × w`; `w`: `c_out × c/groups × kh × kw` → `n × c_out × oh × ow`.
///
/// Half-precision inputs on the CPU are computed in f32 and rounded back, which is what a
/// tensor core does (half inputs, f32 accumulation); Candle's CPU matmul has no bf16 at all.
pub fn conv2d(x: &Tensor, w: &Tensor, spec: ConvSpec, kernels: Kernels) -> Result<Tensor> {
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
        Backend::Cpu if matches!(dtype, DType::F16 | DType::BF16) => conv2d(
            &x.to_dtype(DType::F32)?,
            &w.to_dtype(DType::F32)?,
            spec,
            kernels,
        )?
        .to_dtype(dtype),
        Backend::Cpu if spec.groups == 1 => dense(x, &w, spec),
        Backend::Cpu if spec.groups == c && c_out == c => depthwise(x, &w, spec),
        #[cfg(feature = "cudnn")]
        Backend::Cuda => super::kernels::cuda::conv::conv2d(x, &w, spec),
        // Candle's reference; also other group counts on the CPU (no model annt builds uses
        // them: Candle's loop is correct, just slow) and a `cuda` build without cuDNN.
        _ => x.conv2d(&w, spec.padding, spec.stride, 1, spec.groups),
    }
}

fn window(x: &Tensor, w: &Tensor, spec: ConvSpec) -> Result<Window> {
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

/// A 1×1, stride-1, unpadded convolution needs no unfolding: the input already is the
/// patch matrix.
fn is_pointwise(g: &Window) -> bool {
    g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0
}

/// The batch's patch matrix `[c·kh·kw, n·oh·ow]`.
fn unfold(x: &Tensor, g: Window) -> Result<Tensor> {
    if is_pointwise(&g) {
        return x
            .reshape((g.n, g.c, g.h * g.w))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((g.c, g.n * g.h * g.w));
    }
    let shape = (g.patch_len(), g.n * g.out_len());
    map_real(
        x,
        shape,
        |v| kernels_cpu::im2col(v, &g),
        |v| kernels_cpu::im2col(v, &g),
    )
}

/// Folds a patch-matrix gradient `[c·kh·kw, n·oh·ow]` back to `n × c × h × w`.
fn fold(cols: &Tensor, g: Window) -> Result<Tensor> {
    if is_pointwise(&g) {
        return cols
            .reshape((g.c, g.n, g.h, g.w))?
            .transpose(0, 1)?
            .contiguous();
    }
    map_real(
        cols,
        (g.n, g.c, g.h, g.w),
        |v| kernels_cpu::col2im(v, &g),
        |v| kernels_cpu::col2im(v, &g),
    )
}

/// Patch matrices up to this many elements (256 MB in f32) are kept from the forward pass
/// for the weight gradient; larger ones are unfolded again in the backward pass.
const KEEP_COLS_MAX_ELEMS: usize = 64 << 20;

fn dense(x: &Tensor, w: &Tensor, spec: ConvSpec) -> Result<Tensor> {
    let g = window(x, w, spec)?;
    let c_out = w.dim(0)?;
    // One GEMM over the whole batch: [c_out, c·k·k] · [c·k·k, n·oh·ow], then back to NCHW.
    let cols = unfold(&x.detach(), g)?;
    let y = w
        .detach()
        .reshape((c_out, g.patch_len()))?
        .matmul(&cols)?
        .reshape((c_out, g.n, g.out_h(), g.out_w()))?
        .transpose(0, 1)?
        .contiguous()?;
    let kept = (cols.elem_count() <= KEEP_COLS_MAX_ELEMS).then_some(cols);
    attach2(
        "annt-conv2d",
        x,
        w,
        y,
        Box::new(move |x, w, grad| {
            // The output gradient as one `[c_out, n·oh·ow]` matrix, so that both products
            // below are single GEMMs over the whole batch.
            let grad = grad
                .transpose(0, 1)?
                .contiguous()?
                .reshape((c_out, g.n * g.out_len()))?;
            let w2 = w.reshape((c_out, g.patch_len()))?;
            // dL/dcols = Wᵀ · dL/dy, folded back onto the input.
            let grad_x = fold(&w2.t()?.matmul(&grad)?, g)?;
            // dL/dW = dL/dy · colsᵀ.
            let cols = match &kept {
                Some(cols) => cols.clone(),
                None => unfold(x, g)?,
            };
            let grad_w = grad.matmul(&cols.t()?)?.reshape(w.shape())?;
            Ok((grad_x, grad_w))
        }),
    )
}

fn depthwise(x: &Tensor, w: &Tensor, spec: ConvSpec) -> Result<Tensor> {
    let g = window(x, w, spec)?;
    let out_shape = (g.n, g.c, g.out_h(), g.out_w());
    let y = map_real2(
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
        bias: bool,
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
        let bias = if bias {
            Some(b.tensor(&join(name, "bias"), &[c_out], bias_init, ParamKind::Bias)?)
        } else {
            None
        };
        Ok(Self { weight, bias, spec })
    }

    pub fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let y = conv2d(x, self.weight.as_tensor(), self.spec, kernels)?;
        match &self.bias {
            Some(bias) => super::linear::add_bias(&y, bias.as_tensor(), 1),
            None => Ok(y),
        }
    }
}
