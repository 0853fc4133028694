//! Kernels compiled once per vector instruction set and picked at run time.
//!
//! The crate is built for baseline x86-64, so the element-wise loops annt writes itself
//! were 4 lanes wide on CPUs with 16. That matters where a loop computes a lot per element
//! (GELU's and SiLU's `erf`/`exp`); batch norm's passes, compiled this way, measured no
//! faster (memory bound: 15.3 % against 14.7 % of a resnet8-tiny bf16 step's samples), so
//! they stay plain. [`simd_fn`](crate::simd_fn)
//! compiles one body for AVX-512F, for AVX2 with FMA and for the baseline, and calls the
//! widest this CPU has (`ANNT_CPU_SIMD=base` forces the baseline, for A/B runs). The loops
//! must be plain element-wise arithmetic: then every variant gives the same bits, because
//! Rust never contracts `a * b + c` into a fused multiply-add on its own.
//!
//! The macro's `unsafe` calls are this module's: each is guarded by the feature check
//! in [`isa`].

/// Defines `$vis fn $name` that runs `$body` compiled for AVX-512F, or for AVX2 with FMA,
/// when the CPU has them, and for the baseline x86-64 (SSE2) otherwise. Functions the body
/// calls must be `#[inline(always)]` (as `approx`'s element formulas are) to be compiled
/// with each variant's instructions. (GELU's forward and backward were 9.5 % of a ViT-Ti/4
/// step on the CPU at 4 lanes, 3 % at 16.)
#[macro_export]
#[doc(hidden)]
macro_rules! simd_fn {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $crate::simd_fn! { $(#[$doc])* $vis fn $name($($arg: $ty),*) -> () $body }
    };
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$doc])*
        #[allow(unsafe_code)] // calls of the `target_feature` variants (see SAFETY)
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                match $crate::models::layers::kernels::simd::isa() {
                    // SAFETY: `isa` read the CPU's feature flags: this CPU has AVX-512F.
                    $crate::models::layers::kernels::simd::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above, for AVX2 and FMA.
                    $crate::models::layers::kernels::simd::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::models::layers::kernels::simd::Isa::Base => {}
                }
            }
            body($($arg),*)
        }
    };
}

/// The widest vector instructions [`simd_fn`](crate::simd_fn) kernels may use on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Base,
}

/// Detected once (`is_x86_feature_detected!` caches too, but this is a single load).
pub fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var("ANNT_CPU_SIMD").as_deref() == Ok("base") {
                return Isa::Base;
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Base
    })
}
