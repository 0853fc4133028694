//! Pooling: max pooling with overlapping windows (the ImageNet ResNet stem's 3×3, stride 2,
//! padding 1), whose backward Candle lacks, and global average pooling.

use candle_core::{DType, Result, Tensor};

use super::Kernels;
use super::custom::{attach1, map_real2, raw};
use super::kernels::{Backend, Window, cpu as kernels_cpu};

/// Max pooling over `k × k` windows with the given stride and padding (padding never wins).
pub fn max_pool2d(
    x: &Tensor,
    k: usize,
    stride: usize,
    padding: usize,
    kernels: Kernels,
) -> Result<Tensor> {
    let dtype = x.dtype();
    let backend = Backend::select(x.device(), kernels);
    #[cfg(feature = "cuda")]
    if backend == Backend::Cuda {
        return super::kernels::cuda::pool::max_pool2d(x, k, stride, padding);
    }
    if backend != Backend::Cpu {
        // Candle pools without padding. Zero padding equals −∞ padding only for inputs ≥ 0,
        // which holds in the one place annt pools (after a ReLU).
        let x = if padding > 0 {
            x.pad_with_zeros(2, padding, padding)?
                .pad_with_zeros(3, padding, padding)?
        } else {
            x.clone()
        };
        return x.max_pool2d_with_stride(k, stride);
    }
    if dtype != DType::F32 && dtype != DType::F64 {
        return max_pool2d(&x.to_dtype(DType::F32)?, k, stride, padding, kernels)?.to_dtype(dtype);
    }
    let (n, c, h, w) = x.dims4()?;
    let g = Window {
        n,
        c,
        h,
        w,
        kh: k,
        kw: k,
        stride,
        pad: padding,
    };
    let y = raw(
        &x.detach(),
        (n, c, g.out_h(), g.out_w()),
        |v| kernels_cpu::max_pool_forward(v, &g),
        |v| kernels_cpu::max_pool_forward(v, &g),
    )?;
    attach1(
        "annt-max-pool2d",
        x,
        y,
        Box::new(move |x, grad| {
            map_real2(
                x,
                grad,
                (g.n, g.c, g.h, g.w),
                |a, b| kernels_cpu::max_pool_grad_input(a, b, &g),
                |a, b| kernels_cpu::max_pool_grad_input(a, b, &g),
            )
        }),
    )
}

/// Mean over the spatial dimensions: `n × c × h × w` → `n × c`.
///
/// An attached node rather than Candle's `mean`, so that a ResNet's graph is annt's nodes
/// alone and its backward can run on annt's tape ([`super::tape`]).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let value = x.detach().mean((2, 3))?;
    let scale = 1.0 / (h * w) as f64;
    attach1(
        "annt-global-avg-pool",
        x,
        value,
        Box::new(move |_x, grad| {
            grad.affine(scale, 0.0)?
                .reshape((n, c, 1, 1))?
                .broadcast_as((n, c, h, w))?
                .contiguous()
        }),
    )
}
