//! Batch norm in training on the GPU, fused: two kernels forward (`bn_stats_f32`,
//! `bn_apply_f32`) and two backward (`bn_grad_sums_f32`, `bn_grad_input_f32`), instead of the
//! ~10 primitive ops (and their autograd chain) the op-by-op path costs. The batch statistics
//! stay on the device: the running-statistics update is a few small tensor ops on `c`
//! elements, queued like everything else.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
    bail,
};

use super::{alloc_out, cpu_refused, driver, elementwise, func, int, per_channel, view};

/// `x`: `n × c × h × w` f32 on a CUDA device; `gamma`, `beta`: `c`. Returns the output (with
/// β added) and the batch mean and biased variance (for the running statistics).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let x = x.contiguous()?;
    let (n, c, h, w) = x.dims4()?;
    let dims = Dims {
        n: int(n, "batch")?,
        c: int(c, "channels")?,
        hw: int(h * w, "h·w")?,
    };
    let stats = x.detach().apply_op1_no_bwd(&BnStats { dims })?;
    let gamma = gamma.to_dtype(DType::F32)?.contiguous()?;
    let beta = beta.to_dtype(DType::F32)?.contiguous()?;
    let op = BnApply {
        stats: stats.clone(),
        eps: eps as f32,
        dims,
    };
    let y = if crate::models::layers::custom::grad_off() {
        x.apply_op3_no_bwd(&gamma, &beta, &op)?
    } else {
        x.apply_op3(&gamma, &beta, op)?
    };
    Ok((y, stats.narrow(0, 0, c)?, stats.narrow(0, c, c)?))
}

#[derive(Clone, Copy, Debug)]
struct Dims {
    n: i32,
    c: i32,
    hw: i32,
}

impl Dims {
    fn len(&self) -> usize {
        self.n as usize * self.c as usize * self.hw as usize
    }
    fn c(&self) -> usize {
        self.c as usize
    }
}

fn cuda(storage: &Storage) -> Result<&CudaStorage> {
    match storage {
        Storage::Cuda(s) => Ok(s),
        _ => bail!("annt's CUDA batch norm was given a tensor that is not on the GPU"),
    }
}

fn f32_only(dtype: DType) -> Result<()> {
    if dtype != DType::F32 {
        bail!("annt's CUDA batch norm runs in f32, got {dtype:?}");
    }
    Ok(())
}

/// `x → [mean₀…mean_c, var₀…var_c]`.
struct BnStats {
    dims: Dims,
}

impl CustomOp1 for BnStats {
    fn name(&self) -> &'static str {
        "annt-cuda-bn-stats"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }
    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        f32_only(x.dtype())?;
        let d = self.dims;
        let dev = x.device().clone();
        let xs = view::<f32>(x, l, "batch-norm input")?;
        let mut out = alloc_out::<f32>(&dev, 2 * d.c())?;
        let f = func(&dev, "bn_stats_f32")?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&xs).arg(&mut out).arg(&d.n).arg(&d.c).arg(&d.hw);
        // SAFETY: signature (const float*, float*, int n, int c, int hw); `xs` has n·c·hw
        // elements, `out` 2c, and block `ch` writes out[ch] and out[c + ch].
        unsafe { b.launch(per_channel(d.c())) }.map_err(driver)?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from(2 * d.c()),
        ))
    }
}

/// `(x, γ, β) → (x − mean)·invstd·γ + β`, with the statistics computed by [`BnStats`].
struct BnApply {
    stats: Tensor,
    eps: f32,
    dims: Dims,
}

impl CustomOp3 for BnApply {
    fn name(&self) -> &'static str {
        "annt-cuda-batch-norm"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
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
        g: &CudaStorage,
        gl: &Layout,
        bt: &CudaStorage,
        btl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        f32_only(x.dtype())?;
        let d = self.dims;
        let dev = x.device().clone();
        let (ss, sl) = self.stats.storage_and_layout();
        let stats = view::<f32>(cuda(&ss)?, sl, "batch-norm statistics")?;
        let xs = view::<f32>(x, xl, "batch-norm input")?;
        let gs = view::<f32>(g, gl, "batch-norm weight")?;
        let bs = view::<f32>(bt, btl, "batch-norm bias")?;
        let mut out = alloc_out::<f32>(&dev, d.len())?;
        let f = func(&dev, "bn_apply_f32")?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&xs)
            .arg(&mut out)
            .arg(&stats)
            .arg(&gs)
            .arg(&bs)
            .arg(&self.eps)
            .arg(&d.n)
            .arg(&d.c)
            .arg(&d.hw);
        // SAFETY: signature (const float* x, float* y, const float* stats, const float* γ,
        // const float* β, float eps, int n, int c, int hw); x and y hold n·c·hw elements,
        // stats 2c, γ and β c.
        unsafe { b.launch(elementwise(d.len())) }.map_err(driver)?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            xl.shape().clone(),
        ))
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = self.dims.c();
        let grad = grad.contiguous()?;
        let x = x.contiguous()?;
        let sums = grad.apply_op2_no_bwd(
            &x,
            &BnGradSums {
                stats: self.stats.clone(),
                eps: self.eps,
                dims: self.dims,
            },
        )?;
        let dx = grad.apply_op2_no_bwd(
            &x,
            &BnGradInput {
                stats: self.stats.clone(),
                gamma: gamma.contiguous()?,
                sums: sums.clone(),
                eps: self.eps,
                dims: self.dims,
            },
        )?;
        Ok((
            Some(dx),
            Some(sums.narrow(0, 2 * c, c)?),
            Some(sums.narrow(0, 3 * c, c)?),
        ))
    }
}

/// `(dy, x) → [Σdy, Σdy·(x − mean), dγ, dβ]` (4c).
struct BnGradSums {
    stats: Tensor,
    eps: f32,
    dims: Dims,
}

impl CustomOp2 for BnGradSums {
    fn name(&self) -> &'static str {
        "annt-cuda-bn-grad-sums"
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
        dy: &CudaStorage,
        dyl: &Layout,
        x: &CudaStorage,
        xl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        f32_only(dy.dtype())?;
        let d = self.dims;
        let dev = x.device().clone();
        let (ss, sl) = self.stats.storage_and_layout();
        let stats = view::<f32>(cuda(&ss)?, sl, "batch-norm statistics")?;
        let gs = view::<f32>(dy, dyl, "batch-norm gradient")?;
        let xs = view::<f32>(x, xl, "batch-norm input")?;
        let mut out = alloc_out::<f32>(&dev, 4 * d.c())?;
        let f = func(&dev, "bn_grad_sums_f32")?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&gs)
            .arg(&xs)
            .arg(&stats)
            .arg(&mut out)
            .arg(&self.eps)
            .arg(&d.n)
            .arg(&d.c)
            .arg(&d.hw);
        // SAFETY: signature (const float* dy, const float* x, const float* stats, float* out,
        // float eps, int n, int c, int hw); block `ch` writes out[ch + k·c] for k = 0..4.
        unsafe { b.launch(per_channel(d.c())) }.map_err(driver)?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from(4 * d.c()),
        ))
    }
}

/// `(dy, x) → dx` from the statistics, γ and the sums of [`BnGradSums`].
struct BnGradInput {
    stats: Tensor,
    gamma: Tensor,
    sums: Tensor,
    eps: f32,
    dims: Dims,
}

impl CustomOp2 for BnGradInput {
    fn name(&self) -> &'static str {
        "annt-cuda-bn-grad-input"
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
        dy: &CudaStorage,
        dyl: &Layout,
        x: &CudaStorage,
        xl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        f32_only(dy.dtype())?;
        let d = self.dims;
        let dev = x.device().clone();
        let (ss, sl) = self.stats.storage_and_layout();
        let stats = view::<f32>(cuda(&ss)?, sl, "batch-norm statistics")?;
        let (gm, gml) = self.gamma.storage_and_layout();
        let gamma = view::<f32>(cuda(&gm)?, gml, "batch-norm weight")?;
        let (su, sul) = self.sums.storage_and_layout();
        let sums = view::<f32>(cuda(&su)?, sul, "batch-norm sums")?;
        let gs = view::<f32>(dy, dyl, "batch-norm gradient")?;
        let xs = view::<f32>(x, xl, "batch-norm input")?;
        let mut out = alloc_out::<f32>(&dev, d.len())?;
        let f = func(&dev, "bn_grad_input_f32")?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&gs)
            .arg(&xs)
            .arg(&stats)
            .arg(&gamma)
            .arg(&sums)
            .arg(&mut out)
            .arg(&self.eps)
            .arg(&d.n)
            .arg(&d.c)
            .arg(&d.hw);
        // SAFETY: signature (const float* dy, const float* x, const float* stats, const float*
        // γ, const float* sums, float* dx, float eps, int n, int c, int hw); dy, x and dx hold
        // n·c·hw elements, stats 2c, γ c, sums 4c (the first 2c are read).
        unsafe { b.launch(elementwise(d.len())) }.map_err(driver)?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            xl.shape().clone(),
        ))
    }
}
