//! Mixed precision: the mode, a dynamic loss scaler with PyTorch `GradScaler`'s rules, and a
//! finite check over gradients.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

/// The compute precision of a run. Parameters stay f32 in every mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AmpMode {
    #[default]
    Off,
    Bf16,
    Fp16,
}

impl AmpMode {
    /// The dtype activations and matrix products run in.
    pub fn compute_dtype(self) -> DType {
        match self {
            AmpMode::Off => DType::F32,
            AmpMode::Bf16 => DType::BF16,
            AmpMode::Fp16 => DType::F16,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            AmpMode::Off => "fp32",
            AmpMode::Bf16 => "bf16",
            AmpMode::Fp16 => "fp16",
        }
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

/// Dynamic loss scaling for fp16: the loss is multiplied by `scale` before backward so small
/// gradients survive f16's range; gradients are divided back before the step. An overflow
/// halves the scale and skips the step; `growth_interval` clean steps in a row double it.
#[derive(Clone, Debug, Serialize)]
pub struct LossScaler {
    scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u32,
    clean_steps: u32,
    skipped: u64,
    grown: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self::new()
    }
}

impl LossScaler {
    /// PyTorch's defaults: scale 2¹⁶, ×2 after 2000 clean steps, ×0.5 on overflow.
    pub fn new() -> Self {
        Self::with_params(65536.0, 2.0, 0.5, 2000)
    }
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
        }
    }
    pub fn scale(&self) -> f64 {
        self.scale
    }
    /// Steps skipped because of an overflow.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped
    }
    /// Times the scale grew.
    pub fn growth_events(&self) -> u64 {
        self.grown
    }
    pub fn scale_loss(&self, loss: &Tensor) -> candle_core::Result<Tensor> {
        loss * self.scale
    }
    /// Divides the gradients of `params` by the scale in place, after checking them.
    pub fn unscale(&self, grads: &mut GradStore, params: &[&Var]) -> candle_core::Result<Unscaled> {
        let present: Vec<Tensor> = params
            .iter()
            .filter_map(|p| grads.get(p.as_tensor()).cloned())
            .collect();
        if !all_finite(&present.iter().collect::<Vec<_>>())? {
            return Ok(Unscaled::Overflow);
        }
        let inv = 1.0 / self.scale;
        for p in params {
            if let Some(g) = grads.remove(p.as_tensor()) {
                grads.insert(p.as_tensor(), (g * inv)?);
            }
        }
        Ok(Unscaled::Finite)
    }
    /// Call once per optimiser step with what [`LossScaler::unscale`] found.
    pub fn update(&mut self, outcome: Unscaled) {
        match outcome {
            Unscaled::Overflow => {
                self.scale *= self.backoff_factor;
                self.clean_steps = 0;
                self.skipped += 1;
            }
            Unscaled::Finite => {
                self.clean_steps += 1;
                if self.clean_steps >= self.growth_interval {
                    self.scale *= self.growth_factor;
                    self.clean_steps = 0;
                    self.grown += 1;
                }
            }
        }
    }
}

/// Whether every element of every tensor is finite, with one device sync in total: `t − t`
/// is 0 for finite values and NaN for inf/NaN, and a sum carries a NaN through.
pub fn all_finite(tensors: &[&Tensor]) -> candle_core::Result<bool> {
    if tensors.is_empty() {
        return Ok(true);
    }
    let sums = tensors
        .iter()
        .map(|t| {
            t.to_dtype(DType::F32)?
                .sub(&t.to_dtype(DType::F32)?)?
                .sum_all()
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let total: f32 = Tensor::stack(&sums, 0)?.sum_all()?.to_scalar()?;
    Ok(total.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn all_finite_catches_nan_and_infinities_in_every_float_dtype() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let ok = Tensor::new(&[1f32, -2.0, 0.0], &Device::Cpu)
                .and_then(|t| t.to_dtype(dtype))
                .expect("t");
            assert!(all_finite(&[&ok]).expect("check"));
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let t = Tensor::new(&[1f32, bad], &Device::Cpu)
                    .and_then(|t| t.to_dtype(dtype))
                    .expect("t");
                assert!(!all_finite(&[&ok, &t]).expect("check"), "{dtype:?} {bad}");
            }
        }
    }

    #[test]
    fn overflow_halves_the_scale_and_clean_steps_double_it() {
        let v = Var::new(&[1f32, 2.0], &Device::Cpu).expect("var");
        let mut s = LossScaler::with_params(8.0, 2.0, 0.5, 3);
        let loss = (v.as_tensor().sum_all().expect("sum") * f64::INFINITY).expect("inf");
        let mut grads = s
            .scale_loss(&loss)
            .and_then(|l| l.backward())
            .expect("backward");
        let out = s.unscale(&mut grads, &[&v]).expect("unscale");
        assert_eq!(out, Unscaled::Overflow);
        s.update(out);
        assert_eq!((s.scale(), s.skipped_steps()), (4.0, 1));
        let loss = (v.as_tensor().sum_all().expect("sum") * 3.0).expect("mul");
        let mut grads = s
            .scale_loss(&loss)
            .and_then(|l| l.backward())
            .expect("backward");
        assert_eq!(
            s.unscale(&mut grads, &[&v]).expect("unscale"),
            Unscaled::Finite
        );
        let g: Vec<f32> = grads
            .get(v.as_tensor())
            .expect("grad")
            .to_vec1()
            .expect("vec");
        assert_eq!(
            g,
            vec![3.0, 3.0],
            "unscaling divides the scale back out exactly"
        );
        for _ in 0..3 {
            s.update(Unscaled::Finite);
        }
        assert_eq!((s.scale(), s.growth_events()), (8.0, 1));
        let d = LossScaler::new();
        assert_eq!(
            (
                d.scale(),
                d.growth_interval,
                d.backoff_factor,
                d.growth_factor
            ),
            (65536.0, 2000, 0.5, 2.0)
        );
    }
}
