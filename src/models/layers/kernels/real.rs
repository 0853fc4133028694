//! The scalar types annt's CPU kernels are generic over, and each thread's scratch vectors
//! of them: shared by the convolution kernels (`cpu`) and the matrix products (`gemm`),
//! which is why it lives apart from both.

/// Scalar types the kernels run on: `f32` (training) and `f64` (gradient checks).
pub trait Real: num_traits::Float + std::ops::AddAssign + Send + Sync + 'static {
    /// The slice as f32 when the scalar is f32: the bf16 units take f32 operands only.
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
    /// This thread's scratch vectors of this type (see `Scratch`).
    fn scratch() -> &'static std::thread::LocalKey<Slots<Self>>;
    /// The error function (GELU's Φ): [`super::approx::erf`] in f32, libm in f64.
    fn erf(self) -> Self;
    /// `eˣ`: [`super::approx::exp`] in f32 (vectorised in loops), std's in f64.
    fn exp_fast(self) -> Self;
}

/// Scratch vectors kept per thread and scalar type.
pub type Slots<T> = std::cell::RefCell<[Vec<T>; SCRATCH_SLOTS]>;
/// Scratch vectors per thread and scalar type (`cpu::Scratch` takes them).
pub const SCRATCH_SLOTS: usize = 4;

thread_local! {
    static SCRATCH_F32: Slots<f32> =
        const { std::cell::RefCell::new([const { Vec::new() }; SCRATCH_SLOTS]) };
    static SCRATCH_F64: Slots<f64> =
        const { std::cell::RefCell::new([const { Vec::new() }; SCRATCH_SLOTS]) };
}

impl Real for f32 {
    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_f32_mut(s: &mut [f32]) -> Option<&mut [f32]> {
        Some(s)
    }
    fn scratch() -> &'static std::thread::LocalKey<Slots<f32>> {
        &SCRATCH_F32
    }
    #[inline]
    fn erf(self) -> f32 {
        super::approx::erf(self)
    }
    #[inline]
    fn exp_fast(self) -> f32 {
        super::approx::exp(self)
    }
}
impl Real for f64 {
    fn as_f32(_: &[f64]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [f64]) -> Option<&mut [f32]> {
        None
    }
    fn scratch() -> &'static std::thread::LocalKey<Slots<f64>> {
        &SCRATCH_F64
    }
    #[inline]
    fn erf(self) -> f64 {
        libm::erf(self)
    }
    #[inline]
    fn exp_fast(self) -> f64 {
        self.exp()
    }
}
