//! Multi-head self-attention's core — `softmax(q·kᵀ/√d_h)·v` per image and head — on the
//! CPU as one op, forward and backward.
//!
//! Written with Candle's ops the core is a reshape, a permute, three narrowed copies, two
//! batched products, a scale, a softmax, a transpose and a copy, each with a node in the
//! graph; the backward then zero-fills and adds a gradient for every edge and runs the
//! batched products one head after another, each split across the threads. Here the
//! queries, keys and values are read in place from the `[q | k | v]` rows the input
//! projection writes, each (image, head) is a handful of small single-threaded products, the
//! images run in parallel, and the heads' outputs are written straight into the
//! token-major rows the output projection reads.

use rayon::prelude::*;

use super::cpu::softmax_row;
use super::gemm::{MatMut, MatRef, matmul, matmul_into};
use super::real::Real;

/// The shape of one attention call: `images` sequences of `seq` tokens, `heads` heads of
/// `head_dim` values each (the model width is `heads · head_dim`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub images: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl Heads {
    /// The model width `d = heads · head_dim`.
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Elements of the `[q | k | v]` input: `images·seq × 3d`.
    pub fn qkv_len(&self) -> usize {
        self.images * self.seq * 3 * self.width()
    }

    /// Elements of the output: `images·seq × d`.
    pub fn out_len(&self) -> usize {
        self.images * self.seq * self.width()
    }

    /// Elements of the attention weights: `images × heads × seq × seq`.
    pub fn probs_len(&self) -> usize {
        self.images * self.heads * self.seq * self.seq
    }

    fn scale<T: Real>(&self) -> T {
        T::from(1.0 / (self.head_dim.max(1) as f64).sqrt()).unwrap_or_else(T::one)
    }

    /// One head's `seq × head_dim` block of the queries (`part` 0), keys (1) or values (2)
    /// inside one image's `seq × 3d` rows.
    fn part<'a, T>(&self, image: &'a [T], part: usize, head: usize) -> MatRef<'a, T> {
        let d = self.width();
        MatRef::strided(
            &image[part * d + head * self.head_dim..],
            (self.seq, self.head_dim),
            (3 * d, 1),
        )
    }
}

/// The attention output (`images·seq × d`, token-major with the heads side by side, what
/// PyTorch's `MultiheadAttention` feeds its output projection) and the attention weights
/// (`images × heads × seq × seq`, kept for the backward) from `qkv`, the input projection's
/// `images·seq × 3d` rows `[q | k | v]`.
pub fn attention_forward<T: Real>(qkv: &[T], h: Heads) -> (Vec<T>, Vec<T>) {
    assert_eq!(
        qkv.len(),
        h.qkv_len(),
        "attention: qkv holds {} values",
        qkv.len()
    );
    let (s, d, hd) = (h.seq, h.width(), h.head_dim);
    let mut out = vec![T::zero(); h.out_len()];
    let mut probs = vec![T::zero(); h.probs_len()];
    if h.out_len() == 0 {
        return (out, probs);
    }
    let scale = h.scale::<T>();
    out.par_chunks_mut(s * d)
        .zip(probs.par_chunks_mut(h.heads * s * s))
        .zip(qkv.par_chunks(s * 3 * d))
        .for_each(|((out, probs), x)| {
            let mut scores = vec![T::zero(); s * s];
            for head in 0..h.heads {
                let (q, k, v) = (h.part(x, 0, head), h.part(x, 1, head), h.part(x, 2, head));
                matmul(&mut scores, q, k.t(), false);
                let p = &mut probs[head * s * s..(head + 1) * s * s];
                for (row, prow) in scores.chunks_exact_mut(s).zip(p.chunks_exact_mut(s)) {
                    for v in row.iter_mut() {
                        *v = *v * scale;
                    }
                    softmax_row(row, prow);
                }
                let dst = MatMut::strided(&mut out[head * hd..], (s, hd), (d, 1));
                matmul_into(dst, MatRef::row_major(p, s, s), v, false, 1);
            }
        });
    (out, probs)
}

/// The gradient of [`attention_forward`]'s output with respect to `qkv`, from `qkv`, the
/// forward's attention weights `probs` and the output gradient `dout` (`images·seq × d`):
/// with `P` one head's weights and `dO` its output gradient, `dV = Pᵀ·dO`,
/// `dS = P ⊙ (dO·Vᵀ − rowsum(P ⊙ dO·Vᵀ)) / √d_h`, `dQ = dS·K`, `dK = dSᵀ·Q`.
pub fn attention_backward<T: Real>(qkv: &[T], probs: &[T], dout: &[T], h: Heads) -> Vec<T> {
    assert_eq!(
        qkv.len(),
        h.qkv_len(),
        "attention: qkv holds {} values",
        qkv.len()
    );
    assert_eq!(
        probs.len(),
        h.probs_len(),
        "attention: {} weights",
        probs.len()
    );
    assert_eq!(
        dout.len(),
        h.out_len(),
        "attention: {} gradients",
        dout.len()
    );
    let (s, d, hd) = (h.seq, h.width(), h.head_dim);
    let mut dqkv = vec![T::zero(); h.qkv_len()];
    if h.out_len() == 0 {
        return dqkv;
    }
    let scale = h.scale::<T>();
    dqkv.par_chunks_mut(s * 3 * d)
        .zip(qkv.par_chunks(s * 3 * d))
        .zip(
            probs
                .par_chunks(h.heads * s * s)
                .zip(dout.par_chunks(s * d)),
        )
        .for_each(|((dx, x), (probs, dout))| {
            let mut ds = vec![T::zero(); s * s];
            for head in 0..h.heads {
                let (q, k, v) = (h.part(x, 0, head), h.part(x, 1, head), h.part(x, 2, head));
                let p = &probs[head * s * s..(head + 1) * s * s];
                let pm = MatRef::row_major(p, s, s);
                let dout_h = MatRef::strided(&dout[head * hd..], (s, hd), (d, 1));
                // dV = Pᵀ · dO
                let dv = MatMut::strided(&mut dx[2 * d + head * hd..], (s, hd), (3 * d, 1));
                matmul_into(dv, pm.t(), dout_h, false, 1);
                // dP = dO · Vᵀ, then the softmax's and the scale's gradient in place.
                matmul(&mut ds, dout_h, v.t(), false);
                for (row, prow) in ds.chunks_exact_mut(s).zip(p.chunks_exact(s)) {
                    let dot = row
                        .iter()
                        .zip(prow)
                        .fold(T::zero(), |a, (&g, &y)| a + g * y);
                    for (g, &y) in row.iter_mut().zip(prow) {
                        *g = y * (*g - dot) * scale;
                    }
                }
                let dsm = MatRef::row_major(&ds, s, s);
                let dq = MatMut::strided(&mut dx[head * hd..], (s, hd), (3 * d, 1));
                matmul_into(dq, dsm, k, false, 1);
                let dk = MatMut::strided(&mut dx[d + head * hd..], (s, hd), (3 * d, 1));
                matmul_into(dk, dsm.t(), q, false, 1);
            }
        });
    dqkv
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook attention in f64, one (image, head) at a time, from the same `[q|k|v]`
    /// rows; returns the output and the loss `Σ out ⊙ r` for finite differences.
    fn reference(qkv: &[f64], h: Heads) -> Vec<f64> {
        let (s, d, hd) = (h.seq, h.width(), h.head_dim);
        let scale = 1.0 / (hd as f64).sqrt();
        let mut out = vec![0.0; h.out_len()];
        for i in 0..h.images {
            let x = &qkv[i * s * 3 * d..(i + 1) * s * 3 * d];
            for head in 0..h.heads {
                let at = |t: usize, part: usize, c: usize| x[t * 3 * d + part * d + head * hd + c];
                for t in 0..s {
                    let scores: Vec<f64> = (0..s)
                        .map(|u| (0..hd).map(|c| at(t, 0, c) * at(u, 1, c)).sum::<f64>() * scale)
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..hd {
                        out[(i * s + t) * d + head * hd + c] =
                            (0..s).map(|u| e[u] / z * at(u, 2, c)).sum();
                    }
                }
            }
        }
        out
    }

    fn data(len: usize, seed: f64) -> Vec<f64> {
        (0..len)
            .map(|i| ((i as f64 + seed) * 0.7311).sin() * 1.3)
            .collect()
    }

    /// Forward against the textbook formula and the backward against central finite
    /// differences of `Σ out ⊙ r`, in f64, for odd sizes (a sequence that is no multiple
    /// of any SIMD width, several heads and images).
    #[test]
    fn attention_matches_the_reference_and_its_gradient_matches_finite_differences() {
        for h in [
            Heads {
                images: 3,
                seq: 5,
                heads: 2,
                head_dim: 3,
            },
            Heads {
                images: 2,
                seq: 17,
                heads: 3,
                head_dim: 4,
            },
            Heads {
                images: 1,
                seq: 1,
                heads: 1,
                head_dim: 2,
            },
        ] {
            let qkv = data(h.qkv_len(), 0.5);
            let r = data(h.out_len(), 3.0);
            let (out, probs) = attention_forward(&qkv, h);
            let want = reference(&qkv, h);
            let worst = out
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-12, "{h:?}: forward off by {worst}");
            let grad = attention_backward(&qkv, &probs, &r, h);
            let loss =
                |x: &[f64]| -> f64 { reference(x, h).iter().zip(&r).map(|(a, b)| a * b).sum() };
            let eps = 1e-6;
            for i in (0..qkv.len()).step_by(7) {
                let (mut up, mut down) = (qkv.clone(), qkv.clone());
                up[i] += eps;
                down[i] -= eps;
                let fd = (loss(&up) - loss(&down)) / (2.0 * eps);
                assert!(
                    (fd - grad[i]).abs() < 1e-7 * (1.0 + fd.abs()),
                    "{h:?}: d/dqkv[{i}] {} against finite differences {fd}",
                    grad[i]
                );
            }
        }
    }

    /// f32 against the f64 result of the same inputs, at ViT-Ti/4's sizes (65 tokens,
    /// 3 heads of 64): relative 1e-4 of the largest value.
    #[test]
    fn attention_in_f32_follows_f64_at_vit_sizes() {
        let h = Heads {
            images: 2,
            seq: 65,
            heads: 3,
            head_dim: 64,
        };
        let q64 = data(h.qkv_len(), 1.0);
        let g64 = data(h.out_len(), 2.0);
        let q32: Vec<f32> = q64.iter().map(|&v| v as f32).collect();
        let g32: Vec<f32> = g64.iter().map(|&v| v as f32).collect();
        let (o64, p64) = attention_forward(&q64, h);
        let (o32, p32) = attention_forward(&q32, h);
        let d64 = attention_backward(&q64, &p64, &g64, h);
        let d32 = attention_backward(&q32, &p32, &g32, h);
        for (name, a, b) in [("out", &o32, &o64), ("dqkv", &d32, &d64)] {
            let top = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(b.iter())
                .fold(0.0f64, |m, (&x, &y)| m.max((f64::from(x) - y).abs()));
            assert!(worst < 1e-4 * top, "{name}: off by {worst} of {top}");
        }
    }
}
