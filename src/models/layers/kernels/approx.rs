//! Branch-free f32 forms of `exp` and `erf` that the compiler vectorises.
//!
//! libm's `erff` and glibc's `expf` are scalar calls with branches: GELU's forward and
//! backward through them were 12 % of a ViT-Ti/4 training step on the CPU (more than its
//! attention products). These are plain arithmetic on `f32`, so a loop over a slice becomes
//! SIMD code. Accuracy, checked against libm over the whole range in the tests: `exp` within
//! relative 3e-7, `erf` within 6e-7 absolute — below f32 training's noise and
//! the 1e-5 relative tolerance the layers are tested with. The f64 kernels (gradient checks)
//! keep libm.

/// `1.5 · 2²³`: adding and subtracting it rounds an f32 of magnitude < 2²² to the nearest
/// integer (ties to even) without a call or a branch.
const ROUND: f32 = 12_582_912.0;

/// `eˣ`, relative error < 3e-7; inputs below −87 give `e⁻⁸⁷` (≈ 1.6e-38, not 0) and above 88
/// give `e⁸⁸`, so the result is always a normal number.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // x = n·ln 2 + r with |r| ≤ ln 2 / 2; ln 2 split in two (Cody–Waite) so that n·ln2_hi is
    // exact and r keeps its low bits.
    let shifted = x * std::f32::consts::LOG2_E + ROUND; // ROUND + n, exactly
    let n = shifted - ROUND;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    // eʳ by its Taylor series to r⁷: the first omitted term is below 4e-9 for |r| ≤ 0.35.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2ⁿ from its exponent bits; n ∈ [−126, 127] after the clamp. `shifted`'s bits are
    // ROUND's plus n (its ulp is 1), which gives n without a float-to-int conversion (a
    // saturating `as` does not vectorise).
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    let scale = f32::from_bits(biased << 23);
    p * scale
}

/// The error function, absolute error < 6e-7 (the formula's 1.5e-7 plus f32 rounding): Abramowitz & Stegun 7.1.26,
/// `erf(x) = 1 − t·(a₁ + t·(a₂ + …)) · e^(−x²)` with `t = 1 / (1 + p·|x|)`, odd in `x`.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * exp(-a * a)).copysign(x)
}

crate::simd_fn! {
    /// GELU, `x·Φ(x)` with `Φ(x) = (1 + erf(x/√2))/2`, of every `x` into `out`. A plain loop
    /// over f32 slices, its own function: inside the generic element-wise kernels the
    /// compiler kept [`erf`] scalar.
    pub fn gelu(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

crate::simd_fn! {
    /// GELU's input gradient `g·(Φ(x) + x·φ(x))` into `out`, `φ` the standard normal density.
    pub fn gelu_grad(x: &[f32], g: &[f32], out: &mut [f32]) {
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        for ((o, &v), &gv) in out.iter_mut().zip(x).zip(g) {
            let cdf = 0.5 * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = INV_SQRT_2PI * exp(-0.5 * v * v);
            *o = gv * (cdf + v * pdf);
        }
    }
}

crate::simd_fn! {
    /// SiLU, `x·σ(x)` with `σ(x) = 1/(1 + e⁻ˣ)`, of every `x` into `out`.
    pub fn silu(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v / (1.0 + exp(-v));
        }
    }
}

crate::simd_fn! {
    /// SiLU's input gradient `g·σ(x)·(1 + x·(1 − σ(x)))` into `out`.
    pub fn silu_grad(x: &[f32], g: &[f32], out: &mut [f32]) {
        for ((o, &v), &gv) in out.iter_mut().zip(x).zip(g) {
            let s = 1.0 / (1.0 + exp(-v));
            *o = gv * s * (1.0 + v * (1.0 - s));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_within_3e7_relative_of_libm_over_the_whole_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let got = super::exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_7;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::exp(-1000.0) > 0.0 && super::exp(-1000.0) < 1e-37);
        assert!(super::exp(f32::NAN).is_nan());
    }

    #[test]
    fn erf_is_within_6e7_of_libm_and_odd() {
        let mut worst = 0.0f64;
        let mut x = -7.0f32;
        while x <= 7.0 {
            let want = libm::erf(x as f64);
            let got = super::erf(x) as f64;
            worst = worst.max((got - want).abs());
            assert_eq!(super::erf(-x), -super::erf(x), "odd at {x}");
            x += 0.000_37;
        }
        assert!(worst < 6e-7, "worst absolute error {worst}");
        assert_eq!(super::erf(f32::INFINITY), 1.0);
        assert_eq!(super::erf(f32::NEG_INFINITY), -1.0);
        assert!(super::erf(f32::NAN).is_nan());
    }

    /// SiLU and its gradient against the f64 formulas over [−90, 90]: within 1e-6 of the
    /// larger of the value and 1 (relative for large values, absolute near zero).
    #[test]
    fn silu_and_its_gradient_match_the_f64_formulas() {
        let xs: Vec<f32> = (0..180_000).map(|i| -90.0 + i as f32 * 0.001).collect();
        let (mut y, mut dy) = (vec![0.0; xs.len()], vec![0.0; xs.len()]);
        super::silu(&xs, &mut y);
        super::silu_grad(&xs, &vec![1.0; xs.len()], &mut dy);
        for ((&x, &v), &d) in xs.iter().zip(&y).zip(&dy) {
            let x64 = f64::from(x);
            let s = 1.0 / (1.0 + (-x64).exp());
            let (want, want_d) = (x64 * s, s * (1.0 + x64 * (1.0 - s)));
            let err = (f64::from(v) - want).abs() / want.abs().max(1.0);
            let err_d = (f64::from(d) - want_d).abs() / want_d.abs().max(1.0);
            assert!(
                err < 1e-6 && err_d < 1e-6,
                "at {x}: {v} vs {want}, {d} vs {want_d}"
            );
        }
    }

    /// GELU and its gradient over long slices (the vector loops of whichever instruction
    /// set this CPU picks) against the f64 formulas, and bit for bit against the same
    /// kernels one element at a time (their scalar tails): vectorising changes no result.
    #[test]
    fn gelu_kernels_match_f64_and_their_own_scalar_tails() {
        let xs: Vec<f32> = (0..40_003).map(|i| -10.0 + i as f32 * 0.0005).collect();
        let gs: Vec<f32> = xs.iter().map(|v| (v * 3.7).sin()).collect();
        let (mut y, mut dy) = (vec![0.0; xs.len()], vec![0.0; xs.len()]);
        super::gelu(&xs, &mut y);
        super::gelu_grad(&xs, &gs, &mut dy);
        for (i, &x) in xs.iter().enumerate() {
            let x64 = f64::from(x);
            let cdf = 0.5 * (1.0 + libm::erf(x64 / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * x64 * x64).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let (want, want_d) = (x64 * cdf, f64::from(gs[i]) * (cdf + x64 * pdf));
            assert!(
                (f64::from(y[i]) - want).abs() < 2e-6 * want.abs().max(1.0)
                    && (f64::from(dy[i]) - want_d).abs() < 2e-6 * want_d.abs().max(1.0),
                "at {x}: {} vs {want}, {} vs {want_d}",
                y[i],
                dy[i]
            );
            let (mut one, mut one_d) = ([0.0f32], [0.0f32]);
            super::gelu(&xs[i..=i], &mut one);
            super::gelu_grad(&xs[i..=i], &gs[i..=i], &mut one_d);
            assert_eq!(
                (one[0].to_bits(), one_d[0].to_bits()),
                (y[i].to_bits(), dy[i].to_bits()),
                "at {x}"
            );
        }
    }
}
