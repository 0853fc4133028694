//! Give any forward value a hand-written backward pass.
//!
//! Candle lets a `CustomOp` define its own backward, but its public API offers no way to
//! attach a backward to a value computed from ordinary tensor ops. [`attach1`] and
//! [`attach2`] do it: the forward value is computed without gradient tracking (so it can
//! use `matmul` and any other op), and a custom op whose forward returns that value stands
//! in for it in the graph, with the given closure as its backward. A value computed by one of
//! annt's CPU kernels is handed over as a [`Raw`] buffer and becomes the op's output as it is;
//! a value computed from tensor ops (the CUDA paths, Candle's matmul) costs one copy.

use super::tape;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor, bail,
};

thread_local! {
    static NO_GRAD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// While the returned guard lives, values from [`attach1`]/[`attach2`]/[`attach3`] on this
/// thread are returned as they are, without a backward: evaluation's forward pass then builds
/// no graph through annt's layers (which would keep every activation alive until the logits
/// are dropped, and copy each layer's output once more). Candle has no such mode of its
/// own: parameters are `Var`s and every op on them is recorded.
pub fn no_grad() -> NoGradGuard {
    NO_GRAD.with(|n| n.set(n.get() + 1));
    NoGradGuard(())
}

/// See [`no_grad`].
pub struct NoGradGuard(());

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        NO_GRAD.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Whether a [`no_grad`] guard is alive on this thread (the CUDA ops check it too).
pub fn grad_off() -> bool {
    NO_GRAD.with(|n| n.get() > 0)
}

/// A backward pass for one input: `(input, output_grad) → input_grad`.
pub type Backward1 = Box<dyn Fn(&Tensor, &Tensor) -> Result<Tensor> + Send + Sync>;
/// A backward pass for two inputs: `(a, b, output_grad) → (a_grad, b_grad)`.
pub type Backward2 =
    Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<(Tensor, Tensor)> + Send + Sync>;

/// Returns `value` (computed from `input` without tracking) wired into the graph so that its
/// gradient flows to `input` through `backward`.
pub fn attach1(
    name: &'static str,
    input: &Tensor,
    value: impl Into<Value>,
    backward: Backward1,
) -> Result<Tensor> {
    let value = value.into();
    if grad_off() || !input.track_op() {
        return value.into_tensor();
    }
    let backward: tape::Back1 = backward.into();
    let out = input.apply_op1(Attached1 {
        name,
        value: Slot::new(value),
        backward: backward.clone(),
    })?;
    tape::note(&out, &[input], || tape::Back::One(backward));
    Ok(out)
}

/// As [`attach1`] for a value computed from two inputs.
pub fn attach2(
    name: &'static str,
    a: &Tensor,
    b: &Tensor,
    value: impl Into<Value>,
    backward: Backward2,
) -> Result<Tensor> {
    let value = value.into();
    if grad_off() || (!a.track_op() && !b.track_op()) {
        return value.into_tensor();
    }
    let backward: tape::Back2 = backward.into();
    let out = a.apply_op2(
        b,
        Attached2 {
            name,
            value: Slot::new(value),
            backward: backward.clone(),
            tracked: [a.track_op(), b.track_op()],
        },
    )?;
    tape::note(&out, &[a, b], || tape::Back::Two(backward));
    Ok(out)
}

/// A backward pass for three inputs: `(a, b, c, output_grad) → (a_grad, b_grad, c_grad)`.
pub type Backward3 = Box<
    dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<(Tensor, Tensor, Tensor)> + Send + Sync,
>;

/// As [`attach1`] for a value computed from three inputs.
pub fn attach3(
    name: &'static str,
    inputs: [&Tensor; 3],
    value: impl Into<Value>,
    backward: Backward3,
) -> Result<Tensor> {
    let value = value.into();
    let [a, b, c] = inputs;
    if grad_off() || (!a.track_op() && !b.track_op() && !c.track_op()) {
        return value.into_tensor();
    }
    let backward: tape::Back3 = backward.into();
    let out = a.apply_op3(
        b,
        c,
        Attached3 {
            name,
            value: Slot::new(value),
            backward: backward.clone(),
            tracked: [a.track_op(), b.track_op(), c.track_op()],
        },
    )?;
    tape::note(&out, &[a, b, c], || tape::Back::Three(backward));
    Ok(out)
}

struct Attached3 {
    name: &'static str,
    /// Taken (and dropped) by the forward once copied into the op's output: keeping it
    /// would hold every layer's output twice for as long as the graph lives.
    value: Slot,
    backward: tape::Back3,
    /// Which inputs record a gradient ([`Tensor::track_op`] at attach time).
    tracked: [bool; 3],
}

impl candle_core::CustomOp3 for Attached3 {
    fn name(&self) -> &'static str {
        self.name
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
        self.value.take_cpu()
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::cuda_backend::CudaStorage,
        _: &Layout,
        _: &candle_core::cuda_backend::CudaStorage,
        _: &Layout,
        _: &candle_core::cuda_backend::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::cuda_backend::CudaStorage, Shape)> {
        self.value.take_cuda()
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (ga, gb, gc) =
            (self.backward)(&a.detach(), &b.detach(), &c.detach(), &grad_res.detach())?;
        let [ta, tb, tc] = self.tracked;
        Ok((wanted(ta, ga), wanted(tb, gb), wanted(tc, gc)))
    }
}

/// A CPU kernel's output buffer and its shape: attached as the op's output without a copy.
pub struct Raw {
    storage: CpuStorage,
    shape: Shape,
}

impl Raw {
    /// The buffer as an ordinary tensor (for a value that gets no backward).
    pub fn into_tensor(self) -> Result<Tensor> {
        let Raw { storage, shape } = self;
        let cpu = candle_core::Device::Cpu;
        match storage {
            CpuStorage::F32(v) => Tensor::from_vec(v, shape, &cpu),
            CpuStorage::F64(v) => Tensor::from_vec(v, shape, &cpu),
            _ => bail!("annt's CPU kernels give f32 or f64 values"),
        }
    }
}

/// A forward value for [`attach1`]/[`attach2`]/[`attach3`]: a tensor (copied into the op's
/// output) or a CPU kernel's own buffer (moved into it).
pub enum Value {
    Tensor(Tensor),
    Raw(Raw),
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Self {
        Value::Tensor(t)
    }
}

impl From<Raw> for Value {
    fn from(r: Raw) -> Self {
        Value::Raw(r)
    }
}

impl Value {
    fn into_tensor(self) -> Result<Tensor> {
        match self {
            Value::Tensor(t) => Ok(t),
            Value::Raw(r) => r.into_tensor(),
        }
    }
}

/// A forward value waiting to become its op's output.
struct Slot(std::sync::Mutex<Option<Value>>);

impl Slot {
    fn new(value: Value) -> Self {
        Self(std::sync::Mutex::new(Some(value)))
    }
    fn take(&self) -> Result<Value> {
        match self.0.lock().ok().and_then(|mut v| v.take()) {
            Some(v) => Ok(v),
            None => bail!("an attached value was used twice"),
        }
    }
    /// The CPU output: a raw buffer as it is, a tensor copied.
    fn take_cpu(&self) -> Result<(CpuStorage, Shape)> {
        match self.take()? {
            Value::Raw(Raw { storage, shape }) => Ok((storage, shape)),
            Value::Tensor(t) => cpu_copy(&t),
        }
    }
    #[cfg(feature = "cuda")]
    fn take_cuda(&self) -> Result<(candle_core::cuda_backend::CudaStorage, Shape)> {
        match self.take()? {
            Value::Tensor(t) => cuda_copy(&t),
            Value::Raw(_) => bail!("a CPU kernel's value was attached to a CUDA op"),
        }
    }
}

/// Copies a contiguous tensor's elements into a fresh `CpuStorage`.
fn cpu_copy(value: &Tensor) -> Result<(CpuStorage, Shape)> {
    let flat = value.flatten_all()?;
    let storage = match value.dtype() {
        DType::F32 => CpuStorage::F32(flat.to_vec1()?),
        DType::F64 => CpuStorage::F64(flat.to_vec1()?),
        DType::F16 => CpuStorage::F16(flat.to_vec1()?),
        DType::BF16 => CpuStorage::BF16(flat.to_vec1()?),
        other => bail!("attached values must be floating point, got {other:?}"),
    };
    Ok((storage, value.shape().clone()))
}

/// A device-to-device copy of a CUDA value (queued on its stream; no host round trip).
#[cfg(feature = "cuda")]
fn cuda_copy(value: &Tensor) -> Result<(candle_core::cuda_backend::CudaStorage, Shape)> {
    use candle_core::backend::BackendStorage;
    let value = value.contiguous()?;
    let (storage, layout) = value.storage_and_layout();
    match &*storage {
        Storage::Cuda(s) => Ok((s.try_clone(layout)?, value.shape().clone())),
        _ => bail!("an attached value on a CUDA op is not on the GPU"),
    }
}

struct Attached1 {
    name: &'static str,
    /// Taken (and dropped) by the forward once copied into the op's output: keeping it
    /// would hold every layer's output twice for as long as the graph lives.
    value: Slot,
    backward: tape::Back1,
}

impl CustomOp1 for Attached1 {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.value.take_cpu()
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::cuda_backend::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::cuda_backend::CudaStorage, Shape)> {
        self.value.take_cuda()
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        (self.backward)(&arg.detach(), &grad_res.detach()).map(Some)
    }
}

struct Attached2 {
    name: &'static str,
    /// Taken (and dropped) by the forward once copied into the op's output: keeping it
    /// would hold every layer's output twice for as long as the graph lives.
    value: Slot,
    backward: tape::Back2,
    /// Which inputs record a gradient ([`Tensor::track_op`] at attach time).
    tracked: [bool; 2],
}

impl CustomOp2 for Attached2 {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.value.take_cpu()
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::cuda_backend::CudaStorage,
        _: &Layout,
        _: &candle_core::cuda_backend::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::cuda_backend::CudaStorage, Shape)> {
        self.value.take_cuda()
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (ga, gb) = (self.backward)(&a.detach(), &b.detach(), &grad_res.detach())?;
        let [ta, tb] = self.tracked;
        Ok((wanted(ta, ga), wanted(tb, gb)))
    }
}

/// The gradient of an input that records one; `None` for one that does not (the images a
/// network starts from), so Candle's backward neither zero-fills a gradient for it nor adds
/// into it. (A backward may then leave that input's gradient uncomputed: the convolution
/// does, `conv_backward_joined`'s `want_dx`.)
fn wanted(tracked: bool, grad: Tensor) -> Option<Tensor> {
    tracked.then_some(grad)
}

/// Runs a slice kernel on a CPU tensor of `f32` or `f64` and wraps the result; the kernel
/// receives the (contiguous) input as a slice of its own element type, without a copy.
pub fn map_real<F32, F64>(
    x: &Tensor,
    shape: impl Into<Shape>,
    f32_kernel: F32,
    f64_kernel: F64,
) -> Result<Tensor>
where
    F32: FnOnce(&[f32]) -> Vec<f32>,
    F64: FnOnce(&[f64]) -> Vec<f64>,
{
    map_real_n(&[x], shape, |v| f32_kernel(v[0]), |v| f64_kernel(v[0]))
}

/// As [`map_real`] for a kernel over two tensors (the second is cast to the first's dtype).
pub fn map_real2<F32, F64>(
    a: &Tensor,
    b: &Tensor,
    shape: impl Into<Shape>,
    f32_kernel: F32,
    f64_kernel: F64,
) -> Result<Tensor>
where
    F32: FnOnce(&[f32], &[f32]) -> Vec<f32>,
    F64: FnOnce(&[f64], &[f64]) -> Vec<f64>,
{
    map_real_n(
        &[a, b],
        shape,
        |v| f32_kernel(v[0], v[1]),
        |v| f64_kernel(v[0], v[1]),
    )
}

/// As [`map_real_n`], the result kept as the kernel's own buffer ([`Raw`]) for
/// [`attach1`]/[`attach2`]/[`attach3`] to move into the graph.
pub fn raw_n<F32, F64>(
    tensors: &[&Tensor],
    shape: impl Into<Shape>,
    f32_kernel: F32,
    f64_kernel: F64,
) -> Result<Raw>
where
    F32: FnOnce(&[&[f32]]) -> Vec<f32>,
    F64: FnOnce(&[&[f64]]) -> Vec<f64>,
{
    let shape = shape.into();
    let storage = with_slices(tensors, |d| match d {
        Slices::F32(v) => Ok(CpuStorage::F32(f32_kernel(&v))),
        Slices::F64(v) => Ok(CpuStorage::F64(f64_kernel(&v))),
    })?;
    let len = match &storage {
        CpuStorage::F32(v) => v.len(),
        CpuStorage::F64(v) => v.len(),
        _ => 0,
    };
    if len != shape.elem_count() {
        bail!(
            "a CPU kernel gave {len} values for shape {shape:?} ({} expected)",
            shape.elem_count()
        );
    }
    Ok(Raw { storage, shape })
}

/// As [`raw_n`] for one tensor.
pub fn raw<F32, F64>(
    x: &Tensor,
    shape: impl Into<Shape>,
    f32_kernel: F32,
    f64_kernel: F64,
) -> Result<Raw>
where
    F32: FnOnce(&[f32]) -> Vec<f32>,
    F64: FnOnce(&[f64]) -> Vec<f64>,
{
    raw_n(&[x], shape, |v| f32_kernel(v[0]), |v| f64_kernel(v[0]))
}

/// As [`raw_n`] for two tensors.
pub fn raw2<F32, F64>(
    a: &Tensor,
    b: &Tensor,
    shape: impl Into<Shape>,
    f32_kernel: F32,
    f64_kernel: F64,
) -> Result<Raw>
where
    F32: FnOnce(&[f32], &[f32]) -> Vec<f32>,
    F64: FnOnce(&[f64], &[f64]) -> Vec<f64>,
{
    raw_n(
        &[a, b],
        shape,
        |v| f32_kernel(v[0], v[1]),
        |v| f64_kernel(v[0], v[1]),
    )
}

/// The contiguous elements of CPU tensors of one real dtype, in order.
enum Slices<'a> {
    F32(Vec<&'a [f32]>),
    F64(Vec<&'a [f64]>),
}

/// Calls `f` with the tensors' elements as slices (all cast to the first's dtype and made
/// contiguous; no copy where they already are).
fn with_slices<R>(tensors: &[&Tensor], f: impl FnOnce(Slices<'_>) -> Result<R>) -> Result<R> {
    let Some(first) = tensors.first() else {
        bail!("annt's CPU kernels need at least one tensor")
    };
    let dtype = first.dtype();
    let owned = tensors
        .iter()
        .map(|t| t.to_dtype(dtype)?.contiguous())
        .collect::<Result<Vec<_>>>()?;
    let guards: Vec<_> = owned.iter().map(|t| t.storage_and_layout()).collect();
    let mut ranges = Vec::with_capacity(guards.len());
    for (_, layout) in &guards {
        let Some(range) = layout.contiguous_offsets() else {
            bail!("annt's CPU kernels need a contiguous tensor")
        };
        ranges.push(range);
    }
    macro_rules! slices {
        ($variant:ident) => {{
            let mut out = Vec::with_capacity(guards.len());
            for ((storage, _), (start, end)) in guards.iter().zip(&ranges) {
                match &**storage {
                    Storage::Cpu(CpuStorage::$variant(all)) => out.push(&all[*start..*end]),
                    _ => bail!("annt's CPU kernels need CPU tensors of one dtype"),
                }
            }
            out
        }};
    }
    match dtype {
        DType::F32 => f(Slices::F32(slices!(F32))),
        DType::F64 => f(Slices::F64(slices!(F64))),
        other => bail!("annt's CPU kernels take f32 or f64, got {other:?}"),
    }
}

/// As [`map_real`] for a kernel over any number of tensors (all cast to the first's dtype);
/// the kernel receives their contiguous elements as slices, in order.
pub fn map_real_n<F32, F64>(
    tensors: &[&Tensor],
    shape: impl Into<Shape>,
    f32_kernel: F32,
    f64_kernel: F64,
) -> Result<Tensor>
where
    F32: FnOnce(&[&[f32]]) -> Vec<f32>,
    F64: FnOnce(&[&[f64]]) -> Vec<f64>,
{
    raw_n(tensors, shape, f32_kernel, f64_kernel)?.into_tensor()
}

/// A backward pass for any number of inputs: `output_grad → one gradient per input` (in the
/// order the inputs were given; the closure holds the inputs it needs).
pub type BackwardN = Box<dyn Fn(&Tensor) -> Result<Vec<Tensor>> + Send + Sync>;

/// Gradients the first node of an [`attach_many`] computed for its other inputs, waiting
/// for the carrier nodes to hand them on.
type Pending = std::sync::Arc<std::sync::Mutex<Vec<Option<Tensor>>>>;

/// As [`attach1`] for a value computed from any number of inputs: a whole ViT encoder
/// block (its input and twelve parameters) as one node of the graph.
///
/// Candle's custom ops take at most three inputs, so the value is attached to `inputs[0]`
/// and one *carrier*: a one-element tensor computed from the other inputs through a tree
/// of three-input nodes. The value's backward computes every gradient at once, returns the
/// first input's and parks the others; each carrier node's backward then returns the parked
/// gradients of its own inputs. Candle runs a node's backward before those of its inputs,
/// so the gradients are always parked before a carrier asks for them. Each carrier costs a
/// one-element gradient; the op-by-op graph it replaces zero-filled and added a gradient
/// the size of an activation for every edge.
pub fn attach_many(
    name: &'static str,
    inputs: &[&Tensor],
    value: impl Into<Value>,
    backward: BackwardN,
) -> Result<Tensor> {
    let value = value.into();
    let Some((first, rest)) = inputs.split_first() else {
        bail!("{name}: attach_many needs at least one input");
    };
    if grad_off() || !inputs.iter().any(|t| t.track_op()) {
        return value.into_tensor();
    }
    if rest.is_empty() {
        return attach1(
            name,
            first,
            value,
            Box::new(move |_x, grad| {
                backward(grad)?
                    .into_iter()
                    .next()
                    .ok_or_else(|| candle_core::Error::Msg(format!("{name}: no gradient")))
            }),
        );
    }
    let pending: Pending = std::sync::Arc::new(std::sync::Mutex::new(vec![None; rest.len()]));
    // Leaves: the other inputs in threes; then carriers of carriers until one is left.
    let mut level: Vec<Carried> = rest
        .iter()
        .enumerate()
        .map(|(i, t)| Carried::Input(i, (*t).clone()))
        .collect();
    while level.len() > 1 || matches!(level.first(), Some(Carried::Input(..))) {
        let mut next = Vec::with_capacity(level.len().div_ceil(3));
        for group in level.chunks(3) {
            next.push(Carried::Carrier(carrier(name, group, &pending)?));
        }
        level = next;
    }
    let Some(Carried::Carrier(carrier)) = level.pop() else {
        bail!("{name}: no carrier was built");
    };
    let count = rest.len();
    attach2(
        name,
        first,
        &carrier,
        value,
        Box::new(move |_first, carrier, grad| {
            let mut grads = backward(grad)?;
            if grads.len() != count + 1 {
                bail!(
                    "{name}: the backward gave {} gradients for {} inputs",
                    grads.len(),
                    count + 1
                );
            }
            let rest = grads.split_off(1);
            let mut slots = pending
                .lock()
                .map_err(|_| candle_core::Error::Msg(format!("{name}: gradient slots poisoned")))?;
            for (slot, g) in slots.iter_mut().zip(rest) {
                *slot = Some(g);
            }
            let first = grads
                .pop()
                .ok_or_else(|| candle_core::Error::Msg(format!("{name}: no gradient")))?;
            Ok((first, carrier.zeros_like()?))
        }),
    )
}

/// What a level of [`attach_many`]'s carrier tree holds: an input (its index among the
/// carried ones) or a carrier node below.
enum Carried {
    Input(usize, Tensor),
    Carrier(Tensor),
}

/// One carrier node over up to three inputs or carriers: a one-element zero whose backward
/// hands each input its parked gradient (and each carrier below a one-element zero).
fn carrier(name: &'static str, group: &[Carried], pending: &Pending) -> Result<Tensor> {
    let tensors: Vec<Tensor> = group
        .iter()
        .map(|c| match c {
            Carried::Input(_, t) | Carried::Carrier(t) => t.clone(),
        })
        .collect();
    let slots: Vec<Option<usize>> = group
        .iter()
        .map(|c| match c {
            Carried::Input(i, _) => Some(*i),
            Carried::Carrier(_) => None,
        })
        .collect();
    let device = tensors[0].device().clone();
    let zero = Tensor::zeros(1, DType::F32, &device)?;
    let pending = pending.clone();
    let take = move |k: usize, t: &Tensor| -> Result<Tensor> {
        match slots[k] {
            None => Tensor::zeros(1, DType::F32, t.device()),
            Some(i) => {
                let mut parked = pending.lock().map_err(|_| {
                    candle_core::Error::Msg(format!("{name}: gradient slots poisoned"))
                })?;
                parked.get_mut(i).and_then(Option::take).ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "{name}: no gradient parked for input {}",
                        i + 1
                    ))
                })
            }
        }
    };
    match tensors.as_slice() {
        [a] => attach1(name, a, zero, Box::new(move |a, _g| take(0, a))),
        [a, b] => attach2(
            name,
            a,
            b,
            zero,
            Box::new(move |a, b, _g| Ok((take(0, a)?, take(1, b)?))),
        ),
        [a, b, c] => attach3(
            name,
            [a, b, c],
            zero,
            Box::new(move |a, b, c, _g| Ok((take(0, a)?, take(1, b)?, take(2, c)?))),
        ),
        _ => bail!("{name}: a carrier takes one to three inputs"),
    }
}
