//! A bias-free convolution, batch norm and an optional activation: the pair ResNet and
//! EfficientNet are built from, written once. With ReLU, batch norm and the activation run
//! as one op on the CPU ([`BatchNorm2d::forward_relu`]).

use candle_core::{DType, Result, Tensor};

use crate::models::error::ModelError;
use crate::models::params::Builder;

use super::activation::{add_relu, silu};
use super::conv::{Conv2d, ConvBias, ConvInit, ConvSpec, window};
use super::custom::{Raw, attach_many, map_real_n, raw2};
use super::kernels::cpu as kernels_cpu;
use super::kernels::{Products, Window};
use super::norm::{After, BatchNorm2d, BnFit};
use super::{ForwardCtx, Kernels};

/// What follows the batch norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Nothing (a residual branch's last pair, a projection).
    Identity,
    Relu,
    /// `x·σ(x)` (EfficientNet).
    Silu,
}

/// Batch norm's `eps` and momentum (PyTorch's convention: the new statistic's weight).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormConfig {
    pub eps: f64,
    pub momentum: f64,
}

/// A convolution's channels in and out and its square kernel side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
}

#[derive(Clone, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
    pub activation: Activation,
}

impl ConvBn {
    /// The convolution's parameters are named `names[0]` (`.weight`), the batch norm's
    /// `names[1]` (torchvision: `conv1`/`bn1` in ResNet, `features.N.0`/`features.N.1` in
    /// EfficientNet), so checkpoints load unchanged.
    pub fn new(
        b: &mut Builder,
        names: [&str; 2],
        shape: ConvShape,
        spec: ConvSpec,
        norm: NormConfig,
        activation: Activation,
    ) -> std::result::Result<Self, ModelError> {
        let conv = Conv2d::new(
            b,
            names[0],
            shape.c_in,
            shape.c_out,
            shape.kernel,
            spec,
            ConvBias::Without,
            ConvInit::KaimingFanOut,
        )?;
        let bn = BatchNorm2d::new(b, names[1], shape.c_out, norm.eps, norm.momentum)?;
        Ok(Self {
            conv,
            bn,
            activation,
        })
    }

    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        if let Some(y) = self.forward_fused(x, ctx)? {
            return Ok(y);
        }
        let y = self.conv.forward(x, ctx)?;
        match self.activation {
            Activation::Identity => self.bn.forward(&y, ctx),
            Activation::Relu => self.bn.forward_relu(&y, ctx),
            Activation::Silu => silu(&self.bn.forward(&y, ctx)?),
        }
    }

    /// `relu(self.forward(x) + shortcut)`: a residual block's last convolution, its batch
    /// norm, the shortcut's sum and the ReLU. In training on the CPU (where the fused
    /// conv + batch-norm node applies, and this pair has no activation of its own) that is
    /// one node, so the batch norm's output needs no gradient of its own in Candle's graph;
    /// elsewhere the layers and `activation::add_relu`.
    pub fn forward_add_relu(
        &self,
        x: &Tensor,
        shortcut: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        if self.activation == Activation::Identity
            && let Some(y) = self.fused(x, Some(shortcut), ctx)?
        {
            return Ok(y);
        }
        add_relu(&self.forward(x, ctx)?, shortcut)
    }

    /// Training on the CPU (annt's kernels, f32/f64, a dense convolution without bias, then
    /// identity or ReLU): the convolution, batch norm and activation as one node of the
    /// graph, its inputs the images, the weight, γ and β (`custom::attach_many`). As two
    /// nodes, Candle's backward zero-filled and added an activation-sized gradient for the
    /// convolution's output; here the batch norm's input gradient goes straight into the
    /// convolution's backward. Same kernels, same arithmetic. `None` elsewhere.
    fn forward_fused(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Option<Tensor>> {
        self.fused(x, None, ctx)
    }

    /// [`Self::forward_fused`], and with `shortcut` (identity activation only) the residual
    /// sum and ReLU after the batch norm in the batch norm's own pass, rounded as `add_relu`
    /// rounds (the backward's mask `bn + shortcut > 0` recomputed from the convolution's
    /// output and the shortcut), the shortcut a fifth input.
    fn fused(
        &self,
        x: &Tensor,
        shortcut: Option<&Tensor>,
        ctx: &ForwardCtx,
    ) -> Result<Option<Tensor>> {
        let Some((value, piece, inputs)) = self.piece(x, shortcut, x.track_op(), ctx)? else {
            return Ok(None);
        };
        let name = match (self.activation, shortcut.is_some()) {
            (Activation::Relu, _) => "annt-conv-bn-relu",
            (_, true) => "annt-conv-bn-add-relu",
            (_, false) => "annt-conv-bn",
        };
        let refs: Vec<&Tensor> = inputs.iter().collect();
        attach_many(
            name,
            &refs,
            value,
            Box::new(move |grad| {
                let g = piece.backward(grad)?;
                let mut grads = vec![g.dx, g.dw, g.dgamma, g.dbeta];
                grads.extend(g.dshortcut);
                Ok(grads)
            }),
        )
        .map(Some)
    }

    /// Whether the fused node applies to this layer on input `x` (with a shortcut or
    /// not): training on the CPU with annt's kernels in f32 or f64 (f32 only with bf16
    /// products), a dense convolution without bias, then identity or ReLU (identity only
    /// with a shortcut).
    fn fusable(&self, x: &Tensor, shortcut: bool, ctx: &ForwardCtx) -> bool {
        let relu = match self.activation {
            Activation::Identity => false,
            Activation::Relu => true,
            Activation::Silu => return false,
        };
        let dtype = x.dtype();
        ctx.train
            && ctx.kernels == Kernels::Annt
            && x.device().is_cpu()
            && matches!(dtype, DType::F32 | DType::F64)
            && !(dtype == DType::F64 && ctx.products.bf16().is_some())
            && self.conv.spec.groups == 1
            && self.conv.bias.is_none()
            && !(relu && shortcut)
    }

    /// The forward half of the fused node, for it and for a whole residual unit
    /// ([`residual_unit`]): the value (`None` where the fused node does not apply: not
    /// training on the CPU with annt's kernels in f32/f64, a grouped or biased convolution,
    /// SiLU, or a ReLU with a shortcut), what the backward needs, and the tensors the node's
    /// gradients belong to — the input (contiguous), the weight, γ, β and the shortcut.
    /// `want_dx`: whether the backward computes the input's gradient.
    fn piece(
        &self,
        x: &Tensor,
        shortcut: Option<&Tensor>,
        want_dx: bool,
        ctx: &ForwardCtx,
    ) -> Result<Option<(Raw, Piece, Vec<Tensor>)>> {
        if !self.fusable(x, shortcut.is_some(), ctx) {
            return Ok(None);
        }
        let relu = self.activation == Activation::Relu;
        let dtype = x.dtype();
        let x = x.contiguous()?;
        let w = self.conv.weight.as_tensor().to_dtype(dtype)?.contiguous()?;
        let g = window(&x, &w, self.conv.spec)?;
        let c_out = w.dim(0)?;
        let out_shape = (g.n, c_out, g.out_h(), g.out_w());
        let shortcut = match shortcut {
            None => None,
            Some(sc) => {
                if !sc.device().is_cpu()
                    || sc.dtype() != dtype
                    || sc.dims() != [out_shape.0, out_shape.1, out_shape.2, out_shape.3]
                {
                    return Ok(None);
                }
                Some(sc.contiguous()?)
            }
        };
        let products = ctx.products;
        let (xd, wd) = (x.detach(), w.detach());
        let y = raw2(
            &xd,
            &wd,
            out_shape,
            |a, b| kernels_cpu::conv_forward(a, b, &g, c_out, products),
            |a, b| kernels_cpu::conv_forward(a, b, &g, c_out, products),
        )?
        .into_tensor()?;
        // With a shortcut the node's value is relu(bn + shortcut), made in the same pass as
        // the batch norm's output (which is not kept: the backward recomputes the ReLU's mask
        // from the convolution's output and the shortcut).
        let after = match (&shortcut, relu) {
            (Some(sc), _) => After::AddRelu(sc),
            (None, true) => After::Relu,
            (None, false) => After::Nothing,
        };
        let (value, fit) = self.bn.train_value(&y, after)?;
        let gamma = self.bn.weight.as_tensor().clone();
        let beta = self.bn.bias.as_tensor().clone();
        let piece = Piece {
            x: xd,
            w: wd,
            gamma: gamma.detach(),
            beta: beta.detach(),
            residual: shortcut.as_ref().map(Tensor::detach),
            y,
            fit,
            g,
            c_out,
            products,
            want_dx,
        };
        let mut inputs = vec![x, w, gamma, beta];
        inputs.extend(shortcut);
        Ok(Some((value, piece, inputs)))
    }
}

/// One convolution + batch norm of a fused node, its forward pass done: what its backward
/// needs (the inputs detached: the node's own backward is the only graph through them).
struct Piece {
    x: Tensor,
    w: Tensor,
    gamma: Tensor,
    beta: Tensor,
    residual: Option<Tensor>,
    /// The convolution's output (the batch norm's input).
    y: Tensor,
    fit: BnFit,
    g: Window,
    c_out: usize,
    products: Products,
    want_dx: bool,
}

/// A [`Piece`]'s gradients; `dx` is zeros where the input's was not wanted.
struct PieceGrads {
    dx: Tensor,
    dw: Tensor,
    dgamma: Tensor,
    dbeta: Tensor,
    dshortcut: Option<Tensor>,
}

impl Piece {
    fn backward(&self, grad: &Tensor) -> Result<PieceGrads> {
        // Through the residual ReLU first: the same gradient reaches the batch norm and the
        // shortcut.
        let passed = match &self.residual {
            None => None,
            Some(sc) => Some(self.fit.add_relu_grad(&self.y, sc, grad)?),
        };
        let grad = passed.as_ref().unwrap_or(grad);
        let (dy, dgamma, dbeta) = self.fit.backward(&self.y, &self.gamma, &self.beta, grad)?;
        let (x_len, w_len) = (self.x.elem_count(), self.w.elem_count());
        let (g, c_out, products, want_dx) = (&self.g, self.c_out, self.products, self.want_dx);
        let both = map_real_n(
            &[&self.x, &self.w, &dy],
            x_len + w_len,
            |v| kernels_cpu::conv_backward_joined(v[0], v[1], v[2], g, c_out, products, want_dx),
            |v| kernels_cpu::conv_backward_joined(v[0], v[1], v[2], g, c_out, products, want_dx),
        )?;
        Ok(PieceGrads {
            dx: both.narrow(0, 0, x_len)?.reshape(self.x.shape())?,
            dw: both.narrow(0, x_len, w_len)?.reshape(self.w.shape())?,
            dgamma,
            dbeta,
            dshortcut: passed,
        })
    }
}

/// A residual unit, `relu(last(…(first(x))) + shortcut)` with the shortcut `x` itself or
/// `downsample(x)`: `chain` is the branch's convolution + batch norm pairs, every one but
/// the last with a ReLU, the last and `downsample` with none (ResNet's basic block and
/// bottleneck).
///
/// In training on the CPU, where the fused conv + batch norm node applies, the whole unit is
/// one node of the graph: inside it the branch's activations and the shortcut pass their
/// gradients straight on, where as separate nodes Candle's backward zero-filled an
/// activation-sized gradient for each and added into it (and into the unit's input twice).
/// Same kernels, same arithmetic, same order of operations as the separate nodes. Elsewhere
/// the layers one after the other.
pub fn residual_unit(
    chain: &[&ConvBn],
    downsample: Option<&ConvBn>,
    x: &Tensor,
    ctx: &ForwardCtx,
) -> Result<Tensor> {
    if let Some(y) = fused_unit(chain, downsample, x, ctx)? {
        return Ok(y);
    }
    let Some((last, rest)) = chain.split_last() else {
        candle_core::bail!("a residual unit needs at least one convolution");
    };
    let shortcut = match downsample {
        Some(d) => d.forward(x, ctx)?,
        None => x.clone(),
    };
    let mut y = x.clone();
    for layer in rest {
        y = layer.forward(&y, ctx)?;
    }
    last.forward_add_relu(&y, &shortcut, ctx)
}

#[cfg(test)]
thread_local! {
    /// Residual units this thread built as one node (the tests check the node was built).
    pub(super) static FUSED_UNITS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// [`residual_unit`] as one node, or `None` where a layer's fused node does not apply
/// (checked before any layer runs: a batch norm's forward updates its running statistics).
fn fused_unit(
    chain: &[&ConvBn],
    downsample: Option<&ConvBn>,
    x: &Tensor,
    ctx: &ForwardCtx,
) -> Result<Option<Tensor>> {
    let Some((last, rest)) = chain.split_last() else {
        return Ok(None);
    };
    if rest
        .iter()
        .any(|l| l.activation != Activation::Relu || !l.fusable(x, false, ctx))
        || last.activation != Activation::Identity
        || !last.fusable(x, true, ctx)
        || downsample
            .is_some_and(|d| d.activation != Activation::Identity || !d.fusable(x, false, ctx))
    {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let want_dx = x.track_op();
    let unfit =
        || candle_core::Error::Msg("residual unit: a layer's fused node refused its input".into());
    // The node's inputs: x, then each layer's weight, γ and β — the branch's in order, then
    // the downsample's.
    let mut params: Vec<Tensor> = Vec::new();
    let mut pieces: Vec<Piece> = Vec::new();
    let mut y = x.clone();
    for (i, layer) in rest.iter().enumerate() {
        // Inside the node every activation's gradient is wanted (it goes on down the branch).
        let (value, piece, ins) = layer
            .piece(&y, None, i > 0 || want_dx, ctx)?
            .ok_or_else(unfit)?;
        params.extend(ins[1..4].iter().cloned());
        pieces.push(piece);
        y = value.into_tensor()?;
    }
    let short = match downsample {
        Some(d) => {
            let (value, piece, ins) = d.piece(&x, None, want_dx, ctx)?.ok_or_else(unfit)?;
            Some((value.into_tensor()?, piece, ins[1..4].to_vec()))
        }
        None => None,
    };
    let shortcut = short
        .as_ref()
        .map_or_else(|| x.clone(), |(v, _, _)| v.clone());
    let last_wants_dx = !rest.is_empty() || want_dx;
    let (value, last_piece, ins) = last
        .piece(&y, Some(&shortcut), last_wants_dx, ctx)?
        .ok_or_else(unfit)?;
    params.extend(ins[1..4].iter().cloned());
    let short = short.map(|(_, piece, p)| {
        params.extend(p);
        piece
    });
    let inputs: Vec<Tensor> = std::iter::once(x).chain(params).collect();
    #[cfg(test)]
    FUSED_UNITS.with(|c| c.set(c.get() + 1));
    let refs: Vec<&Tensor> = inputs.iter().collect();
    attach_many(
        "annt-residual-unit",
        &refs,
        value,
        Box::new(move |grad| {
            // The branch from its end, each layer's input gradient the next one's output
            // gradient; the shortcut's gradient is the residual ReLU's, through the
            // downsample where there is one.
            let end = last_piece.backward(grad)?;
            let mut per_layer = Vec::with_capacity(pieces.len() + 1);
            let mut d = end.dx.clone();
            let d_shortcut = end.dshortcut.clone();
            per_layer.push(end);
            for piece in pieces.iter().rev() {
                let gr = piece.backward(&d)?;
                d = gr.dx.clone();
                per_layer.push(gr);
            }
            per_layer.reverse();
            let d_shortcut = d_shortcut.ok_or_else(|| {
                candle_core::Error::Msg("the residual unit's last layer has a shortcut".into())
            })?;
            let (dx_short, short_grads) = match &short {
                Some(piece) => {
                    let gr = piece.backward(&d_shortcut)?;
                    (gr.dx.clone(), Some(gr))
                }
                None => (d_shortcut, None),
            };
            let mut grads = vec![(d + dx_short)?];
            for gr in per_layer.into_iter().chain(short_grads) {
                grads.extend([gr.dw, gr.dgamma, gr.dbeta]);
            }
            Ok(grads)
        }),
    )
    .map(Some)
}
