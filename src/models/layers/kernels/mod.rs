//! Which implementation runs each of the heavy ops — convolution, max pooling, batch norm in
//! training — decided in one place, [`Backend::select`], and matched on once per op (in
//! `conv::conv2d`, `pool::max_pool2d`, `norm::BatchNorm2d::forward`).
//!
//! - [`cpu`]: plain-slice CPU kernels (per-image im2col + GEMM convolution, direct depthwise, overlapping max-pool
//!   backward, batch-norm passes); the layer files wrap them into tensors with a backward.
//!   On a bf16 unit ([`bf16`]) the stride-1 "same" convolutions skip im2col: the packers read
//!   their patches straight from the images (`bf16::Patches`). Dense 3 × 3 convolutions with
//!   8 × 8 or smaller outputs and ≥ 128 channels (ResNet-18's last two stages) run one
//!   product per kernel tap over only the positions it reads (`taps`), skipping the
//!   padding that im2col multiplies as zeros; `cpu::conv_forward` and
//!   `cpu::conv_backward_joined` are where that is decided.
//!   [`attention`] is multi-head attention's core (the heads read in place from the input
//!   projection's rows) and [`encoder`] a whole ViT encoder block, forward and backward, as
//!   functions of slices; the layers attach each as one node of the graph. [`simd`] compiles
//!   a loop once per vector instruction set (GELU's and SiLU's) and picks at run time.
//!   [`fill`] makes the element-wise kernels' outputs without zero-filling them first.
//! - `cuda` (the `cuda` build): cuDNN convolutions (forward, backward-data, backward-filter,
//!   grouped/depthwise through the group count; with the `cudnn` feature) and annt's own CUDA
//!   kernels (`kernels/cuda/annt_kernels.cu`, compiled to PTX by `build.rs`) for max pooling and
//!   fused batch norm.
//! - [`Backend::CandleStock`]: Candle's own ops and their backward — the reference the tests
//!   and the benchmark compare against, and what a device with no annt kernel for an op uses.
//!
//! Every CUDA kernel has a check against the CPU path in `annt selftest`
//! (`crate::engine::selftest`), which runs the moment a GPU exists.

pub mod approx;
pub mod attention;
pub mod bf16;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod encoder;
pub mod fill;
pub mod gemm;
pub mod plan;
pub mod real;
pub mod simd;
mod taps;
mod winograd;

pub use cpu::Window;

use candle_core::Device;

use super::Kernels;

/// Stride, symmetric zero padding and channel groups of a convolution (the kernel size comes
/// from the weight): what every backend's convolution takes, so it lives with the kernels.
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

/// What a convolution's matrix products compute in on the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Products {
    /// The tensors' own dtype (f32 through gemm; f64 in the gradient tests).
    #[default]
    Native,
    /// bf16-rounded inputs with f32 accumulation on the CPU's bf16 unit
    /// ([`bf16`]): `--amp bf16` on a CPU that has one. Tensors stay f32.
    Bf16(bf16::Dot),
    /// f32, the convolutions' forward and input-gradient products on AVX-512F straight
    /// from the images ([`bf16::Fma`]) instead of unfolded patches through gemm: fp32 on a
    /// CPU that has it. Everything else is as [`Products::Native`].
    F32(bf16::Fma),
}

impl Products {
    /// The bf16 unit, when products run on one.
    pub fn bf16(self) -> Option<bf16::Dot> {
        match self {
            Products::Bf16(dot) => Some(dot),
            Products::Native | Products::F32(_) => None,
        }
    }

    /// The f32 patch product, when f32 convolutions use it.
    pub fn fma(self) -> Option<bf16::Fma> {
        match self {
            Products::F32(fma) => Some(fma),
            Products::Native | Products::Bf16(_) => None,
        }
    }
}

/// An on/off switch read from the environment variable `var` (unset or empty: on): how
/// the CPU convolution paths are turned off for an A/B in one binary. Anything else than
/// `on` or `off` is reported and read as on. Callers keep the answer in a `OnceLock`.
pub(super) fn switch_on(var: &str) -> bool {
    match std::env::var(var).ok().as_deref().map(str::trim) {
        None | Some("") | Some("on") => true,
        Some("off") => false,
        Some(other) => {
            eprintln!("annt: {var}={other:?} is not one of on, off; using on");
            true
        }
    }
}

/// Lets cuBLAS (a process-wide Candle setting) and annt's cuDNN convolutions use TF32 for
/// f32 work; off, both do true f32 arithmetic. A no-op without CUDA.
pub fn set_tf32(on: bool) {
    #[cfg(feature = "cuda")]
    {
        candle_core::cuda_backend::set_gemm_reduced_precision_f32(on);
        cuda::set_tf32(on);
    }
    #[cfg(not(feature = "cuda"))]
    let _ = on;
}

/// The implementation one op runs on for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// annt's CPU kernels.
    Cpu,
    /// annt's CUDA path (cuDNN and annt's PTX kernels).
    Cuda,
    /// Candle's own op.
    CandleStock,
}

impl Backend {
    /// The backend for an op on `device` under the `kernels` choice. A CUDA device in a build
    /// without the `cuda` feature cannot exist, and Metal has no annt kernels: both get
    /// Candle's ops.
    pub fn select(device: &Device, kernels: Kernels) -> Self {
        match (kernels, device) {
            (Kernels::CandleStock, _) => Backend::CandleStock,
            (Kernels::Annt, Device::Cpu) => Backend::Cpu,
            #[cfg(feature = "cuda")]
            (Kernels::Annt, Device::Cuda(_)) => Backend::Cuda,
            _ => Backend::CandleStock,
        }
    }

    /// Whether convolutions on this backend go through cuDNN: the CUDA path in a build with
    /// the `cudnn` feature. A `cuda` build without it uses Candle's convolution (whose input
    /// gradient is a naive transposed convolution) and says so in `annt selftest`.
    pub fn conv_on_cudnn(self) -> bool {
        self == Backend::Cuda && cfg!(feature = "cudnn")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_gets_annt_kernels_unless_the_reference_is_asked_for() {
        assert_eq!(Backend::select(&Device::Cpu, Kernels::Annt), Backend::Cpu);
        assert_eq!(
            Backend::select(&Device::Cpu, Kernels::CandleStock),
            Backend::CandleStock
        );
        assert!(!Backend::Cpu.conv_on_cudnn());
        assert_eq!(Backend::Cuda.conv_on_cudnn(), cfg!(feature = "cudnn"));
    }
}
