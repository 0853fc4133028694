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
pub mod conv_bn;
pub mod custom;
pub mod encoder;
pub mod kernels;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod pool;
pub mod tape;

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
    /// What the CPU convolutions' matrix products compute in (bf16 units under
    /// `--amp bf16` on a CPU that has them; see `kernels::bf16`).
    pub products: kernels::Products,
    rng: Rng,
    /// One seed per sample of the batch (row 0 first), when the caller keys randomness on
    /// the images: then a sample's dropout and stochastic-depth masks depend only on its
    /// seed and the layer, not on which other images share its micro-batch, so arms that
    /// group the same images differently (gradient accumulation, a memory split) draw the
    /// same masks for them.
    samples: Option<Vec<u64>>,
    /// Masks drawn so far in this forward pass (tells the layers apart).
    draws: u64,
}

impl ForwardCtx {
    /// Training mode; `seed` fixes this step's dropout and stochastic-depth masks.
    pub fn train(dtype: DType, seed: u64) -> Self {
        Self {
            train: true,
            dtype,
            kernels: Kernels::Annt,
            products: kernels::Products::Native,
            rng: Rng::new(seed),
            samples: None,
            draws: 0,
        }
    }
    pub fn eval(dtype: DType) -> Self {
        Self {
            train: false,
            dtype,
            kernels: Kernels::Annt,
            products: kernels::Products::Native,
            rng: Rng::new(0),
            samples: None,
            draws: 0,
        }
    }
    /// Keys every random mask on the samples (one seed per row of the batch).
    pub fn with_sample_seeds(mut self, seeds: Vec<u64>) -> Self {
        self.samples = Some(seeds);
        self
    }
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }
    pub fn with_products(mut self, products: kernels::Products) -> Self {
        self.products = products;
        self
    }
    /// `len` uniform values in [0, 1) for one mask over a batch: from the per-sample seeds
    /// when there are as many of them as rows (`len` a multiple of the row count), from the
    /// step's stream otherwise.
    pub(crate) fn uniform_mask(&mut self, len: usize) -> Vec<f32> {
        let draw = self.draws;
        self.draws += 1;
        match &self.samples {
            Some(seeds) if !seeds.is_empty() && len.is_multiple_of(seeds.len()) => {
                let per_row = len / seeds.len();
                let mut out = Vec::with_capacity(len);
                for &seed in seeds {
                    let mut rng = Rng::new(crate::util::rng::mix_seed(&[seed, draw]));
                    out.extend((0..per_row).map(|_| rng.next_f32()));
                }
                out
            }
            _ => (0..len).map(|_| self.rng.next_f32()).collect(),
        }
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
