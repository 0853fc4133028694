//! Multi-head self-attention in PyTorch's `nn.MultiheadAttention` layout (what torchvision's
//! ViT uses): one `in_proj_weight` `[3d, d]` for queries, keys and values, and `out_proj`.

use candle_core::{Result, Tensor, Var};

use crate::models::error::ModelError;
use crate::models::params::{Builder, Init, ParamKind, join};

use super::activation::softmax;
use super::custom::{attach1, map_real_n, raw};
use super::kernels::Products;
use super::kernels::attention::{Heads, attention_backward, attention_forward};
use super::linear::{Linear, add_bias, linear, matmul, matmul_nt};

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
        let x2 = x.reshape((n * s, d))?;
        if let Some(qkv) = linear(&x2, w, Some(self.in_proj_bias.as_tensor()), products)? {
            let heads = Heads {
                images: n,
                seq: s,
                heads: self.heads,
                head_dim: hd,
            };
            let out = attention_core(&qkv, heads)?.reshape((n, s, d))?;
            return self.out_proj.forward_with(&out, products);
        }
        let qkv = matmul_nt(&x2, w, products)?;
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

/// `softmax(q·kᵀ/√d_h)·v` for every image and head of `qkv` (`images·seq × 3d`, the rows
/// `[q | k | v]` of the input projection, f32 or f64 on the CPU) as one node of the graph:
/// [`attention_forward`] and [`attention_backward`]. Returns `images·seq × d`. The attention
/// weights are kept for the backward (as the op-by-op graph keeps its softmax output).
fn attention_core(qkv: &Tensor, heads: Heads) -> Result<Tensor> {
    let qkv = qkv.contiguous()?;
    let rows = heads.images * heads.seq;
    let (mut p32, mut p64) = (None, None);
    let out = raw(
        &qkv.detach(),
        (rows, heads.width()),
        |x| {
            let (out, probs) = attention_forward(x, heads);
            p32 = Some(probs);
            out
        },
        |x| {
            let (out, probs) = attention_forward(x, heads);
            p64 = Some(probs);
            out
        },
    )?;
    let shape = (heads.images, heads.heads, heads.seq, heads.seq);
    let cpu = candle_core::Device::Cpu;
    let probs = match (p32, p64) {
        (Some(p), _) => Tensor::from_vec(p, shape, &cpu)?,
        (_, Some(p)) => Tensor::from_vec(p, shape, &cpu)?,
        _ => candle_core::bail!("attention: the kernel gave no weights"),
    };
    attach1(
        "annt-attention",
        &qkv,
        out,
        Box::new(move |qkv, grad| {
            map_real_n(
                &[qkv, &probs, &grad.contiguous()?],
                (rows, 3 * heads.width()),
                |v| attention_backward(v[0], v[1], v[2], heads),
                |v| attention_backward(v[0], v[1], v[2], heads),
            )
        }),
    )
}
