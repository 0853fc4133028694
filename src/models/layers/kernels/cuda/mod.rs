//! annt's CUDA path: cuDNN convolutions ([`conv`], `cudnn` feature), and annt's own PTX
//! kernels for overlapping max pooling ([`pool`]) and fused batch norm ([`norm`]).
//!
//! Each op is a Candle `CustomOp` whose `cuda_fwd` launches the kernel on the device's stream
//! and whose `bwd` applies the backward ops, so nothing here synchronises the device or reads
//! a value back to the host. Inputs are made contiguous by the callers; a kernel given
//! anything else refuses with an error instead of reading the wrong elements.
//!
//! This is the only module besides the pinned-memory and GPU-query code where `unsafe` is
//! allowed: launching a kernel and allocating device memory that a kernel fills are unsafe in
//! cudarc. Each block says why it is sound.

#![allow(unsafe_code)]

#[cfg(feature = "cudnn")]
pub mod conv;
pub mod norm;
pub mod pool;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{Layout, Result, bail};

/// annt's kernels as PTX (built by build.rs from `annt_kernels.cu`).
pub const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/annt_kernels.ptx"));
const MODULE: &str = "annt_kernels";

/// Threads per block of the reduction kernels (`BN_THREADS` in the `.cu` file).
pub const REDUCTION_THREADS: u32 = 256;

/// Whether f32 convolutions may use TF32 tensor cores (the `tf32` speed mode). Off by
/// default: an "fp32" arm must be fp32 (cuDNN's default math mode would allow TF32).
static TF32: AtomicBool = AtomicBool::new(false);

/// Sets [`TF32`]; `util::gpu::set_tf32` calls it together with cuBLAS's setting.
pub fn set_tf32(on: bool) {
    TF32.store(on, Ordering::Relaxed);
}

pub fn tf32() -> bool {
    TF32.load(Ordering::Relaxed)
}

/// One of annt's kernels, loaded into `dev`'s context on first use.
pub fn func(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
    Ok(dev
        .get_or_load_custom_func(name, MODULE, PTX)?
        .into_cuda_function())
}

/// Maps a cudarc error into Candle's.
pub fn driver<E: std::error::Error + Send + Sync + 'static>(e: E) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

/// The elements of a contiguous CUDA tensor as a view starting at its offset.
pub fn view<'a, T: CudaDType + DeviceRepr>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("annt's CUDA kernels need a contiguous {what}")
    };
    Ok(storage.as_cuda_slice::<T>()?.slice(start..end))
}

/// A device buffer of `len` elements that the next kernel on the stream overwrites entirely.
pub fn alloc_out<T: DeviceRepr>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every caller launches, on the same stream and before anything reads it, a
    // kernel that writes each of the `len` elements (checked by `annt selftest`, whose
    // inputs are never zero so stale memory would show).
    unsafe { dev.alloc::<T>(len) }
}

/// A grid-stride launch over `n` elements (at most 65 535 blocks of 256 threads).
pub fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of [`REDUCTION_THREADS`] threads per channel.
pub fn per_channel(c: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (c as u32, 1, 1),
        block_dim: (REDUCTION_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// What every CUDA op's `cpu_fwd` answers: `kernels::Backend` sends CPU tensors to the CPU
/// kernels, so reaching one of these is a dispatch bug, reported instead of computed.
pub fn cpu_refused(op: &str) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
    bail!("{op} was given CPU tensors (kernels::Backend chose wrongly)")
}

/// Checks that a kernel's sizes fit the `int` its PTX signature takes.
pub fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what} = {v} exceeds i32")))
}
