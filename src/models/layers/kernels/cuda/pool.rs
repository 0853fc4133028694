//! Max pooling with overlapping windows and padding on the GPU (`max_pool_{fwd,bwd}_*` in
//! `annt_kernels.cu`), in f32, f16 and bf16 without a round trip through f32 tensors.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};

use super::{alloc_out, cpu_refused, driver, elementwise, func, int, view};
use crate::models::layers::kernels::Window;

/// `x`: `n × c × h × w` on a CUDA device → `n × c × oh × ow`, padding as −∞.
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if stride == 0 || h + 2 * padding < k || w + 2 * padding < k || 2 * padding > k {
        bail!(
            "max_pool2d: a {k}×{k} window (stride {stride}, padding {padding}) does not fit {h}×{w}"
        );
    }
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
    let x = x.contiguous()?;
    if crate::models::layers::custom::grad_off() {
        return x.apply_op1_no_bwd(&MaxPool { g });
    }
    x.apply_op1(MaxPool { g })
}

/// The kernels' integer arguments: planes, h, w, k, s, p, oh, ow.
fn geometry(g: &Window) -> Result<[i32; 8]> {
    Ok([
        int(g.n * g.c, "planes")?,
        int(g.h, "h")?,
        int(g.w, "w")?,
        int(g.kh, "k")?,
        int(g.stride, "stride")?,
        int(g.pad, "padding")?,
        int(g.out_h(), "oh")?,
        int(g.out_w(), "ow")?,
    ])
}

struct MaxPool {
    g: Window,
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "annt-cuda-max-pool2d"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let g = self.g;
        let dev = x.device().clone();
        let out_len = g.n * g.c * g.out_len();
        let geo = geometry(&g)?;
        macro_rules! run {
            ($ty:ty, $name:literal) => {{
                let src = view::<$ty>(x, l, "max-pool input")?;
                let mut dst = alloc_out::<$ty>(&dev, out_len)?;
                let f = func(&dev, $name)?;
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&f);
                b.arg(&src).arg(&mut dst);
                for v in &geo {
                    b.arg(v);
                }
                // SAFETY: the PTX signature is (const T*, T*, 8 × int), matching the
                // arguments pushed above; `src` holds planes·h·w elements and `dst`
                // planes·oh·ow, the ranges the kernel indexes.
                unsafe { b.launch(elementwise(out_len)) }.map_err(driver)?;
                CudaStorage::wrap_cuda_slice(dst, dev.clone())
            }};
        }
        let out = match x.dtype() {
            DType::F32 => run!(f32, "max_pool_fwd_f32"),
            DType::F16 => run!(half::f16, "max_pool_fwd_f16"),
            DType::BF16 => run!(half::bf16, "max_pool_fwd_bf16"),
            other => bail!("annt's CUDA max-pool takes f32, f16 or bf16, got {other:?}"),
        };
        Ok((out, Shape::from((g.n, g.c, g.out_h(), g.out_w()))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(
            x.contiguous()?
                .apply_op2_no_bwd(&grad, &MaxPoolGrad { g: self.g })?,
        ))
    }
}

/// `(x, dy) → dx`: each input element gathers the gradients of the windows it is the
/// maximum of.
struct MaxPoolGrad {
    g: Window,
}

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "annt-cuda-max-pool2d-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        dy: &CudaStorage,
        dyl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let g = self.g;
        let dev = x.device().clone();
        let in_len = g.n * g.c * g.h * g.w;
        let geo = geometry(&g)?;
        if x.dtype() != dy.dtype() {
            bail!(
                "max-pool backward: input {:?}, gradient {:?}",
                x.dtype(),
                dy.dtype()
            );
        }
        macro_rules! run {
            ($ty:ty, $name:literal) => {{
                let xs = view::<$ty>(x, xl, "max-pool input")?;
                let gs = view::<$ty>(dy, dyl, "max-pool gradient")?;
                let mut dst = alloc_out::<$ty>(&dev, in_len)?;
                let f = func(&dev, $name)?;
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&f);
                b.arg(&xs).arg(&gs).arg(&mut dst);
                for v in &geo {
                    b.arg(v);
                }
                // SAFETY: the PTX signature is (const T*, const T*, T*, 8 × int); `xs` and
                // `dst` hold planes·h·w elements and `gs` planes·oh·ow.
                unsafe { b.launch(elementwise(in_len)) }.map_err(driver)?;
                CudaStorage::wrap_cuda_slice(dst, dev.clone())
            }};
        }
        let out = match x.dtype() {
            DType::F32 => run!(f32, "max_pool_bwd_f32"),
            DType::F16 => run!(half::f16, "max_pool_bwd_f16"),
            DType::BF16 => run!(half::bf16, "max_pool_bwd_bf16"),
            other => bail!("annt's CUDA max-pool takes f32, f16 or bf16, got {other:?}"),
        };
        Ok((out, Shape::from((g.n, g.c, g.h, g.w))))
    }
}
