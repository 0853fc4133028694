//! Fully connected layers and the matrix product every layer uses.

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::models::error::ModelError;
use crate::models::params::{Builder, Init, ParamKind, join};

/// `a · b` in the inputs' dtype. Candle's CPU matmul has no bf16 and its f16 is no faster
/// than f32, so half-precision products on the CPU run in f32 on half-rounded inputs and are
/// rounded back — a tensor core's arithmetic (half inputs, f32 accumulation).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dtype = a.dtype();
    if matches!(a.device(), Device::Cpu) && matches!(dtype, DType::F16 | DType::BF16) {
        return a
            .to_dtype(DType::F32)?
            .matmul(&b.to_dtype(DType::F32)?)?
            .to_dtype(dtype);
    }
    a.matmul(b)
}

/// `y = x·Wᵀ + b` over the last dimension of `x`, with PyTorch's `weight` `[out, in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Var,
    pub bias: Option<Var>,
}

impl Linear {
    /// PyTorch's default initialisation: `U(±1/√in)` for weight and bias.
    pub fn new(
        b: &mut Builder,
        name: &str,
        d_in: usize,
        d_out: usize,
        kind: ParamKind,
    ) -> std::result::Result<Self, ModelError> {
        let bound = 1.0 / (d_in as f32).sqrt();
        Self::with_init(
            b,
            name,
            d_in,
            d_out,
            kind,
            Init::Uniform(bound),
            Init::Uniform(bound),
        )
    }

    pub fn with_init(
        b: &mut Builder,
        name: &str,
        d_in: usize,
        d_out: usize,
        kind: ParamKind,
        weight_init: Init,
        bias_init: Init,
    ) -> std::result::Result<Self, ModelError> {
        let bias_kind = if kind == ParamKind::Head {
            ParamKind::Head
        } else {
            ParamKind::Bias
        };
        let weight = b.tensor(&join(name, "weight"), &[d_out, d_in], weight_init, kind)?;
        let bias = Some(b.tensor(&join(name, "bias"), &[d_out], bias_init, bias_kind)?);
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let dims = x.dims().to_vec();
        let (d_out, d_in) = self.weight.dims2()?;
        let rows = x.elem_count() / d_in;
        // One 2-D product (not a batched one): its weight gradient is a single GEMM.
        let x2 = x.reshape((rows, d_in))?;
        let mut y = matmul(&x2, &self.weight.as_tensor().to_dtype(dtype)?.t()?)?;
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(&bias.as_tensor().to_dtype(dtype)?)?;
        }
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = d_out;
        }
        y.reshape(out_dims)
    }
}
