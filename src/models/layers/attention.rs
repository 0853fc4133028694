//! Multi-head self-attention in PyTorch's `nn.MultiheadAttention` layout (what torchvision's
//! ViT uses): one `in_proj_weight` `[3d, d]` for queries, keys and values, and `out_proj`.

use candle_core::{Result, Tensor, Var};

use crate::models::error::ModelError;
use crate::models::params::{Builder, Init, ParamKind, join};

use super::activation::softmax;
use super::kernels::Products;
use super::linear::{Linear, add_bias, matmul, matmul_nt};

#[derive(Clone, Debug)]
pub struct SelfAttention {
    pub in_proj_weight: Var,
    pub in_proj_bias: Var,
    pub out_proj: Linear,
    pub heads: usize,
}

impl SelfAttention {
    /// PyTorch's initialisation: Xavier-uniform `in_proj_weight`, zero biases.
    pub fn new(
        b: &mut Builder,
        name: &str,
        d: usize,
        heads: usize,
    ) -> std::result::Result<Self, ModelError> {
        if heads == 0 || !d.is_multiple_of(heads) {
            return Err(ModelError::BadConfig {
                model: name.to_string(),
                detail: format!("{heads} heads for width {d}"),
            });
        }
        let xavier = (6.0 / (d + 3 * d) as f32).sqrt();
        let in_proj_weight = b.tensor(
            &join(name, "in_proj_weight"),
            &[3 * d, d],
            Init::Uniform(xavier),
            ParamKind::Weight,
        )?;
        let in_proj_bias = b.tensor(
            &join(name, "in_proj_bias"),
            &[3 * d],
            Init::Zeros,
            ParamKind::Bias,
        )?;
        let bound = 1.0 / (d as f32).sqrt();
        let out_proj = Linear::with_init(
            b,
            &join(name, "out_proj"),
            d,
            d,
            ParamKind::Weight,
            Init::Uniform(bound),
            Init::Zeros,
        )?;
        Ok(Self {
            in_proj_weight,
            in_proj_bias,
            out_proj,
            heads,
        })
    }

    /// `x`: `n × s × d` → `n × s × d`. Scores and softmax run in f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Products::Native)
    }

    /// [`Self::forward`] with the input and output projections in `products` (see
    /// [`matmul_nt`]); the attention products themselves stay in the tensors' dtype.
    pub fn forward_with(&self, x: &Tensor, products: Products) -> Result<Tensor> {
        let dtype = x.dtype();
        let (n, s, d) = x.dims3()?;
        let hd = d / self.heads;
        let w = self.in_proj_weight.as_tensor();
        let qkv = matmul_nt(&x.reshape((n * s, d))?, w, products)?;
        let qkv = add_bias(&qkv, self.in_proj_bias.as_tensor(), 1)?
            .reshape((n, s, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?; // 3 × n × heads × s × hd
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let scores = (matmul(&q, &k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let attn = softmax(&scores)?.to_dtype(dtype)?;
        let out = matmul(&attn, &v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n, s, d))?;
        self.out_proj.forward_with(&out, products)
    }
}
