//! The layers annt's models are made of, written so that every one passes its gradient on
//! (Candle 0.11's `softmax_last_dim` and `LayerNorm` silently do not) and the slow parts of
//! Candle's CPU backward (convolution input gradients, depthwise convolutions, overlapping
//! max pooling) are replaced by [`conv`] and [`pool`].
//!
//! Mixed precision: parameters are f32 master copies; each layer casts them to the compute
//! dtype of its input at use, so gradients arrive on the f32 parameters. Normalisation,
//! softmax and the loss always run in f32 (f64 when the input is f64, for gradient checks).

pub mod activation;
pub mod attention;
pub mod conv;
pub mod custom;
pub mod kernels_cpu;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod pool;

use candle_core::DType;

use crate::util::rng::Rng;

/// Which implementation runs convolutions and pooling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kernels {
    /// annt's kernels (im2col + matmul, direct depthwise, overlapping max-pool backward).
    #[default]
    Annt,
    /// Candle's own `conv2d` and `max_pool2d` and their backward: the reference.
    CandleStock,
}

/// Per-call state of a forward pass: training or evaluation, the compute dtype, the kernel
/// path, and the random stream for dropout and stochastic depth.
#[derive(Clone, Debug)]
pub struct ForwardCtx {
    /// Training mode: batch statistics (and running-stat updates) in batch norm, dropout and
    /// stochastic depth active. Evaluation: running statistics, no randomness.
    pub train: bool,
    /// The dtype activations and matrix products run in (f32, f16 or bf16; f64 in tests).
    pub dtype: DType,
    pub kernels: Kernels,
    rng: Rng,
}

impl ForwardCtx {
    /// Training mode; `seed` fixes this step's dropout and stochastic-depth masks.
    pub fn train(dtype: DType, seed: u64) -> Self {
        Self {
            train: true,
            dtype,
            kernels: Kernels::Annt,
            rng: Rng::new(seed),
        }
    }
    pub fn eval(dtype: DType) -> Self {
        Self {
            train: false,
            dtype,
            kernels: Kernels::Annt,
            rng: Rng::new(0),
        }
    }
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }
    pub(crate) fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }
}

/// The dtype normalisation and softmax run in: f32, or f64 when the input is f64.
pub(crate) fn norm_dtype(input: DType) -> DType {
    if input == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

#[cfg(test)]
mod tests;
