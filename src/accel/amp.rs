//! Mixed precision: the mode, a dynamic loss scaler with PyTorch `GradScaler`'s rules, and a
//! finite check over gradients.
//!
//! bf16 has f32's exponent range, so it needs no scaling; fp16 tops out at 65504 and flushes
//! magnitudes below ~6·10⁻⁸ to zero, so small gradients vanish unless the loss is scaled up
//! before backward and the gradients scaled back down before the optimiser sees them.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

/// The compute precision of a run. Parameters (and so optimiser state) stay f32 in every
/// mode; only activations and matrix products run in the lower precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AmpMode {
    /// Plain f32 everywhere: the baseline every acceleration is compared with.
    #[default]
    Off,
    /// bfloat16 compute: f32's range with 8 bits of mantissa, no loss scaling needed.
    Bf16,
    /// IEEE half compute: 11 bits of mantissa but a narrow range, so it needs a
    /// [`LossScaler`].
    Fp16,
}

impl AmpMode {
    /// Why a CUDA GPU of compute capability `cc` (e.g. (9, 0) for an H100) cannot train in
    /// this mode (None: it can). fp16 arithmetic needs 5.3; bf16, 8.0 (Ampere): below that
    /// cuBLAS has no bf16 GEMM.
    pub fn unsupported_at(self, cc: (i32, i32)) -> Option<String> {
        let need = match self {
            AmpMode::Off => return None,
            AmpMode::Fp16 => (5, 3),
            AmpMode::Bf16 => (8, 0),
        };
        (cc < need).then(|| {
            format!(
                "{} needs compute capability {}.{} or newer; this GPU has {}.{}",
                self.label(),
                need.0,
                need.1,
                cc.0,
                cc.1
            )
        })
    }

    /// The dtype activations and matrix products run in.
    pub fn compute_dtype(self) -> DType {
        match self {
            AmpMode::Off => DType::F32,
            AmpMode::Bf16 => DType::BF16,
            AmpMode::Fp16 => DType::F16,
        }
    }

    /// Short name used in reports, arm labels and the CLI's output.
    pub fn label(self) -> &'static str {
        match self {
            AmpMode::Off => "fp32",
            AmpMode::Bf16 => "bf16",
            AmpMode::Fp16 => "fp16",
        }
    }

    /// Whether this mode needs dynamic loss scaling (only fp16's range is too narrow).
    pub fn needs_loss_scaling(self) -> bool {
        self == AmpMode::Fp16
    }
}

/// What unscaling found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unscaled {
    /// Every gradient finite: take the optimiser step.
    Finite,
    /// An inf or NaN: skip the step (the weights stay as they are).
    Overflow,
}

/// Dynamic loss scaling for fp16 with PyTorch `GradScaler`'s rules: the loss is multiplied by
/// `scale` before backward so small gradients survive f16's range; gradients are divided back
/// before the step. An overflow multiplies the scale by `backoff_factor` and skips the step;
/// `growth_interval` finite steps in a row multiply it by `growth_factor` (a grown scale that
/// would be infinite is not applied, as in PyTorch).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LossScaler {
    scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u32,
    clean_steps: u32,
    skipped: u64,
    grown: u64,
    backoffs: u64,
    min_scale: f64,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self::new()
    }
}

impl LossScaler {
    /// PyTorch's default initial scale, 2¹⁶.
    pub const DEFAULT_INIT_SCALE: f64 = 65536.0;
    /// PyTorch's default growth factor.
    pub const DEFAULT_GROWTH_FACTOR: f64 = 2.0;
    /// PyTorch's default backoff factor.
    pub const DEFAULT_BACKOFF_FACTOR: f64 = 0.5;
    /// PyTorch's default number of consecutive finite steps before the scale grows.
    pub const DEFAULT_GROWTH_INTERVAL: u32 = 2000;

    /// PyTorch's defaults: scale 2¹⁶, ×2 after 2000 finite steps, ×0.5 on overflow.
    pub fn new() -> Self {
        Self::with_params(
            Self::DEFAULT_INIT_SCALE,
            Self::DEFAULT_GROWTH_FACTOR,
            Self::DEFAULT_BACKOFF_FACTOR,
            Self::DEFAULT_GROWTH_INTERVAL,
        )
    }

    /// A scaler with explicit constants (tests use a short interval; a run may start lower
    /// to skip the first few backoffs).
    pub fn with_params(
        init_scale: f64,
        growth_factor: f64,
        backoff_factor: f64,
        growth_interval: u32,
    ) -> Self {
        Self {
            scale: init_scale,
            growth_factor,
            backoff_factor,
            growth_interval,
            clean_steps: 0,
            skipped: 0,
            grown: 0,
            backoffs: 0,
            min_scale: init_scale,
        }
    }

    /// The current loss scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The smallest scale reached so far (how far overflows pushed it down).
    pub fn min_scale(&self) -> f64 {
        self.min_scale
    }

    /// Optimiser steps skipped because of an overflow.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped
    }

    /// Times the scale grew.
    pub fn growth_events(&self) -> u64 {
        self.grown
    }

    /// Times the scale backed off (equals [`LossScaler::skipped_steps`]; kept separately so
    /// reports read naturally).
    pub fn backoff_events(&self) -> u64 {
        self.backoffs
    }

    /// Consecutive finite steps since the last growth or overflow.
    pub fn clean_steps(&self) -> u32 {
        self.clean_steps
    }

    /// Multiplies the loss by the scale before backward, so the whole backward pass runs on
    /// scaled values.
    pub fn scale_loss(&self, loss: &Tensor) -> candle_core::Result<Tensor> {
        loss * self.scale
    }

    /// Checks every gradient of `params` for inf/NaN and, when all are finite, divides them
    /// by the scale in place (a power-of-two scale divides exactly). On
    /// [`Unscaled::Overflow`] the gradients are left untouched and the caller must skip the
    /// optimiser step. Parameters without a gradient are ignored.
    pub fn unscale(&self, grads: &mut GradStore, params: &[&Var]) -> candle_core::Result<Unscaled> {
        let present: Vec<&Tensor> = params
            .iter()
            .filter_map(|p| grads.get(p.as_tensor()))
            .collect();
        if !all_finite(&present)? {
            return Ok(Unscaled::Overflow);
        }
        let inv = 1.0 / self.scale;
        for p in params {
            let unscaled = match grads.get(p.as_tensor()) {
                Some(g) => (g * inv)?,
                None => continue,
            };
            grads.insert(p.as_tensor(), unscaled);
        }
        Ok(Unscaled::Finite)
    }

    /// Updates the scale after a step attempt: an overflow backs off and resets the counter;
    /// a finite step counts, and the scale grows after `growth_interval` of them. Call once
    /// per optimiser step (not per micro-batch) with what [`LossScaler::unscale`] found.
    pub fn update(&mut self, outcome: Unscaled) {
        match outcome {
            Unscaled::Overflow => {
                self.scale *= self.backoff_factor;
                self.min_scale = self.min_scale.min(self.scale);
                self.clean_steps = 0;
                self.skipped += 1;
                self.backoffs += 1;
            }
            Unscaled::Finite => {
                self.clean_steps += 1;
                if self.clean_steps >= self.growth_interval {
                    let grown = self.scale * self.growth_factor;
                    if grown.is_finite() {
                        self.scale = grown;
                        self.grown += 1;
                    }
                    self.clean_steps = 0;
                }
            }
        }
    }
}

/// Whether every element of every tensor is finite, with one device→host copy in total:
/// `t − t` is 0 for finite values and NaN for inf/NaN, a sum carries a NaN through, and the
/// per-tensor sums (each a single value, widened to f32) are stacked and summed once more
/// before the only read-back. The subtraction and first sum run in the tensor's own dtype,
/// so no f32 copy of a large f16 gradient is made. Integer tensors are always finite.
pub fn all_finite(tensors: &[&Tensor]) -> candle_core::Result<bool> {
    let sums = tensors
        .iter()
        .filter(|t| t.dtype().is_float() && t.elem_count() > 0)
        .map(|t| t.sub(t)?.sum_all()?.to_dtype(DType::F32)?.reshape(1))
        .collect::<candle_core::Result<Vec<_>>>()?;
    if sums.is_empty() {
        return Ok(true);
    }
    let total: f32 = Tensor::cat(&sums, 0)?.sum_all()?.to_scalar()?;
    Ok(total.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn modes_map_to_dtypes_and_serialise_in_kebab_case() {
        assert_eq!(AmpMode::default(), AmpMode::Off);
        assert_eq!(AmpMode::Off.compute_dtype(), DType::F32);
        assert_eq!(AmpMode::Bf16.compute_dtype(), DType::BF16);
        assert_eq!(AmpMode::Fp16.compute_dtype(), DType::F16);
        assert_eq!(
            serde_json::to_string(&[AmpMode::Off, AmpMode::Bf16, AmpMode::Fp16]).expect("json"),
            r#"["off","bf16","fp16"]"#
        );
        assert!(AmpMode::Fp16.needs_loss_scaling() && !AmpMode::Bf16.needs_loss_scaling());
    }

    #[test]
    fn all_finite_catches_nan_and_infinities_in_every_float_dtype() {
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
            let ok = Tensor::new(&[1f32, -2.0, 0.0, 1e-30, -3e4], &Device::Cpu)
                .and_then(|t| t.to_dtype(dtype))
                .expect("t");
            assert!(all_finite(&[&ok]).expect("check"), "{dtype:?}");
            // Many finite values: the sum of zeros stays exactly zero.
            let big = Tensor::full(60000f32, (300, 300), &Device::Cpu)
                .and_then(|t| t.to_dtype(dtype))
                .expect("t");
            assert!(all_finite(&[&ok, &big]).expect("check"), "{dtype:?}");
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let t = Tensor::new(&[[1f32, 2.0], [bad, 3.0]], &Device::Cpu)
                    .and_then(|t| t.to_dtype(dtype))
                    .expect("t");
                assert!(!all_finite(&[&t]).expect("check"), "{dtype:?} {bad}");
                assert!(
                    !all_finite(&[&ok, &big, &t]).expect("check"),
                    "{dtype:?} {bad}"
                );
            }
        }
        assert!(all_finite(&[]).expect("empty list"));
        let empty = Tensor::zeros(0, DType::F16, &Device::Cpu).expect("t");
        let ints = Tensor::new(&[1u32, 2], &Device::Cpu).expect("t");
        assert!(all_finite(&[&empty, &ints]).expect("check"));
    }

    #[test]
    fn an_inf_gradient_overflows_halves_the_scale_and_skips_the_step() {
        let v = Var::new(&[1f32, 2.0], &Device::Cpu).expect("var");
        let w = Var::new(&[3f32], &Device::Cpu).expect("var");
        let mut s = LossScaler::with_params(8.0, 2.0, 0.5, 3);
        let loss = (v.as_tensor().sum_all().expect("sum") * f64::INFINITY
            + w.as_tensor().sum_all().expect("sum"))
        .expect("loss");
        let mut grads = s
            .scale_loss(&loss)
            .and_then(|l| l.backward())
            .expect("backward");
        let before: Vec<f32> = grads.get(w.as_tensor()).expect("g").to_vec1().expect("v");
        let out = s.unscale(&mut grads, &[&v, &w]).expect("unscale");
        assert_eq!(out, Unscaled::Overflow);
        let after: Vec<f32> = grads.get(w.as_tensor()).expect("g").to_vec1().expect("v");
        assert_eq!(before, after, "an overflow leaves the gradients alone");
        s.update(out);
        assert_eq!(
            (s.scale(), s.skipped_steps(), s.backoff_events()),
            (4.0, 1, 1)
        );
        assert_eq!((s.min_scale(), s.clean_steps()), (4.0, 0));
    }

    #[test]
    fn a_nan_gradient_overflows_too() {
        let v = Var::new(&[1f32, 2.0], &Device::Cpu).expect("var");
        let s = LossScaler::new();
        let loss = (v.as_tensor().sum_all().expect("sum") * f64::NAN).expect("nan");
        let mut grads = loss.backward().expect("backward");
        assert_eq!(
            s.unscale(&mut grads, &[&v]).expect("unscale"),
            Unscaled::Overflow
        );
    }

    #[test]
    fn unscale_divides_exactly_and_skips_parameters_without_gradients() {
        let v = Var::new(&[1f32, 2.0], &Device::Cpu).expect("var");
        let unused = Var::new(&[5f32], &Device::Cpu).expect("var");
        let s = LossScaler::new();
        // d/dv of sum(v²·0.3) = 0.6·v; an f32 value times 2¹⁶ and back is exact.
        let loss = (v.as_tensor().sqr().expect("sqr").sum_all().expect("sum") * 0.3).expect("loss");
        let plain: Vec<f32> = loss
            .backward()
            .expect("backward")
            .get(v.as_tensor())
            .expect("g")
            .to_vec1()
            .expect("v");
        let mut grads = s
            .scale_loss(&loss)
            .and_then(|l| l.backward())
            .expect("backward");
        let scaled: Vec<f32> = grads.get(v.as_tensor()).expect("g").to_vec1().expect("v");
        assert_eq!(
            scaled,
            plain.iter().map(|g| g * 65536.0).collect::<Vec<_>>()
        );
        assert_eq!(
            s.unscale(&mut grads, &[&v, &unused]).expect("unscale"),
            Unscaled::Finite
        );
        let g: Vec<f32> = grads.get(v.as_tensor()).expect("g").to_vec1().expect("v");
        assert_eq!(g, plain, "unscaling divides the scale back out exactly");
        assert!(grads.get(unused.as_tensor()).is_none());
    }

    #[test]
    fn finite_steps_grow_the_scale_after_the_interval_and_overflow_resets_the_count() {
        let mut s = LossScaler::with_params(8.0, 2.0, 0.5, 3);
        s.update(Unscaled::Finite);
        s.update(Unscaled::Finite);
        s.update(Unscaled::Overflow);
        assert_eq!(s.scale(), 4.0);
        s.update(Unscaled::Finite);
        s.update(Unscaled::Finite);
        assert_eq!(
            (s.scale(), s.growth_events()),
            (4.0, 0),
            "counter was reset"
        );
        s.update(Unscaled::Finite);
        assert_eq!((s.scale(), s.growth_events(), s.clean_steps()), (8.0, 1, 0));
        // A growth that would overflow f64 is not applied.
        let mut huge = LossScaler::with_params(f64::MAX, 2.0, 0.5, 1);
        huge.update(Unscaled::Finite);
        assert_eq!((huge.scale(), huge.growth_events()), (f64::MAX, 0));
    }

    #[test]
    fn default_constants_are_pytorchs_and_2000_finite_steps_double_the_scale() {
        let mut d = LossScaler::new();
        assert_eq!(
            (
                d.scale(),
                d.growth_interval,
                d.backoff_factor,
                d.growth_factor
            ),
            (65536.0, 2000, 0.5, 2.0)
        );
        for _ in 0..1999 {
            d.update(Unscaled::Finite);
        }
        assert_eq!(d.scale(), 65536.0);
        d.update(Unscaled::Finite);
        assert_eq!((d.scale(), d.growth_events()), (131072.0, 1));
        d.update(Unscaled::Overflow);
        assert_eq!((d.scale(), d.skipped_steps()), (65536.0, 1));
    }

    #[test]
    fn half_precision_needs_the_right_compute_capability() {
        assert_eq!(AmpMode::Bf16.unsupported_at((9, 0)), None);
        assert_eq!(AmpMode::Bf16.unsupported_at((8, 0)), None);
        assert_eq!(AmpMode::Fp16.unsupported_at((7, 5)), None);
        let e = AmpMode::Bf16
            .unsupported_at((7, 5))
            .expect("Turing has no bf16");
        assert!(e.contains("8.0") && e.contains("7.5"), "{e}");
        assert!(AmpMode::Fp16.unsupported_at((5, 2)).is_some());
        assert_eq!(AmpMode::Off.unsupported_at((3, 0)), None);
    }
}
