//! A pre-norm transformer encoder block (torchvision's ViT `EncoderBlock` without dropout)
//! on the CPU as two functions of slices: the forward, which keeps what its backward
//! needs, and the backward, which returns every gradient at once.
//!
//! `y = x₁ + MLP(LN₂(x₁))` with `x₁ = x + Attn(LN₁(x))`, `MLP = fc₂ ∘ GELU ∘ fc₁`.
//! Built from per-layer nodes the block is about fifteen nodes whose backward zero-fills
//! and adds an activation-sized gradient for each edge (14 % of a ViT-Ti/4 bf16 step's
//! samples); as one node (`custom::attach_many`) it has one such edge.

use rayon::prelude::*;

use super::Products;
use super::attention::{Heads, attention_backward, attention_forward};
use super::cpu::{
    gelu_backward, gelu_forward, layer_norm_backward, layer_norm_forward, linear_bias_backward,
    linear_bias_forward,
};
use super::real::Real;

/// The block's parameters, PyTorch's shapes: `w_qkv` `[3d, d]`, `w_out` `[d, d]`, `w_fc1`
/// `[m, d]`, `w_fc2` `[d, m]`.
#[derive(Clone, Copy, Debug)]
pub struct BlockParams<'a, T> {
    pub ln1_gamma: &'a [T],
    pub ln1_beta: &'a [T],
    pub w_qkv: &'a [T],
    pub b_qkv: &'a [T],
    pub w_out: &'a [T],
    pub b_out: &'a [T],
    pub ln2_gamma: &'a [T],
    pub ln2_beta: &'a [T],
    pub w_fc1: &'a [T],
    pub b_fc1: &'a [T],
    pub w_fc2: &'a [T],
    pub b_fc2: &'a [T],
}

impl<'a, T> BlockParams<'a, T> {
    /// The parameters in the order above (the order of their gradients in
    /// [`block_backward`]'s output).
    pub fn from_slices(p: &[&'a [T]; 12]) -> Self {
        Self {
            ln1_gamma: p[0],
            ln1_beta: p[1],
            w_qkv: p[2],
            b_qkv: p[3],
            w_out: p[4],
            b_out: p[5],
            ln2_gamma: p[6],
            ln2_beta: p[7],
            w_fc1: p[8],
            b_fc1: p[9],
            w_fc2: p[10],
            b_fc2: p[11],
        }
    }
}

/// The block's sizes and settings.
#[derive(Clone, Copy, Debug)]
pub struct BlockShape {
    pub heads: Heads,
    /// The MLP's hidden width.
    pub mlp: usize,
    /// Both layer norms' epsilon.
    pub eps: f64,
    pub products: Products,
}

/// What the forward keeps for the backward, each `rows × width` row-major:
/// the two layer norms' outputs, `[q | k | v]`, the attention weights, the attention's
/// output (before its projection), `x₁`, the MLP's hidden pre-activation and its GELU.
pub struct Saved<T> {
    pub ln1: Vec<T>,
    pub qkv: Vec<T>,
    pub probs: Vec<T>,
    pub att: Vec<T>,
    pub x1: Vec<T>,
    pub ln2: Vec<T>,
    pub hidden: Vec<T>,
    pub act: Vec<T>,
}

/// `dst += src`, in parallel blocks.
fn add_into<T: Real>(dst: &mut [T], src: &[T]) {
    dst.par_chunks_mut(1 << 14)
        .zip(src.par_chunks(1 << 14))
        .for_each(|(d, s)| {
            for (a, &b) in d.iter_mut().zip(s) {
                *a += b;
            }
        });
}

/// The block's output for `x` (`images·seq × d`) and what its backward needs.
pub fn block_forward<T: Real>(
    x: &[T],
    p: &BlockParams<'_, T>,
    s: &BlockShape,
) -> (Vec<T>, Saved<T>) {
    let d = s.heads.width();
    let m = s.mlp;
    let pr = s.products;
    let ln1 = layer_norm_forward(x, p.ln1_gamma, p.ln1_beta, s.eps);
    let qkv = linear_bias_forward(&ln1, p.w_qkv, Some(p.b_qkv), d, 3 * d, pr);
    let (att, probs) = attention_forward(&qkv, s.heads);
    let mut x1 = linear_bias_forward(&att, p.w_out, Some(p.b_out), d, d, pr);
    add_into(&mut x1, x);
    let ln2 = layer_norm_forward(&x1, p.ln2_gamma, p.ln2_beta, s.eps);
    let hidden = linear_bias_forward(&ln2, p.w_fc1, Some(p.b_fc1), d, m, pr);
    let act = gelu_forward(&hidden);
    let mut y = linear_bias_forward(&act, p.w_fc2, Some(p.b_fc2), m, d, pr);
    add_into(&mut y, &x1);
    let saved = Saved {
        ln1,
        qkv,
        probs,
        att,
        x1,
        ln2,
        hidden,
        act,
    };
    (y, saved)
}

/// The gradients of [`block_forward`] for the output gradient `dy`, end to end: `dx`, then
/// the twelve parameters' in [`BlockParams`] order.
pub fn block_backward<T: Real>(
    x: &[T],
    p: &BlockParams<'_, T>,
    saved: &Saved<T>,
    dy: &[T],
    s: &BlockShape,
) -> Vec<T> {
    let d = s.heads.width();
    let m = s.mlp;
    let pr = s.products;
    let rows = x.len() / d.max(1);
    // fc₂: its input gradient, then weight and bias.
    let g_fc2 = linear_bias_backward(&saved.act, p.w_fc2, dy, m, d, true, pr);
    let (d_act, g_fc2) = g_fc2.split_at(rows * m);
    let d_hidden = gelu_backward(&saved.hidden, d_act);
    let g_fc1 = linear_bias_backward(&saved.ln2, p.w_fc1, &d_hidden, d, m, true, pr);
    let (d_ln2, g_fc1) = g_fc1.split_at(rows * d);
    let g_ln2 = layer_norm_backward(&saved.x1, p.ln2_gamma, d_ln2, s.eps);
    let (d_x1, g_ln2) = g_ln2.split_at(rows * d);
    // The residual: x₁'s gradient is the output's plus the MLP branch's.
    let mut g1 = d_x1.to_vec();
    add_into(&mut g1, dy);
    let g_out = linear_bias_backward(&saved.att, p.w_out, &g1, d, d, true, pr);
    let (d_att, g_out) = g_out.split_at(rows * d);
    let d_qkv = attention_backward(&saved.qkv, &saved.probs, d_att, s.heads);
    let g_qkv = linear_bias_backward(&saved.ln1, p.w_qkv, &d_qkv, d, 3 * d, true, pr);
    let (d_ln1, g_qkv) = g_qkv.split_at(rows * d);
    let g_ln1 = layer_norm_backward(x, p.ln1_gamma, d_ln1, s.eps);
    let (d_x, g_ln1) = g_ln1.split_at(rows * d);
    let mut out = Vec::with_capacity(x.len() + 12 * d * d + 8 * d * m);
    out.extend_from_slice(d_x);
    add_into(&mut out[..], &g1);
    // Layer norms give (γ, β); the linears (w, b): already in parameter order.
    for g in [g_ln1, g_qkv, g_out, g_ln2, g_fc1, g_fc2] {
        out.extend_from_slice(g);
    }
    out
}
