//! Dense convolutions with small outputs (ResNet-18's 8 × 8 and 4 × 4 stages, strided ones
//! included) as one matrix product per kernel tap, over only the positions where that tap
//! reads the image.
//!
//! im2col + gemm multiplies every tap at every position, and where the window hangs over
//! the padding it multiplies zeros: 16 % of a 3 × 3 layer's multiply-adds at 8 × 8, 31 % at
//! 4 × 4. Those were exactly the layers where annt trailed PyTorch, whose oneDNN runs a
//! direct convolution that skips them
//! (`benches/results/conv-layers-annt-vs-torch-zen4-2026-12-06.txt`).
//!
//! Here the activations are laid out position-major, `P[ch][p·n + i]` (channel, then
//! position `p` in the plane, then image `i`): a whole batch's positions side by side, the
//! images innermost. A tap `(dy, dx)` maps output position `(y, x)` to input `(y+dy, x+dx)`;
//! the outputs where that input lies inside the image are a rectangle, and in this layout
//! each of its rows — or the whole rectangle, when the tap is in the window's middle column
//! — is one contiguous run of columns in both the output and the input matrix, at the same
//! row stride. So each tap is a handful of matrix products on views of the two matrices,
//! with no unfolding, no zeros and no copies:
//!
//! - forward: `Y[:, out] += W_t · X[:, in]`;
//! - input gradient: `dX[:, in] += W_tᵀ · dY[:, out]`;
//! - weight gradient: `dW_t = Σ dY[:, out] · X[:, in]ᵀ`, written into the tap's
//!   interleaved place in the `c_out × c × kh × kw` weight gradient.
//!
//! At a stride `s` the input is split into its `s²` phase planes (rows `s·y + py`, columns
//! `s·x + px`), each the output's size, and every tap reads one of them, shifted ([`taps`]).
//! The products run through gemm in f32 (and f64 in the tests), or on the bf16 unit under
//! `--amp bf16` ([`Lhs`]). The centre tap covers every position, so it goes first and writes
//! rather than adds. The work is split over blocks of channels; no element's sum depends on
//! the blocks, so a run gives the same bits on any number of threads.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::Products;
use super::bf16::{self, Dot, PackedA, PackedB};
use super::cpu::{Grads, Real, Scratch, Window, f32_view};
use super::gemm::{MatMut, MatRef, matmul_into};

/// Output positions per image up to which a layer takes this path (8 × 8). Measured
/// beyond it (`conv_layer_times`, alternating `ANNT_CPU_TAPS=off/on`, 2-core Zen 4, batch
/// 32): ResNet-18's 128 → 128 layer at 16 × 16, where the padding is 8 % of the work, was
/// level (forward 13.4/13.1 against 14.1/13.5 ms, backward 28.1/29.0 against 28.3/27.3).
const MAX_PLANE: usize = 64;
/// Fewest input and output channels for this path: below them a tap's product is too thin
/// for gemm's register tile and im2col + gemm (or the f32 patch product) is faster. Its
/// 64 → 128 stride-2 layer at 32 × 32 (16 × 16 out) measured 5–10 % slower this way.
const MIN_CHANNELS: usize = 128;
/// Rows (channels) of a product per parallel task: the rows shared out over the pool's
/// threads, in multiples of 16, at most 128 (on 2 threads, 128 measured slightly faster
/// than 64: each block packs the other operand again). A block's rows change no element's
/// sum, which runs over the reduction alone in an order fixed by its length, so the result
/// is the same bits on any pool (`results_do_not_depend_on_the_thread_count`).
fn rows_per_task(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(threads).next_multiple_of(16).clamp(16, 128)
}

/// Turns this path off for an A/B in one binary: `ANNT_CPU_TAPS=off` runs these layers
/// through im2col + gemm as before.
pub const TAPS_ENV: &str = "ANNT_CPU_TAPS";

/// Which pass of a convolution asks [`chosen`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pass {
    Forward,
    Backward,
}

/// Whether this pass of a convolution runs tap by tap: a geometry [`applies`] takes,
/// [`TAPS_ENV`] not `off`, and f32 data where the products run on a bf16 unit.
///
/// On AVX512-BF16 a stride-1 forward pass over 8 × 8 stays on the pair product
/// (`bf16::Patches`), which converts the images to bf16 once where a tap's product converts
/// its run of them again for every tap and block of rows: ResNet-18's 256 → 256 layer took
/// 9.1–11.9 ms tap by tap against 7.2–7.7 (`conv_layer_times`, alternating runs, 2-core
/// Zen 4). Its backward pass, the 4 × 4 layers and the strided ones gain: 512 → 512 at
/// 4 × 4 forward 7.3–8.5 ms against 10.8–18.0, backward 16.8–19.9 against 49.8–60.3;
/// 256 → 256 backward 15.3–16.3 against 17.7–18.8.
pub(super) fn chosen<T: Real>(g: &Window, c_out: usize, products: Products, pass: Pass) -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    let on = *ON.get_or_init(|| super::switch_on(TAPS_ENV));
    let unit_gains = match products.bf16() {
        None => true,
        Some(_) => {
            T::as_f32(&[]).is_some()
                && !(pass == Pass::Forward && g.stride == 1 && g.out_len() > 16)
        }
    };
    on && unit_gains && applies(g, c_out)
}

/// Whether a convolution of window `g` and `c_out` output channels runs tap by tap: a square
/// odd window with "same" padding, a stride that divides the input's sides (each tap then
/// reads one phase plane of the input, shifted), an output plane of at most [`MAX_PLANE`]
/// positions and at least [`MIN_CHANNELS`] channels on both sides.
pub(super) fn applies(g: &Window, c_out: usize) -> bool {
    g.kh == g.kw
        && g.kh > 1
        && g.kh == 2 * g.pad + 1
        && g.stride >= 1
        && g.h.is_multiple_of(g.stride)
        && g.w.is_multiple_of(g.stride)
        && g.out_len() <= MAX_PLANE
        && g.c.min(c_out) >= MIN_CHANNELS
}

/// One contiguous run of a tap's valid positions: output positions `out..out + len` read
/// positions `inp..inp + len` of the tap's phase plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    out: usize,
    inp: usize,
    len: usize,
}

/// A tap of the window: its index `ky·kw + kx` in the weight, the phase plane of the input
/// it reads (`py·s + px`: input rows `s·y + py`, columns `s·x + px`; the whole input at
/// stride 1) and its runs of valid positions.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tap {
    index: usize,
    phase: usize,
    runs: Vec<Span>,
}

/// Every tap of `g`'s window, the centre tap first (it reads phase 0 unshifted, so it
/// covers every output position in one run).
///
/// Output `(y, x)` and kernel row `ky` read input row `s·y + ky − pad`, which is row
/// `y + sy` of phase `py`, with `ky − pad = s·sy + py` (`0 ≤ py < s`); the same for columns.
/// A phase plane has the output's size (the stride divides the sides), so the tap is a
/// shift by `(sy, sx)` within it, valid where `y + sy` and `x + sx` stay inside.
fn taps(g: &Window) -> Vec<Tap> {
    let (h, w) = (g.out_h() as isize, g.out_w() as isize);
    let (s, pad) = (g.stride as isize, g.pad as isize);
    let centre = g.pad * g.kw + g.pad;
    let mut order: Vec<usize> = vec![centre];
    order.extend((0..g.kh * g.kw).filter(|&t| t != centre));
    order
        .into_iter()
        .map(|t| {
            let (ky, kx) = ((t / g.kw) as isize - pad, (t % g.kw) as isize - pad);
            let (sy, py) = (ky.div_euclid(s), ky.rem_euclid(s));
            let (sx, px) = (kx.div_euclid(s), kx.rem_euclid(s));
            let (y0, y1) = ((-sy).max(0), (h - sy).min(h));
            let (x0, x1) = ((-sx).max(0), (w - sx).min(w));
            let at = |y: isize, x: isize| (y * w + x) as usize;
            let runs = if y1 <= y0 || x1 <= x0 {
                Vec::new()
            } else if sx == 0 {
                vec![Span {
                    out: at(y0, 0),
                    inp: at(y0 + sy, 0),
                    len: ((y1 - y0) * w) as usize,
                }]
            } else {
                (y0..y1)
                    .map(|y| Span {
                        out: at(y, x0),
                        inp: at(y + sy, x0 + sx),
                        len: (x1 - x0) as usize,
                    })
                    .collect()
            };
            Tap {
                index: t,
                phase: (py * s + px) as usize,
                runs,
            }
        })
        .collect()
}

/// The row stride of a position-major matrix of `l` positions × `n` images: one cache line
/// more than a row. A batch of 32 makes rows of 512 or 2048 values, and rows a power of two
/// apart fall into the same cache sets: gemm's packing of a block of rows then missed the
/// cache on every row (a weight gradient at 8 × 8 took twice its arithmetic's time).
fn lead(l: usize, n: usize) -> usize {
    l * n + 16
}

/// `images` (`n × ch × h × w`, NCHW) into `dst` position-major, split into the `s × s` phase
/// planes of stride `s` (`h/s × w/s` positions, `l` of them): row `c·s² + phase`, element
/// `p·n + i` (row stride [`lead`]) is image `i`'s channel `c` at the phase's position `p`.
/// At stride 1 the one phase is the image.
fn to_positions<T: Real>(
    images: &[T],
    (n, ch): (usize, usize),
    (h, w): (usize, usize),
    s: usize,
    dst: &mut [T],
) {
    let (ph, pw) = (h / s, w / s);
    let (l, ld) = (ph * pw, lead(ph * pw, n));
    // Image by image, the block's 16 rows each: an image's planes for the block's channels
    // are one contiguous run of the source. (Row by row, each row read one plane from each
    // of the n images, `ch·h·w` values apart: every read a cache miss the prefetcher could
    // not foresee, 6.8 % of a 4 × 4 layer's bf16 time.)
    dst.par_chunks_mut(16 * ld)
        .enumerate()
        .for_each(|(block, rows)| {
            for i in 0..n {
                for (j, row) in rows.chunks_exact_mut(ld).enumerate() {
                    let r = block * 16 + j;
                    let (c, phase) = (r / (s * s), r % (s * s));
                    let (py, px) = (phase / s, phase % s);
                    let row = &mut row[..l * n];
                    let plane = &images[(i * ch + c) * h * w..][..h * w];
                    for y in 0..ph {
                        let line = &plane[(s * y + py) * w + px..];
                        for x in 0..pw {
                            row[(y * pw + x) * n + i] = line[s * x];
                        }
                    }
                }
            }
        });
}

/// The inverse of [`to_positions`]: `src` (rows `c·s² + phase`) into `images`
/// (`n × ch × h × w`), in parallel over groups of 16 images (a group reads whole cache lines
/// of `src`). The two walk the phase planes with the same nested loops: one shared iterator
/// of (plane index, position) pairs measured ~8 % slower forward on ResNet-18's 4 × 4 and
/// 8 × 8 layers (`conv_layer_times`, three alternating runs of each binary).
fn from_positions<T: Real>(
    src: &[T],
    (n, ch): (usize, usize),
    (h, w): (usize, usize),
    s: usize,
    images: &mut [T],
) {
    let (ph, pw) = (h / s, w / s);
    let ld = lead(ph * pw, n);
    images
        .par_chunks_mut(16 * ch * h * w)
        .enumerate()
        .for_each(|(group, out)| {
            let i0 = group * 16;
            let count = out.len() / (ch * h * w);
            // Channel by channel, the group's images each: a channel's rows are read for
            // all 16 images while their lines are in L1.
            for c in 0..ch {
                for j in 0..count {
                    let plane = &mut out[(j * ch + c) * h * w..][..h * w];
                    for phase in 0..s * s {
                        let (py, px) = (phase / s, phase % s);
                        let row = &src[(c * s * s + phase) * ld + i0 + j..];
                        for y in 0..ph {
                            let line = &mut plane[(s * y + py) * w + px..];
                            for x in 0..pw {
                                line[s * x] = row[(y * pw + x) * n];
                            }
                        }
                    }
                }
            }
        });
}

/// Rows of the weight (output channels for [`tap_major`], input channels for
/// [`tap_major_t`]) per task of the tap-major copies.
const TAP_ROWS: usize = 16;

/// `dst` (`kk` matrices of `rows × cols`) split into blocks of [`TAP_ROWS`] rows, each
/// block holding its rows of every tap's matrix: `blocks[b][t]`.
fn row_blocks<T>(dst: &mut [T], kk: usize, rows: usize, cols: usize) -> Vec<Vec<&mut [T]>> {
    let mut blocks: Vec<Vec<&mut [T]>> = (0..rows.div_ceil(TAP_ROWS))
        .map(|_| Vec::with_capacity(kk))
        .collect();
    for tap in dst.chunks_exact_mut(rows * cols).take(kk) {
        for (block, part) in blocks.iter_mut().zip(tap.chunks_mut(TAP_ROWS * cols)) {
            block.push(part);
        }
    }
    blocks
}

/// The weight `c_out × c × kk` as `kk` matrices `c_out × c`, one per tap, into `dst`, in
/// parallel over blocks of output channels: each task reads its filters once. (One task
/// per tap read the whole weight once per tap — 9 × 9.4 MiB for a 512 → 512 layer.)
fn tap_major<T: Real>(w: &[T], c_out: usize, c: usize, kk: usize, dst: &mut [T]) {
    row_blocks(dst, kk, c_out, c)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, mut taps)| {
            let filters = &w[b * TAP_ROWS * c * kk..];
            // Filter by filter, one tap at a time: the filter (c · kk values) stays in L1
            // across its taps and each tap's run is written in order. (The whole block's
            // 16 filters, 288 KiB at 512 channels, read from L2 once per tap was 2.5 % of
            // a 4 × 4 layer's bf16 samples.)
            let rows = taps.first().map_or(0, |t| t.len() / c.max(1));
            for o in 0..rows {
                let filter = &filters[o * c * kk..][..c * kk];
                for (t, tap) in taps.iter_mut().enumerate() {
                    for (v, cell) in tap[o * c..][..c].iter_mut().zip(filter.chunks_exact(kk)) {
                        *v = cell[t];
                    }
                }
            }
        });
}

/// The weight `c_out × c × kk` as `kk` matrices `c × c_out` (each tap's transpose), into
/// `dst`: the input gradient's left operands, rows contiguous for gemm's and the bf16
/// unit's packing. In parallel over blocks of input channels, each task reading only its
/// channels of every filter.
fn tap_major_t<T: Real>(w: &[T], c_out: usize, c: usize, kk: usize, dst: &mut [T]) {
    row_blocks(dst, kk, c, c_out)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, mut taps)| {
            let c0 = b * TAP_ROWS;
            // Row j of tap t is input channel c0 + j of every filter at that tap. Sixteen
            // filters at a time, their runs of `rows · kk` values are copied into a tile
            // (contiguous reads), and each (j, t) row gets its 16 values from the tile in
            // one contiguous write.
            let rows = taps.first().map_or(0, |t| t.len() / c_out.max(1));
            let run = rows * kk;
            let mut tile = vec![T::zero(); 16 * run];
            for o0 in (0..c_out).step_by(16) {
                let width = (c_out - o0).min(16);
                for (k, part) in tile.chunks_exact_mut(run).take(width).enumerate() {
                    part.copy_from_slice(&w[((o0 + k) * c + c0) * kk..][..run]);
                }
                for (t, tap) in taps.iter_mut().enumerate() {
                    for (j, row) in tap.chunks_exact_mut(c_out).enumerate() {
                        let at = j * kk + t;
                        for (k, v) in row[o0..o0 + width].iter_mut().enumerate() {
                            *v = tile[k * run + at];
                        }
                    }
                }
            }
        });
}

/// Columns `[start·n, (start + len)·n)` of `rows` rows `row_stride` apart, from the start of
/// `data`: a run of positions of a position-major matrix.
fn columns<T>(
    data: &[T],
    (rows, row_stride): (usize, usize),
    n: usize,
    start: usize,
    len: usize,
) -> MatRef<'_, T> {
    MatRef {
        data: &data[start * n..],
        rows,
        cols: len * n,
        row_stride,
        col_stride: 1,
    }
}

/// A product's left operand: through gemm as it is, or packed once for the bf16 unit and
/// used for every run of a tap.
enum Lhs<'a, T> {
    Gemm(MatRef<'a, T>),
    Bf16(PackedA, Dot),
}

impl<'a, T: Real> Lhs<'a, T> {
    fn new(a: MatRef<'a, T>, products: Products) -> Self {
        match products.bf16() {
            Some(dot) => Lhs::Bf16(
                PackedA::new(f32_view(a).expect("bf16 on f32 data"), dot),
                dot,
            ),
            None => Lhs::Gemm(a),
        }
    }

    /// As [`Self::product`], from columns `cols` of `b` packed once for the bf16 unit
    /// ([`PackedB`], [`packs_once`]) when the caller packed it, else from `b` itself.
    fn product_from(
        &self,
        dst: &mut [T],
        ld: usize,
        (b, packed): (MatRef<'_, T>, Option<&PackedB>),
        cols: std::ops::Range<usize>,
        accumulate: bool,
    ) {
        match (self, packed) {
            (Lhs::Bf16(a, dot), Some(pb)) => {
                let dst = T::as_f32_mut(dst).expect("bf16 on f32 data");
                bf16::matmul_packed_cols_into(dst, ld, a, pb, cols, accumulate, *dot);
            }
            _ => self.product(dst, ld, b, accumulate),
        }
    }

    /// The `m × b.cols` block at the start of `dst`, rows `ld` apart, `= self · b` (or `+=`).
    fn product(&self, dst: &mut [T], ld: usize, b: MatRef<'_, T>, accumulate: bool) {
        match self {
            Lhs::Gemm(a) => {
                let dst = MatMut::strided(dst, (a.rows, b.cols), (ld, 1));
                matmul_into(dst, *a, b, accumulate, 1);
            }
            Lhs::Bf16(a, dot) => {
                let (dst, b) = (T::as_f32_mut(dst), f32_view(b));
                let (dst, b) = (dst.expect("bf16 on f32 data"), b.expect("bf16 on f32 data"));
                bf16::matmul_packed_into(dst, ld, a, b, accumulate, *dot);
            }
        }
    }
}

/// Whether the forward pass and the input gradient pack their right operand once for the
/// bf16 unit: `products` names a unit, the data is f32, and a batch of `n` images makes
/// each position's columns whole blocks of 16 (`n` a multiple of 16). Then a position-major
/// activation (the input's phase planes, `dY`) is packed once per pass, and every tap's run
/// multiplies a run of its blocks, where [`Lhs::product`] packed the run again for every tap
/// and block of rows (9 × 4 times on ResNet-18's 512 → 512 layer). The weight gradient
/// keeps packing per run: gathering its runs' blocks from operands packed once measured no
/// faster (`conv_layer_times`, three alternating runs).
fn packs_once<T: Real>(products: Products, n: usize) -> Option<Dot> {
    let dot = products.bf16()?;
    (T::as_f32(&[]).is_some() && n.is_multiple_of(16)).then_some(dot)
}

/// `rows` rows of `cols` values, `row_stride` apart, from the start of `data`, packed once
/// for the bf16 unit (`PackedB`, the rows its reduction).
fn packed_rows<T: Real>(
    data: &[T],
    (rows, cols, row_stride): (usize, usize, usize),
    dot: Dot,
) -> PackedB {
    let m = MatRef {
        data,
        rows,
        cols,
        row_stride,
        col_stride: 1,
    };
    PackedB::new_par(f32_view(m).expect("bf16 on f32 data"), dot)
}

/// The forward convolution (`x`: `n × c × h × w`, `w`: `c_out × c × kh × kw`) into `out`
/// (`n × c_out × oh × ow`).
pub(super) fn forward<T: Real>(
    x: &[T],
    w: &[T],
    g: &Window,
    c_out: usize,
    products: Products,
    out: &mut [T],
) {
    let (n, c, kk, s) = (g.n, g.c, g.kh * g.kw, g.stride);
    let (oh, ow) = (g.out_h(), g.out_w());
    let ld = lead(oh * ow, n);
    let taps = taps(g);
    let mut xp = Scratch::take(0, c * s * s * ld);
    to_positions(x, (n, c), (g.h, g.w), s, &mut xp);
    let mut wt = Scratch::take(1, kk * c_out * c);
    tap_major(w, c_out, c, kk, &mut wt);
    let mut yp = Scratch::take(2, c_out * ld);
    let (xp, wt) = (&*xp, &*wt);
    // Each phase plane packed once for the bf16 unit when the runs are whole blocks.
    let packed: Vec<PackedB> = match packs_once::<T>(products, n) {
        Some(dot) => (0..s * s)
            .map(|p| packed_rows(&xp[p * ld..], (c, (oh * ow) * n, s * s * ld), dot))
            .collect(),
        None => Vec::new(),
    };
    // Y[o, out] = Σ_t W_t[o, :] · X_phase(t)[:, in], in parallel over blocks of output
    // channels; the centre tap writes every position first.
    let per = rows_per_task(c_out);
    yp.par_chunks_mut(per * ld)
        .enumerate()
        .for_each(|(block, ys)| {
            let (o0, m) = (block * per, ys.len() / ld);
            for (first, tap) in taps.iter().enumerate() {
                let a = MatRef::row_major(&wt[(tap.index * c_out + o0) * c..][..m * c], m, c);
                let a = Lhs::new(a, products);
                let phase = &xp[tap.phase * ld..];
                for r in &tap.runs {
                    let b = columns(phase, (c, s * s * ld), n, r.inp, r.len);
                    let cols = r.inp * n..(r.inp + r.len) * n;
                    let b = (b, packed.get(tap.phase));
                    a.product_from(&mut ys[r.out * n..], ld, b, cols, first > 0);
                }
            }
        });
    from_positions(&yp, (n, c_out), (oh, ow), 1, out);
}

/// Both gradients of [`forward`] into `grads`.
pub(super) fn backward<T: Real>(
    x: &[T],
    w: &[T],
    dy: &[T],
    g: &Window,
    c_out: usize,
    products: Products,
    grads: Grads<'_, T>,
) {
    let Grads { dx, dw } = grads;
    let (n, c, kk, s) = (g.n, g.c, g.kh * g.kw, g.stride);
    let (oh, ow) = (g.out_h(), g.out_w());
    let ld = lead(oh * ow, n);
    let taps = taps(g);
    let mut xp = Scratch::take(0, c * s * s * ld);
    to_positions(x, (n, c), (g.h, g.w), s, &mut xp);
    let mut dyp = Scratch::take(2, c_out * ld);
    to_positions(dy, (n, c_out), (oh, ow), 1, &mut dyp);
    let dyp = &*dyp;
    let l = oh * ow;
    weight_grad(&xp, dyp, g, c_out, &taps, products, dw);
    let Some(dx) = dx else {
        return;
    };
    // dX_phase(t)[:, in] += W_tᵀ · dY[:, out], in parallel over blocks of input channels
    // (each block's rows of every phase are contiguous: rows c·s² + phase).
    let mut wt = Scratch::take(1, kk * c * c_out);
    tap_major_t(w, c_out, c, kk, &mut wt);
    let wt = &*wt;
    // dY packed once for the bf16 unit when the runs are whole blocks.
    let packed_dy =
        packs_once::<T>(products, n).map(|dot| packed_rows(dyp, (c_out, l * n, ld), dot));
    // X's position-major copy is done with: its buffer takes dX. At stride 1 the centre tap
    // writes every element first; at a larger stride no tap covers a whole phase, so the
    // phases start from zero and every tap adds.
    let dxp = &mut *xp;
    if s > 1 {
        dxp.par_chunks_mut(1 << 14).for_each(|v| v.fill(T::zero()));
    }
    let per = rows_per_task(c);
    dxp.par_chunks_mut(per * s * s * ld)
        .enumerate()
        .for_each(|(block, dxs)| {
            let (c0, m) = (block * per, dxs.len() / (s * s * ld));
            for (first, tap) in taps.iter().enumerate() {
                // W_tᵀ's rows c0..c0 + m.
                let a = &wt[(tap.index * c + c0) * c_out..][..m * c_out];
                let a = Lhs::new(MatRef::row_major(a, m, c_out), products);
                for r in &tap.runs {
                    let b = columns(dyp, (c_out, ld), n, r.out, r.len);
                    let cols = r.out * n..(r.out + r.len) * n;
                    let start = tap.phase * ld + r.inp * n;
                    let b = (b, packed_dy.as_ref());
                    a.product_from(&mut dxs[start..], s * s * ld, b, cols, s > 1 || first > 0);
                }
            }
        });
    from_positions(dxp, (n, c), (g.h, g.w), s, dx);
}

/// The weight gradient through gemm (f32, f64) or the bf16 unit packing each run's
/// operands: dW_t (rows o of dY) = Σ over the tap's runs dY[o, out] · X_phase(t)[:, in]ᵀ,
/// written into the tap's interleaved place: dw[o][ch][t] (row stride c·kk, column stride
/// kk).
fn weight_grad<T: Real>(
    xp: &[T],
    dyp: &[T],
    g: &Window,
    c_out: usize,
    taps: &[Tap],
    products: Products,
    dw: &mut [T],
) {
    let (n, c, kk, s) = (g.n, g.c, g.kh * g.kw, g.stride);
    let ld = lead(g.out_h() * g.out_w(), n);
    let per = rows_per_task(c_out);
    dw.par_chunks_mut(per * c * kk)
        .enumerate()
        .for_each(|(block, dws)| {
            let (o0, m) = (block * per, dws.len() / (c * kk));
            let dy_rows = &dyp[o0 * ld..(o0 + m) * ld];
            // The bf16 unit writes dense rows: each tap's dW block goes to its place in a
            // tap-major scratch, and one pass at the end interleaves the taps into `dws`. (A
            // strided copy per tap wrote every cache line of the block — 2.4 MB at 512
            // channels, past L2 — nine times: 8 % of a 4 × 4 layer's bf16 time.)
            let bf16 = products.bf16().is_some();
            let mut dense = Scratch::<T>::take(3, if bf16 { kk * m * c } else { 0 });
            for tap in taps {
                let t = tap.index;
                if tap.runs.is_empty() {
                    // A tap that never reads the image (a window wider than the plane).
                    if bf16 {
                        dense[t * m * c..][..m * c].fill(T::zero());
                    } else {
                        for row in dws.chunks_exact_mut(c * kk) {
                            row.iter_mut()
                                .skip(t)
                                .step_by(kk)
                                .for_each(|v| *v = T::zero());
                        }
                    }
                }
                let phase = &xp[tap.phase * ld..];
                for (k, r) in tap.runs.iter().enumerate() {
                    let a = columns(dy_rows, (m, ld), n, r.out, r.len);
                    let b = columns(phase, (c, s * s * ld), n, r.inp, r.len).t();
                    match products.bf16() {
                        None => {
                            let dst = MatMut::strided(&mut dws[t..], (m, c), (c * kk, kk));
                            matmul_into(dst, a, b, k > 0, 1);
                        }
                        Some(dot) => {
                            let f32s = "bf16 on f32 data";
                            let dst = &mut dense[t * m * c..][..m * c];
                            let dst = T::as_f32_mut(dst).expect(f32s);
                            let (a, b) = (f32_view(a).expect(f32s), f32_view(b).expect(f32s));
                            bf16::matmul(dst, a, b, k > 0, dot);
                        }
                    }
                }
            }
            if bf16 {
                // Row by row, one tap at a time: the destination row stays in L1 while each
                // tap's source row is read in order. (Reading the kk sources side by side
                // read kk streams `m·c` floats apart, a multiple of 4 KiB: the same L1 sets.)
                for (o, row) in dws.chunks_exact_mut(c * kk).enumerate() {
                    for t in 0..kk {
                        let src = &dense[(t * m + o) * c..][..c];
                        for (cell, v) in row.chunks_exact_mut(kk).zip(src) {
                            cell[t] = *v;
                        }
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::super::cpu::{conv_backward, conv_forward};
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::util::rng::Rng::new(seed);
        (0..len).map(|_| rng.normal() as f64).collect()
    }

    fn assert_close(got: &[f64], want: &[f64], what: &str, g: &Window) {
        assert_eq!(got.len(), want.len(), "{what} {g:?}");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() < 1e-10 * b.abs().max(1.0),
                "{what} {g:?} [{i}]: {a} against {b}"
            );
        }
    }

    /// Windows of every shape this path meets and the edge cases past them: planes of one
    /// position, planes narrower than the window, odd sides, 5 × 5 windows, strides 2 and 3.
    fn windows() -> Vec<(Window, usize)> {
        window_list([
            (3, 4, 4, 4, 3, 5, 1),
            (2, 3, 8, 8, 3, 4, 1),
            (5, 2, 3, 5, 3, 3, 1),
            (1, 3, 1, 1, 3, 2, 1),
            (2, 2, 2, 3, 5, 3, 1),
            (3, 3, 5, 4, 5, 2, 1),
            (17, 2, 2, 2, 3, 3, 1),
            (3, 4, 8, 8, 3, 5, 2),
            (2, 3, 4, 6, 3, 2, 2),
            (2, 2, 2, 2, 3, 3, 2),
            (2, 2, 6, 6, 5, 3, 2),
            (2, 3, 6, 3, 3, 2, 3),
            (17, 2, 4, 4, 3, 2, 2),
            // More channels than one block of the tap-major copies, ragged.
            (2, 19, 4, 4, 3, 37, 1),
            (2, 35, 4, 4, 3, 18, 2),
        ])
    }

    /// Square-kernel "same" windows from `(n, c, h, w, k, c_out, stride)`, with their output
    /// channels.
    fn window_list<const N: usize>(
        specs: [(usize, usize, usize, usize, usize, usize, usize); N],
    ) -> Vec<(Window, usize)> {
        specs
            .into_iter()
            .map(|(n, c, h, w, k, co, stride)| {
                let g = Window {
                    n,
                    c,
                    h,
                    w,
                    kh: k,
                    kw: k,
                    stride,
                    pad: k / 2,
                };
                (g, co)
            })
            .collect()
    }

    /// Tap by tap equals im2col + gemm (`cpu`'s path for these few channels, itself checked
    /// against the naive convolution and as the exact adjoint in `cpu`'s tests) for the
    /// output and both gradients, and for the weight gradient alone.
    #[test]
    fn tap_products_equal_the_unfolded_convolution_and_its_gradients() {
        for (seed, (g, co)) in windows().into_iter().enumerate() {
            let seed = seed as u64;
            let x = values(g.n * g.c * g.h * g.w, 100 + seed);
            let w = values(co * g.patch_len(), 200 + seed);
            let dy = values(g.n * co * g.out_len(), 300 + seed);
            let want_y = conv_forward(&x, &w, &g, co, Products::Native);
            let (want_dx, want_dw) = conv_backward(&x, &w, &dy, &g, co, Products::Native);
            let mut y = vec![f64::NAN; g.n * co * g.out_len()];
            forward(&x, &w, &g, co, Products::Native, &mut y);
            assert_close(&y, &want_y, "y", &g);
            let mut dx = vec![f64::NAN; x.len()];
            let mut dw = vec![f64::NAN; w.len()];
            backward(
                &x,
                &w,
                &dy,
                &g,
                co,
                Products::Native,
                Grads {
                    dx: Some(&mut dx),
                    dw: &mut dw,
                },
            );
            assert_close(&dx, &want_dx, "dx", &g);
            assert_close(&dw, &want_dw, "dw", &g);
            dw.fill(f64::NAN);
            backward(
                &x,
                &w,
                &dy,
                &g,
                co,
                Products::Native,
                Grads {
                    dx: None,
                    dw: &mut dw,
                },
            );
            assert_close(&dw, &want_dw, "dw alone", &g);
        }
    }

    /// Windows whose batch makes each position's columns whole blocks, so that the bf16
    /// unit's right operands are packed once per pass ([`packs_once`]): 16, 32, 48 and 64
    /// images; ragged channel blocks, strides 1 and 2, a 5 × 5 window, a plane of one
    /// position (only the centre tap reads it) and one narrower than the window.
    fn batched_windows() -> Vec<(Window, usize)> {
        window_list([
            (32, 3, 4, 4, 3, 5, 1),
            (32, 19, 4, 4, 3, 37, 1),
            (64, 4, 8, 8, 3, 3, 1),
            (32, 35, 8, 8, 3, 18, 2),
            (32, 3, 6, 6, 3, 4, 2),
            (32, 2, 4, 4, 5, 3, 1),
            (32, 3, 1, 1, 3, 2, 1),
            (32, 2, 2, 2, 3, 3, 1),
            (16, 5, 4, 4, 3, 17, 1),
            (48, 3, 8, 8, 3, 4, 2),
        ])
    }

    /// On each bf16 unit the CPU has, the products equal the f64 convolution of the
    /// bf16-rounded operands (they accumulate in f32), for the output and both gradients,
    /// with operands packed per run and packed once per pass.
    #[test]
    fn bf16_tap_products_equal_the_convolution_of_the_rounded_operands() {
        let rounded = |v: &[f64]| -> (Vec<f32>, Vec<f64>) {
            let f: Vec<f32> = v.iter().map(|&v| v as f32).collect();
            let r = f
                .iter()
                .map(|&v| bf16::widen(bf16::round(v)) as f64)
                .collect();
            (f, r)
        };
        let close = |got: &[f32], want: &[f64], what: &str, g: &Window| {
            assert_eq!(got.len(), want.len());
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                let err = (*a as f64 - b).abs();
                assert!(
                    err < 1e-4 * b.abs().max(1.0),
                    "{what} {g:?} [{i}]: {a} against {b}"
                );
            }
        };
        for dot in Dot::usable() {
            let products = Products::Bf16(dot);
            let all = windows().into_iter().chain(batched_windows());
            for (seed, (g, co)) in all.enumerate() {
                let seed = seed as u64;
                let (x, xr) = rounded(&values(g.n * g.c * g.h * g.w, 400 + seed));
                let (w, wr) = rounded(&values(co * g.patch_len(), 500 + seed));
                let (dy, dyr) = rounded(&values(g.n * co * g.out_len(), 600 + seed));
                let want_y = conv_forward(&xr, &wr, &g, co, Products::Native);
                let (want_dx, want_dw) = conv_backward(&xr, &wr, &dyr, &g, co, Products::Native);
                let mut y = vec![f32::NAN; want_y.len()];
                forward(&x, &w, &g, co, products, &mut y);
                close(&y, &want_y, "y", &g);
                let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![f32::NAN; w.len()]);
                backward(
                    &x,
                    &w,
                    &dy,
                    &g,
                    co,
                    products,
                    Grads {
                        dx: Some(&mut dx),
                        dw: &mut dw,
                    },
                );
                close(&dx, &want_dx, "dx", &g);
                close(&dw, &want_dw, "dw", &g);
            }
        }
    }

    /// The same bits on any pool, though the blocks of rows follow the thread count: 260
    /// input and 130 output channels are blocks of 128, 96 and 48 rows on 1, 3 and 8
    /// threads, at stride 1 and 2, in f32 and on each bf16 unit.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let mut units = vec![Products::Native];
        units.extend(Dot::usable().into_iter().map(Products::Bf16));
        for (stride, side) in [(1, 4), (2, 8)] {
            let g = Window {
                n: 3,
                c: 260,
                h: side,
                w: side,
                kh: 3,
                kw: 3,
                stride,
                pad: 1,
            };
            let co = 130;
            let f32s = |v: Vec<f64>| -> Vec<f32> { v.iter().map(|&v| v as f32).collect() };
            let x = f32s(values(g.n * g.c * side * side, 1));
            let w = f32s(values(co * g.patch_len(), 2));
            let dy = f32s(values(g.n * co * g.out_len(), 3));
            for products in &units {
                let run = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("a thread pool");
                    pool.install(|| {
                        let mut y = vec![0f32; g.n * co * g.out_len()];
                        forward(&x, &w, &g, co, *products, &mut y);
                        let (mut dx, mut dw) = (vec![0f32; x.len()], vec![0f32; w.len()]);
                        let grads = Grads {
                            dx: Some(&mut dx),
                            dw: &mut dw,
                        };
                        backward(&x, &w, &dy, &g, co, *products, grads);
                        (y, dx, dw)
                    })
                };
                let one = run(1);
                assert!(
                    one == run(3) && one == run(8),
                    "{products:?} at stride {stride}"
                );
            }
        }
    }

    /// ResNet-18's 3 × 3 layers with 8 × 8 and 4 × 4 outputs take this path (strided ones
    /// included); its 1 × 1, 16 × 16 and thin layers do not.
    #[test]
    fn the_path_takes_the_small_plane_layers_only() {
        let window = |c, side, k, stride| Window {
            n: 32,
            c,
            h: side,
            w: side,
            kh: k,
            kw: k,
            stride,
            pad: k / 2,
        };
        assert!(applies(&window(256, 8, 3, 1), 256));
        assert!(applies(&window(512, 4, 3, 1), 512));
        assert!(applies(&window(256, 8, 3, 2), 512));
        assert!(applies(&window(128, 16, 3, 2), 256));
        assert!(!applies(&window(256, 8, 1, 2), 512));
        assert!(!applies(&window(256, 8, 1, 1), 512));
        assert!(!applies(&window(128, 16, 3, 1), 128));
        assert!(!applies(&window(64, 32, 3, 2), 128));
        assert!(!applies(&window(64, 8, 3, 1), 64));
        assert!(!applies(&window(256, 9, 3, 2), 256));
        // The centre tap is first and covers the plane in one run.
        let spans = taps(&window(8, 4, 3, 1));
        assert_eq!(spans.len(), 9);
        assert_eq!(
            spans[0],
            Tap {
                index: 4,
                phase: 0,
                runs: vec![Span {
                    out: 0,
                    inp: 0,
                    len: 16
                }]
            }
        );
        // The valid positions are 100 of 144 at 4 × 4: the padded taps are skipped.
        let valid: usize = spans.iter().flat_map(|t| &t.runs).map(|s| s.len).sum();
        assert_eq!(valid, 100);
        // At stride 2 (8 × 8 in, 4 × 4 out) the taps read the four phase planes, and only
        // the top row and left column of outputs see padding: 121 of 144.
        let strided = taps(&window(8, 8, 3, 2));
        let phases: std::collections::BTreeSet<usize> = strided.iter().map(|t| t.phase).collect();
        assert_eq!(phases.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        let valid: usize = strided.iter().flat_map(|t| &t.runs).map(|s| s.len).sum();
        assert_eq!(valid, 121);
    }
}

#[cfg(test)]
mod speed {
    use super::super::gemm::{MatMut, MatRef, matmul_into};

    /// Which operand layouts make a tap's weight-gradient product fast through gemm:
    /// `cargo test --release --lib tap_dw_layouts -- --ignored --nocapture`. On one core of
    /// the 2-core Zen 4 (2026-12-07), with reductions of 96–224 (a row's run) every layout
    /// ran at 80–111 GFLOP/s, the column stride of 9 costing about 10 %; the slow first
    /// weight gradient at 8 × 8 was rows 2ᵏ values apart ([`lead`]), which this test's
    /// dense rows do not have. With a reduction of 2048 (a middle-column tap's one run at
    /// 8 × 8, batch 32) the layout this path uses (`rows`: both operands' reduction
    /// contiguous) ran at 49–51 GFLOP/s against 89–100 with the positions as rows
    /// (`cols`): a position-major-transposed copy for those taps is the next step here.
    #[test]
    #[ignore]
    fn tap_dw_layouts() {
        let time = |f: &mut dyn FnMut()| {
            f();
            (0..20)
                .map(|_| {
                    let t = std::time::Instant::now();
                    f();
                    t.elapsed().as_secs_f64() * 1e3
                })
                .fold(f64::INFINITY, f64::min)
        };
        for (m, c, k) in [
            (128, 256, 224),
            (256, 256, 224),
            (128, 512, 96),
            (128, 256, 2048),
        ] {
            let a: Vec<f32> = (0..m * k).map(|v| (v as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..c * k).map(|v| (v as f32 * 0.71).cos()).collect();
            let mut d = vec![0f32; m * c * 9];
            let gf = 2.0 * (m * c * k) as f64 / 1e6;
            // (label, destination shape and strides, a, b): a stored m × k or k × m
            // (column-major), b stored c × k (used transposed) or k × c; the destination
            // dense, with a column stride of 9 (a tap's place in dW), or transposed.
            let cases = [
                (
                    "rows/strided",
                    (m, c),
                    (c * 9, 9),
                    MatRef::row_major(&a, m, k),
                    MatRef::row_major(&b, c, k).t(),
                ),
                (
                    "rows/dense",
                    (m, c),
                    (c, 1),
                    MatRef::row_major(&a, m, k),
                    MatRef::row_major(&b, c, k).t(),
                ),
                (
                    "cols/dense",
                    (m, c),
                    (c, 1),
                    MatRef::row_major(&a, k, m).t(),
                    MatRef::row_major(&b, k, c),
                ),
                (
                    "cols/strided",
                    (m, c),
                    (c * 9, 9),
                    MatRef::row_major(&a, k, m).t(),
                    MatRef::row_major(&b, k, c),
                ),
                (
                    "swapped",
                    (c, m),
                    (m, 1),
                    MatRef::row_major(&b, c, k),
                    MatRef::row_major(&a, m, k).t(),
                ),
            ];
            let mut line = format!("m {m} c {c} k {k}:");
            for (label, shape, strides, lhs, rhs) in cases {
                let t = time(&mut || {
                    matmul_into(MatMut::strided(&mut d, shape, strides), lhs, rhs, true, 1)
                });
                line += &format!(" {label} {:.0}", gf / t);
            }
            println!("{line} GFLOP/s");
        }
    }
}
