//! A ViT encoder block as one node of the graph on the CPU (see `kernels::encoder`).

use candle_core::{DType, Result, Tensor};

use super::attention::SelfAttention;
use super::custom::{attach_many, map_real_n, raw_n};
use super::kernels::attention::Heads;
use super::kernels::encoder::{BlockParams, BlockShape, Saved, block_backward, block_forward};
use super::linear::Linear;
use super::norm::LayerNorm;
use super::{ForwardCtx, Kernels};

/// The layers of one pre-norm encoder block, in torchvision's order.
pub struct EncoderLayers<'a> {
    pub ln_1: &'a LayerNorm,
    pub attention: &'a SelfAttention,
    pub ln_2: &'a LayerNorm,
    pub mlp_0: &'a Linear,
    pub mlp_3: &'a Linear,
}

/// What the forward kept, in the dtype it ran in.
enum SavedAny {
    F32(Saved<f32>),
    F64(Saved<f64>),
}

/// `x + Attn(LN₁(x))`, then `+ MLP(LN₂(·))`, for `x` `n × s × d`, as one node: `None` where
/// the block must be built from its layers instead — off the CPU, with Candle's own kernels
/// (the reference), with dropout active, in half precision (the numerics-only path), or for
/// a layer without a bias.
pub fn encoder_block(
    x: &Tensor,
    layers: &EncoderLayers<'_>,
    dropout: f32,
    ctx: &ForwardCtx,
) -> Result<Option<Tensor>> {
    let dtype = x.dtype();
    let fits = match dtype {
        DType::F32 => true,
        DType::F64 => ctx.products.bf16().is_none(),
        _ => false,
    };
    if !x.device().is_cpu()
        || ctx.kernels != Kernels::Annt
        || (ctx.train && dropout > 0.0)
        || !fits
        || layers.ln_1.eps != layers.ln_2.eps
    {
        return Ok(None);
    }
    let (Some(b_out), Some(b_fc1), Some(b_fc2)) = (
        &layers.attention.out_proj.bias,
        &layers.mlp_0.bias,
        &layers.mlp_3.bias,
    ) else {
        return Ok(None);
    };
    let (n, s, d) = x.dims3()?;
    let heads = layers.attention.heads;
    let mlp = layers.mlp_0.weight.dims2()?.0;
    let shape = BlockShape {
        heads: Heads {
            images: n,
            seq: s,
            heads,
            head_dim: d / heads.max(1),
        },
        mlp,
        eps: layers.ln_1.eps,
        products: ctx.products,
    };
    let params: Vec<Tensor> = [
        &layers.ln_1.weight,
        &layers.ln_1.bias,
        &layers.attention.in_proj_weight,
        &layers.attention.in_proj_bias,
        &layers.attention.out_proj.weight,
        b_out,
        &layers.ln_2.weight,
        &layers.ln_2.bias,
        &layers.mlp_0.weight,
        b_fc1,
        &layers.mlp_3.weight,
        b_fc2,
    ]
    .iter()
    .map(|v| v.as_tensor().to_dtype(dtype)?.contiguous())
    .collect::<Result<_>>()?;
    let x = x.contiguous()?;
    let mut inputs: Vec<Tensor> = vec![x.detach()];
    inputs.extend(params.iter().map(Tensor::detach));
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let (mut saved32, mut saved64) = (None, None);
    let y = raw_n(
        &refs,
        (n, s, d),
        |v| {
            let (y, saved) = block_forward(v[0], &block_params(v), &shape);
            saved32 = Some(saved);
            y
        },
        |v| {
            let (y, saved) = block_forward(v[0], &block_params(v), &shape);
            saved64 = Some(saved);
            y
        },
    )?;
    let saved = match (saved32, saved64) {
        (Some(s), _) => SavedAny::F32(s),
        (_, Some(s)) => SavedAny::F64(s),
        _ => candle_core::bail!("encoder block: the kernel kept nothing"),
    };
    let sizes: Vec<(usize, Vec<usize>)> = params
        .iter()
        .map(|p| (p.elem_count(), p.dims().to_vec()))
        .collect();
    let rows_d = n * s * d;
    let total = rows_d + sizes.iter().map(|(c, _)| c).sum::<usize>();
    let mut all: Vec<&Tensor> = vec![&x];
    all.extend(params.iter());
    attach_many(
        "annt-encoder-block",
        &all,
        y,
        Box::new(move |grad| {
            let mut args: Vec<&Tensor> = inputs.iter().collect();
            let grad = grad.contiguous()?;
            args.push(&grad);
            let flat = map_real_n(
                &args,
                total,
                |v| match &saved {
                    SavedAny::F32(sv) => block_backward(v[0], &block_params(v), sv, v[13], &shape),
                    SavedAny::F64(_) => Vec::new(),
                },
                |v| match &saved {
                    SavedAny::F64(sv) => block_backward(v[0], &block_params(v), sv, v[13], &shape),
                    SavedAny::F32(_) => Vec::new(),
                },
            )?;
            let mut grads = vec![flat.narrow(0, 0, rows_d)?.reshape((n, s, d))?];
            let mut at = rows_d;
            for (count, dims) in &sizes {
                grads.push(flat.narrow(0, at, *count)?.reshape(dims.as_slice())?);
                at += count;
            }
            Ok(grads)
        }),
    )
    .map(Some)
}

/// The twelve parameter slices after the input in `v`.
fn block_params<'a, T>(v: &[&'a [T]]) -> BlockParams<'a, T> {
    BlockParams::from_slices(&[
        v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12],
    ])
}
