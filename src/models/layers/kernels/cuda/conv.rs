//! Convolutions on cuDNN: forward, backward-data (the input gradient) and backward-filter (the
//! weight gradient), grouped and depthwise convolutions through the group count — one cuDNN
//! call each, instead of Candle's naive transposed-convolution kernel for the input gradient,
//! a convolution on a transposed (non-contiguous, hence naive) tensor for the weight gradient
//! and one convolution per channel for depthwise layers.
//!
//! The math mode is set explicitly on every descriptor ([`MathMode`]): fp32 = FMA (no TF32),
//! the `tf32` speed mode = TF32 tensor cores, f16/bf16 = tensor cores with f32 accumulation
//! (the descriptor's compute type is f32). Algorithms are chosen by cuDNN's heuristics once
//! per [`AlgoKey`] and cached; one workspace per device and thread is grown as needed and
//! reused (freed stream-ordered, so a kernel still using the old one is safe). Descriptors
//! are host-side structures, rebuilt per call (microseconds).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::sys::{
    cudnnConvolutionBwdDataAlgo_t, cudnnConvolutionBwdFilterAlgo_t, cudnnConvolutionFwdAlgo_t,
    cudnnConvolutionMode_t, cudnnMathType_t, cudnnTensorFormat_t,
};
use candle_core::cuda_backend::cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    FilterDescriptor, TensorDescriptor,
};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, DeviceId};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};

use super::{alloc_out, cpu_refused, driver, tf32, view};
use crate::models::layers::kernels::ConvSpec;
use crate::models::layers::kernels::plan::{
    AlgoKey, ConvGeometry, DTypeKey, MathMode, Pass, workspace_to_allocate,
};

/// `x`: `n × c × h × w`, `w`: `c_out × c/groups × kh × kw`, both on one CUDA device in one
/// dtype (f32, f16, bf16 or f64).
pub fn conv2d(x: &Tensor, w: &Tensor, spec: ConvSpec) -> Result<Tensor> {
    let Some(geometry) = ConvGeometry::new(
        x.dims4()?,
        w.dims4()?,
        spec.stride,
        spec.padding,
        spec.groups,
    ) else {
        bail!(
            "conv2d: weight {:?} does not fit input {:?} (stride {}, padding {}, groups {})",
            w.dims(),
            x.dims(),
            spec.stride,
            spec.padding,
            spec.groups
        );
    };
    let plan = Plan {
        geometry,
        math: MathMode::for_dtype(x.dtype(), tf32()),
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    if crate::models::layers::custom::grad_off() {
        return x.apply_op2_no_bwd(&w, &Forward(plan));
    }
    x.apply_op2(&w, Forward(plan))
}

/// What one convolution call needs besides its tensors; the backward ops reuse it, so all
/// three passes run in the same math mode.
#[derive(Clone, Copy, Debug)]
struct Plan {
    geometry: ConvGeometry,
    math: MathMode,
}

thread_local! {
    // cuDNN handles are neither Send nor Sync: one per device and thread (as Candle does).
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
    static FWD_ALGOS: RefCell<HashMap<AlgoKey, (cudnnConvolutionFwdAlgo_t, usize)>> =
        RefCell::new(HashMap::new());
    static DATA_ALGOS: RefCell<HashMap<AlgoKey, (cudnnConvolutionBwdDataAlgo_t, usize)>> =
        RefCell::new(HashMap::new());
    static FILTER_ALGOS: RefCell<HashMap<AlgoKey, (cudnnConvolutionBwdFilterAlgo_t, usize)>> =
        RefCell::new(HashMap::new());
    static WORKSPACES: RefCell<HashMap<DeviceId, CudaSlice<u8>>> = RefCell::new(HashMap::new());
}

/// An algorithm and its workspace size from `cache`, chosen by `pick` on the first call for
/// `key`.
fn cached<A: Copy + 'static>(
    cache: &'static std::thread::LocalKey<RefCell<HashMap<AlgoKey, (A, usize)>>>,
    key: AlgoKey,
    pick: impl FnOnce() -> Result<(A, usize)>,
) -> Result<(A, usize)> {
    if let Some(hit) = cache.with(|c| c.borrow().get(&key).copied()) {
        return Ok(hit);
    }
    let choice = pick()?;
    cache.with(|c| c.borrow_mut().insert(key, choice));
    Ok(choice)
}

fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream()).map_err(driver)?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

/// Runs `f` with this device's workspace grown to at least `bytes` (none when 0).
fn with_workspace<R>(
    dev: &CudaDevice,
    bytes: usize,
    f: impl FnOnce(Option<&mut CudaSlice<u8>>) -> Result<R>,
) -> Result<R> {
    if bytes == 0 {
        return f(None);
    }
    WORKSPACES.with(|ws| {
        let mut ws = ws.borrow_mut();
        let current = ws.get(&dev.id()).map_or(0, |s| s.len());
        if let Some(size) = workspace_to_allocate(current, bytes) {
            ws.insert(dev.id(), dev.alloc_zeros::<u8>(size)?);
        }
        f(ws.get_mut(&dev.id()))
    })
}

fn cudnn_math(m: MathMode) -> cudnnMathType_t {
    match m {
        MathMode::Fma => cudnnMathType_t::CUDNN_FMA_MATH,
        MathMode::Tf32 | MathMode::HalfTensorOps => cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
    }
}

fn ints(dims: [usize; 4]) -> Result<[i32; 4]> {
    ConvGeometry::as_c_ints(dims)
        .ok_or_else(|| candle_core::Error::Msg(format!("conv2d: {dims:?} exceeds cuDNN's int")))
}

/// The descriptors of one call: `T` is the data type, `C` the compute (accumulation) type.
struct Descriptors<T: CudnnDataType, C: CudnnDataType> {
    conv: ConvDescriptor<C>,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
}

fn descriptors<T: CudnnDataType, C: CudnnDataType>(
    cudnn: &Arc<Cudnn>,
    plan: &Plan,
) -> Result<Descriptors<T, C>> {
    let g = &plan.geometry;
    let nchw = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let (pad, stride) = (ints([g.pad; 4])?[0], ints([g.stride; 4])?[0]);
    let mut conv = cudnn
        .create_conv2d::<C>(
            [pad, pad],
            [stride, stride],
            [1, 1],
            cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )
        .map_err(driver)?;
    conv.set_math_type(cudnn_math(plan.math)).map_err(driver)?;
    conv.set_group_count(ints([g.groups; 4])?[0])
        .map_err(driver)?;
    Ok(Descriptors {
        conv,
        x: cudnn
            .create_4d_tensor::<T>(nchw, ints(g.x_dims())?)
            .map_err(driver)?,
        w: cudnn
            .create_4d_filter::<T>(nchw, ints(g.w_dims())?)
            .map_err(driver)?,
        y: cudnn
            .create_4d_tensor::<T>(nchw, ints(g.y_dims())?)
            .map_err(driver)?,
    })
}

/// Element types cuDNN convolves, with the α = 1, β = 0 its calls take.
trait ConvElem: CudnnDataType + DeviceRepr + CudaDType + Copy {
    const ONE: Self;
    const ZERO: Self;
}
impl ConvElem for f32 {
    const ONE: Self = 1.0;
    const ZERO: Self = 0.0;
}
impl ConvElem for f64 {
    const ONE: Self = 1.0;
    const ZERO: Self = 0.0;
}
impl ConvElem for half::f16 {
    const ONE: Self = half::f16::ONE;
    const ZERO: Self = half::f16::ZERO;
}
impl ConvElem for half::bf16 {
    const ONE: Self = half::bf16::ONE;
    const ZERO: Self = half::bf16::ZERO;
}

fn key(plan: &Plan, dtype: DType, pass: Pass) -> Result<AlgoKey> {
    let Some(dtype) = DTypeKey::of(dtype) else {
        bail!("cuDNN convolutions take f16, bf16, f32 or f64, got {dtype:?}")
    };
    Ok(AlgoKey {
        geometry: plan.geometry,
        dtype,
        math: plan.math,
        pass,
    })
}

/// Picks the output dtype's element type and the compute type, then runs `$body` with `T` and
/// `C` bound (compute = f64 for f64 data, f32 otherwise: half precision accumulates in f32).
macro_rules! by_dtype {
    ($dtype:expr, $body:ident, $($arg:expr),*) => {
        match $dtype {
            DType::F32 => $body::<f32, f32>($($arg),*),
            DType::F64 => $body::<f64, f64>($($arg),*),
            DType::F16 => $body::<half::f16, f32>($($arg),*),
            DType::BF16 => $body::<half::bf16, f32>($($arg),*),
            other => bail!("cuDNN convolutions take f16, bf16, f32 or f64, got {other:?}"),
        }
    };
}

fn forward<T: ConvElem, C: CudnnDataType>(
    plan: &Plan,
    x: &CudaStorage,
    xl: &Layout,
    w: &CudaStorage,
    wl: &Layout,
) -> Result<CudaStorage> {
    let dev = x.device().clone();
    let cudnn = handle(&dev)?;
    let d = descriptors::<T, C>(&cudnn, plan)?;
    let op = ConvForward {
        conv: &d.conv,
        x: &d.x,
        w: &d.w,
        y: &d.y,
    };
    let k = key(plan, x.dtype(), Pass::Forward)?;
    let (algo, ws) = cached(&FWD_ALGOS, k, || {
        let algo = op.pick_algorithm().map_err(driver)?;
        Ok((algo, op.get_workspace_size(algo).map_err(driver)?))
    })?;
    let xs = view::<T>(x, xl, "convolution input")?;
    let wv = view::<T>(w, wl, "convolution weight")?;
    let mut y = alloc_out::<T>(&dev, plan.geometry.y_dims().iter().product())?;
    with_workspace(&dev, ws, |workspace| {
        // SAFETY: the descriptors above describe exactly these contiguous NCHW/OIHW buffers
        // in dtype T (checked by `view`), the output holds n·c_out·oh·ow elements, and the
        // workspace has at least the bytes cuDNN asked for this algorithm.
        unsafe { op.launch(algo, workspace, (T::ONE, T::ZERO), &xs, &wv, &mut y) }.map_err(driver)
    })?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

fn backward_data<T: ConvElem, C: CudnnDataType>(
    plan: &Plan,
    dy: &CudaStorage,
    dyl: &Layout,
    w: &CudaStorage,
    wl: &Layout,
) -> Result<CudaStorage> {
    let dev = dy.device().clone();
    let cudnn = handle(&dev)?;
    let d = descriptors::<T, C>(&cudnn, plan)?;
    let op = ConvBackwardData {
        conv: &d.conv,
        dx: &d.x,
        w: &d.w,
        dy: &d.y,
    };
    let k = key(plan, dy.dtype(), Pass::BackwardData)?;
    let (algo, ws) = cached(&DATA_ALGOS, k, || {
        let algo = op.pick_algorithm().map_err(driver)?;
        Ok((algo, op.get_workspace_size(algo).map_err(driver)?))
    })?;
    let gs = view::<T>(dy, dyl, "convolution output gradient")?;
    let wv = view::<T>(w, wl, "convolution weight")?;
    let mut dx = alloc_out::<T>(&dev, plan.geometry.x_dims().iter().product())?;
    with_workspace(&dev, ws, |workspace| {
        // SAFETY: as in `forward`; dx holds n·c·h·w elements, dy n·c_out·oh·ow.
        unsafe { op.launch(algo, workspace, (T::ONE, T::ZERO), &mut dx, &wv, &gs) }.map_err(driver)
    })?;
    Ok(CudaStorage::wrap_cuda_slice(dx, dev))
}

fn backward_filter<T: ConvElem, C: CudnnDataType>(
    plan: &Plan,
    x: &CudaStorage,
    xl: &Layout,
    dy: &CudaStorage,
    dyl: &Layout,
) -> Result<CudaStorage> {
    let dev = x.device().clone();
    let cudnn = handle(&dev)?;
    let d = descriptors::<T, C>(&cudnn, plan)?;
    let op = ConvBackwardFilter {
        conv: &d.conv,
        x: &d.x,
        dw: &d.w,
        dy: &d.y,
    };
    let k = key(plan, x.dtype(), Pass::BackwardFilter)?;
    let (algo, ws) = cached(&FILTER_ALGOS, k, || {
        let algo = op.pick_algorithm().map_err(driver)?;
        Ok((algo, op.get_workspace_size(algo).map_err(driver)?))
    })?;
    let xs = view::<T>(x, xl, "convolution input")?;
    let gs = view::<T>(dy, dyl, "convolution output gradient")?;
    let mut dw = alloc_out::<T>(&dev, plan.geometry.w_dims().iter().product())?;
    with_workspace(&dev, ws, |workspace| {
        // SAFETY: as in `forward`; dw holds c_out·(c/groups)·kh·kw elements.
        unsafe { op.launch(algo, workspace, (T::ONE, T::ZERO), &xs, &mut dw, &gs) }.map_err(driver)
    })?;
    Ok(CudaStorage::wrap_cuda_slice(dw, dev))
}

fn shape(dims: [usize; 4]) -> Shape {
    Shape::from((dims[0], dims[1], dims[2], dims[3]))
}

fn same_dtype(a: &CudaStorage, b: &CudaStorage) -> Result<DType> {
    if a.dtype() != b.dtype() {
        bail!("conv2d: operands in {:?} and {:?}", a.dtype(), b.dtype());
    }
    Ok(a.dtype())
}

/// `(x, w) → y`, with a backward of one backward-data and one backward-filter call.
struct Forward(Plan);

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "annt-cudnn-conv2d"
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
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dtype = same_dtype(x, w)?;
        let y = by_dtype!(dtype, forward, &self.0, x, xl, w, wl)?;
        Ok((y, shape(self.0.geometry.y_dims())))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(w, &GradInput(self.0))?;
        let dw = x.apply_op2_no_bwd(&grad, &GradWeight(self.0))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `(dy, w) → dx` (cuDNN backward-data).
struct GradInput(Plan);

impl CustomOp2 for GradInput {
    fn name(&self) -> &'static str {
        "annt-cudnn-conv2d-grad-input"
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
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dtype = same_dtype(dy, w)?;
        let dx = by_dtype!(dtype, backward_data, &self.0, dy, dyl, w, wl)?;
        Ok((dx, shape(self.0.geometry.x_dims())))
    }
}

/// `(x, dy) → dw` (cuDNN backward-filter).
struct GradWeight(Plan);

impl CustomOp2 for GradWeight {
    fn name(&self) -> &'static str {
        "annt-cudnn-conv2d-grad-weight"
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
        let dtype = same_dtype(x, dy)?;
        let dw = by_dtype!(dtype, backward_filter, &self.0, x, xl, dy, dyl)?;
        Ok((dw, shape(self.0.geometry.w_dims())))
    }
}
