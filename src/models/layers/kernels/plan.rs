//! The device-independent half of the cuDNN convolution path: shapes, the math mode each
//! precision gets, the key the algorithm cache is indexed by and the workspace sizing. It is
//! plain Rust so the CPU build tests it (`cargo test`), and `kernels::cuda::conv` uses it to
//! build descriptors.

use candle_core::DType;

/// How cuDNN may compute a convolution. Chosen per call from the dtype and the `tf32` speed
/// mode, never left to cuDNN's default (which lets an f32 convolution use TF32 silently).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MathMode {
    /// FMA only: true f32 (or f64) arithmetic — the "fp32" arm.
    Fma,
    /// TF32 tensor cores for f32 data — the `tf32` speed mode.
    Tf32,
    /// Tensor cores for f16/bf16 data with f32 accumulation (the compute type is f32).
    HalfTensorOps,
}

impl MathMode {
    pub fn for_dtype(dtype: DType, tf32: bool) -> Self {
        match dtype {
            DType::F16 | DType::BF16 => MathMode::HalfTensorOps,
            DType::F32 if tf32 => MathMode::Tf32,
            _ => MathMode::Fma,
        }
    }

    /// The dtype cuDNN accumulates in (the convolution descriptor's compute type).
    pub fn accumulate_dtype(self, dtype: DType) -> DType {
        if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        }
    }
}

/// One convolution's geometry (NCHW input, OIHW weight, square stride and padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl ConvGeometry {
    /// From the input and weight shapes; `None` where the weight does not fit the input or
    /// the channels do not split into `groups`.
    pub fn new(
        x: (usize, usize, usize, usize),
        w: (usize, usize, usize, usize),
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> Option<Self> {
        let (n, c, h, wd) = x;
        let (c_out, c_per_group, kh, kw) = w;
        let fits = stride > 0
            && groups > 0
            && c == c_per_group * groups
            && c_out % groups == 0
            && h + 2 * pad >= kh
            && wd + 2 * pad >= kw;
        fits.then_some(Self {
            n,
            c,
            h,
            w: wd,
            c_out,
            kh,
            kw,
            stride,
            pad,
            groups,
        })
    }
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
    pub fn x_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    /// cuDNN's filter descriptor: `c_out × c/groups × kh × kw`.
    pub fn w_dims(&self) -> [usize; 4] {
        [self.c_out, self.c / self.groups, self.kh, self.kw]
    }
    pub fn y_dims(&self) -> [usize; 4] {
        [self.n, self.c_out, self.out_h(), self.out_w()]
    }
    /// The dims as the `int`s cuDNN's descriptors take; `None` past `i32::MAX`.
    pub fn as_c_ints(dims: [usize; 4]) -> Option<[i32; 4]> {
        let mut out = [0i32; 4];
        for (o, d) in out.iter_mut().zip(dims) {
            *o = i32::try_from(d).ok()?;
        }
        Some(out)
    }
}

/// The three passes of a convolution, each with its own algorithm choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    Forward,
    BackwardData,
    BackwardFilter,
}

/// The algorithm cache's key: everything cuDNN's choice depends on. A new batch size (the
/// last, smaller batch of an epoch) is a new key, so it gets its own algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AlgoKey {
    pub geometry: ConvGeometry,
    pub dtype: DTypeKey,
    pub math: MathMode,
    pub pass: Pass,
}

/// `DType` as a hashable key (Candle's `DType` is `Hash` but keeping the cache's key plain
/// keeps it independent of Candle's representation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DTypeKey {
    F16,
    BF16,
    F32,
    F64,
}

impl DTypeKey {
    pub fn of(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F16 => Some(Self::F16),
            DType::BF16 => Some(Self::BF16),
            DType::F32 => Some(Self::F32),
            DType::F64 => Some(Self::F64),
            _ => None,
        }
    }
}

/// The size to allocate for a workspace of at least `needed` bytes when `current` bytes are
/// allocated: none while the current one suffices, else the need rounded up to whole MiB so
/// that slightly larger needs later do not reallocate every call.
pub fn workspace_to_allocate(current: usize, needed: usize) -> Option<usize> {
    const MIB: usize = 1 << 20;
    (needed > current).then(|| needed.div_ceil(MIB) * MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_precision_gets_an_honest_math_mode() {
        assert_eq!(MathMode::for_dtype(DType::F32, false), MathMode::Fma);
        assert_eq!(MathMode::for_dtype(DType::F32, true), MathMode::Tf32);
        assert_eq!(
            MathMode::for_dtype(DType::BF16, false),
            MathMode::HalfTensorOps
        );
        assert_eq!(
            MathMode::for_dtype(DType::F16, true),
            MathMode::HalfTensorOps
        );
        assert_eq!(MathMode::for_dtype(DType::F64, true), MathMode::Fma);
        // Half precision accumulates in f32, never in half.
        assert_eq!(
            MathMode::HalfTensorOps.accumulate_dtype(DType::F16),
            DType::F32
        );
        assert_eq!(MathMode::Fma.accumulate_dtype(DType::F64), DType::F64);
    }

    #[test]
    fn geometry_gives_pytorch_output_shapes_and_refuses_what_does_not_fit() {
        // ImageNet stem: 7×7 stride 2 pad 3 on 224 → 112.
        let g = ConvGeometry::new((2, 3, 224, 224), (64, 3, 7, 7), 2, 3, 1).expect("fits");
        assert_eq!(g.y_dims(), [2, 64, 112, 112]);
        // Depthwise 3×3 stride 2 pad 1 on 15 → 8, filter c/groups = 1.
        let d = ConvGeometry::new((1, 32, 15, 15), (32, 1, 3, 3), 2, 1, 32).expect("fits");
        assert_eq!(d.y_dims(), [1, 32, 8, 8]);
        assert_eq!(d.w_dims(), [32, 1, 3, 3]);
        // 1×1 stride 1.
        let p = ConvGeometry::new((4, 8, 5, 5), (16, 8, 1, 1), 1, 0, 1).expect("fits");
        assert_eq!(p.y_dims(), [4, 16, 5, 5]);
        assert!(ConvGeometry::new((1, 3, 4, 4), (8, 3, 7, 7), 1, 0, 1).is_none());
        assert!(ConvGeometry::new((1, 6, 8, 8), (6, 4, 3, 3), 1, 1, 2).is_none());
        assert!(ConvGeometry::new((1, 3, 8, 8), (8, 3, 3, 3), 0, 1, 1).is_none());
        assert_eq!(ConvGeometry::as_c_ints([1, 2, 3, 4]), Some([1, 2, 3, 4]));
        assert_eq!(ConvGeometry::as_c_ints([1 << 31, 1, 1, 1]), None);
    }

    #[test]
    fn the_algorithm_cache_tells_apart_what_changes_the_choice() {
        use std::collections::HashSet;
        let g = ConvGeometry::new((8, 16, 32, 32), (32, 16, 3, 3), 1, 1, 1).expect("fits");
        let last_batch = ConvGeometry { n: 3, ..g };
        let key = |geometry, dtype, math, pass| AlgoKey {
            geometry,
            dtype,
            math,
            pass,
        };
        let keys: HashSet<AlgoKey> = [
            key(g, DTypeKey::F32, MathMode::Fma, Pass::Forward),
            key(g, DTypeKey::F32, MathMode::Tf32, Pass::Forward),
            key(g, DTypeKey::BF16, MathMode::HalfTensorOps, Pass::Forward),
            key(g, DTypeKey::F32, MathMode::Fma, Pass::BackwardData),
            key(g, DTypeKey::F32, MathMode::Fma, Pass::BackwardFilter),
            key(last_batch, DTypeKey::F32, MathMode::Fma, Pass::Forward),
            key(g, DTypeKey::F32, MathMode::Fma, Pass::Forward),
        ]
        .into_iter()
        .collect();
        assert_eq!(keys.len(), 6, "the repeated key is the only duplicate");
        assert_eq!(DTypeKey::of(DType::U8), None);
    }

    #[test]
    fn the_workspace_grows_in_whole_mebibytes_and_only_when_needed() {
        assert_eq!(workspace_to_allocate(0, 0), None);
        assert_eq!(workspace_to_allocate(0, 1), Some(1 << 20));
        assert_eq!(workspace_to_allocate(1 << 20, 1 << 20), None);
        assert_eq!(workspace_to_allocate(1 << 20, (1 << 20) + 1), Some(2 << 20));
        assert_eq!(workspace_to_allocate(8 << 20, 3 << 20), None);
    }
}
