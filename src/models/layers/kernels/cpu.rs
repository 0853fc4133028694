//! Plain-slice CPU kernels behind annt's convolution and pooling layers.
//!
//! Candle's CPU backend computes a convolution's input gradient with a naive transposed
//! convolution, runs depthwise convolutions one channel group at a time and has no max-pool
//! backward for overlapping windows. These kernels fill exactly those gaps; everything that
//! is a matrix product stays a Candle `matmul` (gemm, multi-threaded). Kernels are generic
//! over `f32` and `f64` (the gradient tests run in `f64`); half precision is upcast by the
//! layer before it gets here. Work is split over images × channels with rayon.

use std::ops::Range;

use rayon::prelude::*;

use super::Products;
use super::bf16;
use super::fill::filled;
use super::gemm::{MatRef, matmul, matmul_threads};
use super::taps;
use super::winograd;

pub use super::real::{Real, SCRATCH_SLOTS, Slots};

/// A thread's scratch vector, taken for one task and given back when dropped: a
/// convolution's patch matrices are a few MiB per task, and allocating and zeroing them per
/// task and call cost a ResNet-18 step ~10 % in `memset`. Its contents are whatever the last
/// task left: every user writes each element it reads. (A thread that takes a slot twice at
/// once gets a fresh vector the second time.)
pub(super) struct Scratch<T: Real> {
    buf: Vec<T>,
    len: usize,
    slot: usize,
}

impl<T: Real> Scratch<T> {
    pub(super) fn take(slot: usize, len: usize) -> Self {
        let mut buf = T::scratch()
            .try_with(|s| std::mem::take(&mut s.borrow_mut()[slot]))
            .unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, T::zero());
        }
        Self { buf, len, slot }
    }
}

impl<T: Real> std::ops::Deref for Scratch<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[..self.len]
    }
}

impl<T: Real> std::ops::DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[..self.len]
    }
}

impl<T: Real> Drop for Scratch<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        // At thread exit the slots may already be gone: the buffer is then simply freed.
        let _ = T::scratch().try_with(|s| s.borrow_mut()[self.slot] = buf);
    }
}

/// An output buffer of `len` zeros, filled in parallel when large. A kernel's output was
/// `vec![0; len]`: glibc's `calloc` clears reused memory with one `memset` on the calling
/// thread while the pool's workers wait, up to 8 MiB per ResNet-18 activation.
pub(super) fn zeroed<T: Real>(len: usize) -> Vec<T> {
    const SERIAL: usize = 1 << 16;
    if len < SERIAL {
        return vec![T::zero(); len];
    }
    // Chunks of plain stores (rayon's `repeat_n` collect wrote one element at a time
    // through its consumer: 7.6 % of a resnet8-tiny bf16 step's samples).
    filled(len, SERIAL, |_| std::iter::repeat(T::zero()))
}

/// A view of the same matrix over f32 data, when `T` is f32.
pub(super) fn f32_view<T: Real>(m: MatRef<'_, T>) -> Option<MatRef<'_, f32>> {
    Some(MatRef {
        data: T::as_f32(m.data)?,
        rows: m.rows,
        cols: m.cols,
        row_stride: m.row_stride,
        col_stride: m.col_stride,
    })
}

/// `dst = a · b` (or `+=`): on the bf16 unit when `products` names one and `T` is f32 (with
/// `a` pre-packed when given), through gemm otherwise.
pub(super) fn product<T: Real>(
    dst: &mut [T],
    a: MatRef<'_, T>,
    packed_a: Option<&bf16::PackedA>,
    b: MatRef<'_, T>,
    accumulate: bool,
    products: Products,
) {
    if let Some(dot) = products.bf16()
        && let (Some(d), Some(av), Some(bv)) = (T::as_f32_mut(dst), f32_view(a), f32_view(b))
    {
        match packed_a {
            Some(p) => bf16::matmul_packed(d, p, bv, accumulate, dot),
            None => bf16::matmul(d, av, bv, accumulate, dot),
        }
        return;
    }
    matmul(dst, a, b, accumulate);
}

/// `b` packed for the bf16 unit, when the products run on one and `T` is f32.
fn pack_b_for<T: Real>(b: MatRef<'_, T>, products: Products) -> Option<bf16::PackedB> {
    Some(bf16::PackedB::new(f32_view(b)?, products.bf16()?))
}

/// `dst = a · b` with `b` pre-packed for the bf16 unit when `packed_b` is given (from
/// [`pack_b_for`], so the products run on it and `T` is f32); [`product`] otherwise.
fn product_b<T: Real>(
    dst: &mut [T],
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    packed_b: Option<&bf16::PackedB>,
    products: Products,
) {
    if let (Some(pb), Some(dot), Some(d), Some(av)) =
        (packed_b, products.bf16(), T::as_f32_mut(dst), f32_view(a))
    {
        bf16::matmul_b_packed(d, av, pb, false, dot);
        return;
    }
    product(dst, a, None, b, false, products);
}

/// `a` packed for the bf16 unit, when the products run on one and `T` is f32.
pub(super) fn pack_for<T: Real>(a: MatRef<'_, T>, products: Products) -> Option<bf16::PackedA> {
    Some(bf16::PackedA::new(f32_view(a)?, products.bf16()?))
}

/// Where a convolution's backward pass writes (the tap-by-tap and Winograd paths): the
/// input gradient (`n × c × h × w`), when wanted, and the weight gradient
/// (`c_out × c × kh × kw`), both overwritten.
pub(super) struct Grads<'a, T> {
    pub dx: Option<&'a mut [T]>,
    pub dw: &'a mut [T],
}

/// The geometry of a 2-D sliding window over an `n × c × h × w` input (square stride and
/// symmetric padding, as every model annt builds uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Window {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
    /// Output positions per image and channel.
    pub fn out_len(&self) -> usize {
        self.out_h() * self.out_w()
    }
    /// Rows of the unfolded patch matrix: `c · kh · kw`.
    pub fn patch_len(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// The input row for output row `o` and kernel row `i`, if inside the image.
    #[inline]
    fn in_row(&self, o: usize, i: usize) -> Option<usize> {
        (o * self.stride + i)
            .checked_sub(self.pad)
            .filter(|&r| r < self.h)
    }
    /// For a stride-1 window whose output is as wide as its input ("same" padding), row
    /// `(i, j)` of the patch matrix is the input plane shifted by one flat offset: output
    /// position `q` reads input element `q + (i − pad)·w + (j − pad)`, except in the columns
    /// where the window overhangs the left or right padding ([`Self::valid_cols`]) and in
    /// the output rows outside `[q0 / w, q1 / w)`. `None` for other windows.
    fn shift(&self, i: usize, j: usize) -> Option<Shift> {
        let (oh, ow) = (self.out_h(), self.out_w());
        if self.stride != 1 || ow != self.w {
            return None;
        }
        let dy = i as isize - self.pad as isize;
        let dx = j as isize - self.pad as isize;
        let oy_lo = (-dy).clamp(0, oh as isize) as usize;
        let oy_hi = (self.h as isize - dy).clamp(oy_lo as isize, oh as isize) as usize;
        Some(Shift {
            q0: oy_lo * ow,
            q1: oy_hi * ow,
            offset: dy * self.w as isize + dx,
        })
    }
    /// The output columns `[lo, hi)` whose input column `o·s + j − pad` lies inside the image.
    #[inline]
    fn valid_cols(&self, j: usize) -> (usize, usize) {
        let ow = self.out_w();
        // o·s + j ≥ pad  ⇔  o ≥ ceil((pad − j) / s)
        let lo = if j >= self.pad {
            0
        } else {
            (self.pad - j).div_ceil(self.stride)
        };
        // o·s + j − pad < w  ⇔  o < (w + pad − j) / s, rounded up
        let hi = if self.w + self.pad > j {
            (self.w + self.pad - j).div_ceil(self.stride).min(ow)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// A patch-matrix row of a stride-1 "same" window as a shifted plane ([`Window::shift`]).
#[derive(Clone, Copy, Debug)]
struct Shift {
    /// Output positions `[q0, q1)`: the whole rows whose input row lies inside the image.
    q0: usize,
    q1: usize,
    /// Input element minus output position.
    offset: isize,
}

impl Shift {
    /// The output positions within `[q0, q1)` whose shifted input lies inside a plane of
    /// `plane` elements; those left out of `[q0, q1)` are overhanging columns.
    fn copy_range(&self, plane: usize) -> (usize, usize) {
        let a = (self.q0 as isize).max(-self.offset) as usize;
        let b = (self.q1 as isize)
            .min(plane as isize - self.offset)
            .max(a as isize) as usize;
        (a, b)
    }
    /// The input element output position `q` reads.
    fn source(&self, q: usize) -> usize {
        (q as isize + self.offset) as usize
    }
}

/// Zeroes `line[..lo]` and `line[hi..]`, where a window overhangs the padding: a pad's width
/// (an element or two) at each end of every output row, written element by element — as
/// two `memset` calls per row they cost resnet8-tiny 3 % of its step.
#[inline]
fn zero_edges<T: Real>(line: &mut [T], lo: usize, hi: usize) {
    let len = line.len();
    for v in (0..lo).chain(hi..len) {
        line[v] = T::zero();
    }
}

/// One image's patch matrix `[patch_len, out_len]` (row `c·kh·kw + i·kw + j`, column
/// `oy·ow + ox`) into `cols`, whose rows are `ld ≥ out_len` apart (several images' matrices
/// side by side), zero where a window overhangs the padding. `x` is the image's `c × h × w`
/// planes.
fn im2col_image<T: Real>(x: &[T], g: &Window, cols: &mut [T], ld: usize) {
    let (l, oh, ow) = (g.out_len(), g.out_h(), g.out_w());
    for kk in 0..g.patch_len() {
        let row = &mut cols[kk * ld..kk * ld + l];
        let (c, i, j) = (kk / (g.kh * g.kw), (kk / g.kw) % g.kh, kk % g.kw);
        let (lo, hi) = g.valid_cols(j);
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        if let Some(s) = g.shift(i, j) {
            // One copy of the shifted plane, then zeros where the window overhangs.
            row[..s.q0].iter_mut().for_each(|v| *v = T::zero());
            row[s.q1..].iter_mut().for_each(|v| *v = T::zero());
            let (a, b) = s.copy_range(plane.len());
            if a < b {
                row[a..b].copy_from_slice(&plane[s.source(a)..s.source(b)]);
            }
            for line in row[s.q0..s.q1].chunks_exact_mut(ow) {
                zero_edges(line, lo, hi);
            }
            continue;
        }
        for oy in 0..oh {
            let out_line = &mut row[oy * ow..(oy + 1) * ow];
            let Some(r) = g.in_row(oy, i).filter(|_| lo < hi) else {
                out_line.iter_mut().for_each(|v| *v = T::zero());
                continue;
            };
            zero_edges(out_line, lo, hi);
            let line = &plane[r * g.w..(r + 1) * g.w];
            let first = lo * g.stride + j - g.pad;
            if g.stride == 1 {
                out_line[lo..hi].copy_from_slice(&line[first..first + (hi - lo)]);
            } else {
                for (o, v) in out_line[lo..hi]
                    .iter_mut()
                    .zip(line[first..].iter().step_by(g.stride))
                {
                    *o = *v;
                }
            }
        }
    }
}

/// Images `n0..n0 + wide / out_len` of `x` (`n × c × h × w`) unfolded side by side into
/// `cols` (`patch_len × wide`): a group's patch matrix, as one product reads it.
fn unfold_group<T: Real>(x: &[T], g: &Window, n0: usize, cols: &mut [T], wide: usize) {
    let (img, l) = (g.c * g.h * g.w, g.out_len());
    for i in 0..wide / l {
        im2col_image(&x[(n0 + i) * img..][..img], g, &mut cols[i * l..], wide);
    }
}

/// Adds one image's patch-matrix gradient `[patch_len, out_len]` onto its `c × h × w`
/// input gradient (rows `ld` apart): the adjoint of [`im2col_image`].
///
/// `cols` is scratch: where a window overhangs the padding its entries are zeroed on the
/// way (they belong to no input element), which lets a stride-1 layer add a whole shifted
/// plane at once.
fn col2im_image<T: Real>(cols: &mut [T], g: &Window, dx: &mut [T], ld: usize) {
    let (l, oh, ow) = (g.out_len(), g.out_h(), g.out_w());
    for kk in 0..g.patch_len() {
        let row = &mut cols[kk * ld..kk * ld + l];
        let (c, i, j) = (kk / (g.kh * g.kw), (kk / g.kw) % g.kh, kk % g.kw);
        let (lo, hi) = g.valid_cols(j);
        if lo >= hi {
            continue;
        }
        if let Some(s) = g.shift(i, j) {
            for line in row[s.q0..s.q1].chunks_exact_mut(ow) {
                zero_edges(line, lo, hi);
            }
            let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
            let (a, b) = s.copy_range(plane.len());
            if a < b {
                let to = &mut plane[s.source(a)..s.source(b)];
                for (d, v) in to.iter_mut().zip(&row[a..b]) {
                    *d += *v;
                }
            }
            continue;
        }
        let first = lo * g.stride + j - g.pad;
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for oy in 0..oh {
            let Some(r) = g.in_row(oy, i) else { continue };
            let line = &mut plane[r * g.w..(r + 1) * g.w];
            let grads = &row[oy * ow + lo..oy * ow + hi];
            if g.stride == 1 {
                for (d, v) in line[first..first + grads.len()].iter_mut().zip(grads) {
                    *d += *v;
                }
            } else {
                for (d, v) in line[first..].iter_mut().step_by(g.stride).zip(grads) {
                    *d += *v;
                }
            }
        }
    }
}

/// Whether a convolution needs no unfolding: 1×1, stride 1, no padding (the image's planes
/// already are its patch matrix).
fn pointwise(g: &Window) -> bool {
    g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0
}

/// Images per matrix product: enough that a product spans ≥ 256 output positions (its
/// columns in the forward pass, its reduction for dW), at most 16. A 4 × 4 layer's per-image
/// product is too thin: the weight (and dW) would stream through the cache once per image
/// for 16 columns of work. Wider products (≥ 1024 positions, so the weight is packed for
/// 4 times as many columns) measured slower on ResNet-18's 8 × 8 and 16 × 16 layers
/// (`conv_layer_times`, alternating runs, 2-core Zen 4: 256→256 at 8 × 8 forward 13.2–13.8
/// against 11.7 ms, 128→128 at 16 × 16 backward 27–29 against 24.5 ms).
fn images_per_product(l: usize) -> usize {
    256usize.div_ceil(l.max(1)).clamp(1, 16)
}

/// Images per parallel task of the backward pass (one dW partial each): a whole number of
/// products, at least 4. It depends on the geometry alone, so the summation order (and the
/// result, bit for bit) does not depend on the thread count.
fn images_per_task(per_product: usize) -> usize {
    per_product * 4usize.div_ceil(per_product)
}

/// A dense convolution: `x` is `n × c × h × w`, `w` is `c_out × (c·kh·kw)`; returns
/// `n × c_out × oh × ow`. Images go through in small groups (`images_per_product`; one
/// image for layers of ≥ 256 positions): the group's patch matrices, side by side, are one
/// cache-sized matrix multiplied by the weight. A one-image product writes straight into its
/// slice of the NCHW output; a wider one is copied there. Groups run in parallel.
pub fn conv_forward<T: Real>(
    x: &[T],
    w: &[T],
    g: &Window,
    c_out: usize,
    products: Products,
) -> Vec<T> {
    let (k, l) = (g.patch_len(), g.out_len());
    let img = g.c * g.h * g.w;
    if winograd::chosen(g, c_out, products) {
        // Every element is written: no zeros first.
        let mut out = vec![T::zero(); g.n * c_out * l];
        winograd::forward(x, w, g, c_out, products, &mut out);
        return out;
    }
    let mut out = zeroed(g.n * c_out * l);
    if taps::chosen::<T>(g, c_out, products, taps::Pass::Forward) {
        taps::forward(x, w, g, c_out, products, &mut out);
        return out;
    }
    if let Some(unit) = implicit::<T>(g, c_out, products)
        && let (Some(xf), Some(wf)) = (T::as_f32(x), T::as_f32(w))
        && let Some(of) = T::as_f32_mut(&mut out)
    {
        conv_forward_implicit(xf, wf, g, c_out, unit, of);
        return out;
    }
    let wm = MatRef::row_major(w, c_out, k);
    // The weight is packed for the bf16 unit once, for every image.
    let packed_w = pack_for(wm, products);
    let per = images_per_product(l);
    let single = per == 1;
    let cols_len = if single && pointwise(g) {
        0
    } else {
        k * l * per
    };
    let y_len = if single { 0 } else { c_out * l * per };
    out.par_chunks_mut(c_out * l * per)
        .enumerate()
        .for_each(|(chunk, y)| {
            let (mut cols, mut wide_y) = (Scratch::take(0, cols_len), Scratch::take(1, y_len));
            let (n0, imgs) = (chunk * per, y.len() / (c_out * l));
            if single {
                let x_n = &x[n0 * img..(n0 + 1) * img];
                let patches = if pointwise(g) {
                    x_n
                } else {
                    im2col_image(x_n, g, &mut cols, l);
                    &cols[..]
                };
                let patches = MatRef::row_major(patches, k, l);
                product(y, wm, packed_w.as_ref(), patches, false, products);
                return;
            }
            let wide = imgs * l;
            unfold_group(x, g, n0, &mut cols, wide);
            let patches = MatRef::row_major(&cols[..k * wide], k, wide);
            let wide_y = &mut wide_y[..c_out * wide];
            product(wide_y, wm, packed_w.as_ref(), patches, false, products);
            from_wide(&wide_y[..c_out * wide], c_out, l, y);
        });
    out
}

/// Images (`ch × l` planes each, back to back in `images`) side by side as one
/// `ch × (imgs·l)` matrix in `wide`: what a product over a group of images reads.
fn to_wide<T: Real>(images: &[T], ch: usize, l: usize, wide: &mut [T]) {
    let width = images.len() / ch;
    for (i, image) in images.chunks_exact(ch * l).enumerate() {
        for (c, plane) in image.chunks_exact(l).enumerate() {
            wide[c * width + i * l..][..l].copy_from_slice(plane);
        }
    }
}

/// The inverse of [`to_wide`]: a group's `ch × (imgs·l)` product back into each image's
/// planes.
fn from_wide<T: Real>(wide: &[T], ch: usize, l: usize, images: &mut [T]) {
    let width = images.len() / ch;
    for (i, image) in images.chunks_exact_mut(ch * l).enumerate() {
        for (c, plane) in image.chunks_exact_mut(l).enumerate() {
            plane.copy_from_slice(&wide[c * width + i * l..][..l]);
        }
    }
}

/// Both gradients of [`conv_forward`] in one pass over the images: `dx` (`Wᵀ·dY` folded
/// back) and `dW = Σ dY·colsᵀ`, with the same groups of images per product as the forward
/// pass; the patch matrices are rebuilt instead of kept from the forward pass (which would
/// hold a batch-sized matrix per layer). Returns `(dx, dw)`; [`conv_backward_joined`] is the
/// same with both in one buffer.
pub fn conv_backward<T: Real>(
    x: &[T],
    w: &[T],
    dy: &[T],
    g: &Window,
    c_out: usize,
    products: Products,
) -> (Vec<T>, Vec<T>) {
    let mut dx = conv_backward_joined(x, w, dy, g, c_out, products, true);
    let dw = dx.split_off(g.n * g.c * g.h * g.w);
    (dx, dw)
}

/// [`conv_backward`] returning `dx` (`n·c·h·w` values) followed by `dW` (`c_out·c·kh·kw`) in
/// one vector: what the layer hands to Candle, without a copy of either.
///
/// With `want_dx` false only `dW` is computed and the `dx` part is left zero: a network's
/// first convolution, whose input (the images) needs no gradient, then skips its `Wᵀ·dY`
/// products and their col2im.
pub fn conv_backward_joined<T: Real>(
    x: &[T],
    w: &[T],
    dy: &[T],
    g: &Window,
    c_out: usize,
    products: Products,
    want_dx: bool,
) -> Vec<T> {
    let (k, l) = (g.patch_len(), g.out_len());
    let img = g.c * g.h * g.w;
    let dx_len = g.n * img;
    let mut both = zeroed(dx_len + c_out * k);
    if winograd::chosen(g, c_out, products) {
        let (dx, dw) = both.split_at_mut(dx_len);
        let dx = want_dx.then_some(dx);
        winograd::backward(x, w, dy, g, c_out, products, Grads { dx, dw });
        return both;
    }
    if taps::chosen::<T>(g, c_out, products, taps::Pass::Backward) {
        let (dx, dw) = both.split_at_mut(dx_len);
        let dx = want_dx.then_some(dx);
        taps::backward(x, w, dy, g, c_out, products, Grads { dx, dw });
        return both;
    }
    if let Some(unit) = implicit::<T>(g, c_out, products).filter(|(u, _)| want_dx || u.has_dw())
        && let (Some(xf), Some(wf), Some(dyf)) = (T::as_f32(x), T::as_f32(w), T::as_f32(dy))
        && let Some(bf) = T::as_f32_mut(&mut both)
    {
        conv_backward_implicit(xf, wf, (dyf, want_dx), g, c_out, unit, bf);
        return both;
    }
    let (dx, dw) = both.split_at_mut(dx_len);
    let wm = MatRef::row_major(w, c_out, k);
    let packed_wt = want_dx.then(|| pack_for(wm.t(), products)).flatten();
    let per = images_per_product(l);
    let single = per == 1;
    let direct = single && pointwise(g);
    let task = images_per_task(per);
    let batched = dw_batched(g, task, c_out, products);
    // Every task accumulates its own dWᵀ partial (k × c_out: see the product below); the
    // partials are summed in task order afterwards, so the result does not depend on how
    // rayon schedules the tasks and a run is reproducible bit for bit (a work-stealing
    // fold/reduce would not be). A batched dW has one.
    let tasks = if batched { 1 } else { g.n.div_ceil(task) };
    let mut partials = zeroed(tasks * k * c_out);
    if batched {
        dw_over_batch(x, dy, g, c_out, DW_BATCH_ELEMS, &mut partials);
        if !want_dx {
            transpose_par(&partials, k, c_out, dw);
            return both;
        }
    }
    let mut dw_parts: Vec<Option<&mut [T]>> = if !batched {
        partials.chunks_mut(k * c_out).map(Some).collect()
    } else {
        (0..g.n.div_ceil(task)).map(|_| None).collect()
    };
    dx.par_chunks_mut(img * task)
        .zip(dw_parts.par_iter_mut())
        .enumerate()
        .for_each(|(t, (dx_task, dw_part))| {
            let scratch = if direct || dw_part.is_none() {
                0
            } else {
                k * l * per
            };
            let dscratch = if want_dx && !direct { k * l * per } else { 0 };
            let (mut cols, mut dcols) = (Scratch::take(0, scratch), Scratch::take(1, dscratch));
            let mut wide_dy = Scratch::take(2, if single { 0 } else { c_out * l * per });
            for (s, dx_group) in dx_task.chunks_mut(img * per).enumerate() {
                let (n0, imgs) = (t * task + s * per, dx_group.len() / img);
                let wide = imgs * l;
                let dy_group = if single {
                    MatRef::row_major(&dy[n0 * c_out * l..(n0 + 1) * c_out * l], c_out, l)
                } else {
                    let wide_dy = &mut wide_dy[..c_out * wide];
                    to_wide(
                        &dy[n0 * c_out * l..(n0 + imgs) * c_out * l],
                        c_out,
                        l,
                        wide_dy,
                    );
                    MatRef::row_major(wide_dy, c_out, wide)
                };
                if let Some(dwt) = dw_part.as_deref_mut() {
                    let patches = if direct {
                        &x[n0 * img..(n0 + 1) * img]
                    } else {
                        unfold_group(x, g, n0, &mut cols, wide);
                        &cols[..k * wide]
                    };
                    // dWᵀ (k × c_out) += cols (k × wide) · dYᵀ (wide × c_out). Both
                    // matrices hold the reduction (the positions) along their rows; as
                    // dW = dY · colsᵀ the large cols would be packed across its rows, which
                    // costs more than the arithmetic for a layer of few channels. This way
                    // round only the small dY is: on ResNet-8's and ResNet-18's shapes
                    // 2–2.8× faster through gemm, 1.5–2.4× on AMX, 1.15–1.8× on
                    // AVX512-BF16 (`dw_product_layouts`).
                    let cols_m = MatRef::row_major(patches, k, wide);
                    product(dwt, cols_m, None, dy_group.t(), s > 0, products);
                }
                if !want_dx {
                    continue;
                }
                if direct {
                    // dx (c × l) = Wᵀ (c × c_out) · dY (c_out × l), written in place.
                    product(
                        dx_group,
                        wm.t(),
                        packed_wt.as_ref(),
                        dy_group,
                        false,
                        products,
                    );
                } else {
                    let dcols = &mut dcols[..k * wide];
                    product(dcols, wm.t(), packed_wt.as_ref(), dy_group, false, products);
                    for (i, dx_n) in dx_group.chunks_exact_mut(img).enumerate() {
                        col2im_image(&mut dcols[i * l..], g, dx_n, wide);
                    }
                }
            }
        });
    drop(dw_parts);
    sum_partials_into(&mut partials, k, c_out, dw);
    both
}

/// Positions (rows of the reduction) below which a backward task's dW product is batched
/// (f32 through gemm; the bf16 units keep their own layouts).
///
/// A task of ResNet-18's 4×4 layers holds 16 images, 256 positions: its dWᵀ product
/// (`k × c_out += (k × 256)·(256 × c_out)`) reads and writes all of dWᵀ (9 MiB for
/// 512→512) for a reduction only 256 deep, and the partials cost a sum and their memory.
const DW_BATCH_BELOW: usize = 1024;
/// Weights (`c_out·c·kh·kw`) from which a batched dW pays: only where the per-task
/// partials are large. Measured in alternating runs of `conv_layer_times` (2-core Zen 4,
/// batch 32): ResNet-18's 512→512 4×4 layer 8 % less dW time (17.4/17.7/16.7 ms against
/// 17.4/19.8/18.9), its 256→256 and 256→512 8×8 layers 10 % more, smaller ones up to 2×
/// more (gemm's threading costs more than it saves on small products).
const DW_BATCH_WEIGHT: usize = 1 << 21;
/// Patch-matrix elements a batched dW unfolds at a time (32 MiB of f32): a batch's patches
/// beyond it go through in chunks of whole images, accumulated in order.
const DW_BATCH_ELEMS: usize = 8 << 20;

/// Whether a backward pass with `task` images per task computes dW over the whole batch
/// ([`dw_over_batch`]) instead of per task.
fn dw_batched(g: &Window, task: usize, c_out: usize, products: Products) -> bool {
    task * g.out_len() < DW_BATCH_BELOW
        && g.patch_len() * c_out >= DW_BATCH_WEIGHT
        && g.n > task
        && g.kh * g.kw > 1
        && products.bf16().is_none()
}

/// dWᵀ (`k × c_out`, into `dwt`) = cols · dYᵀ over the whole batch: the patch matrices of
/// as many images as `budget` elements ([`DW_BATCH_ELEMS`]) allow side by side (unfolded in
/// parallel over channels), `dY` laid out to match, and one product over the pool reducing
/// over every position of the chunk. Chunks follow the geometry, not the thread count.
fn dw_over_batch<T: Real>(
    x: &[T],
    dy: &[T],
    g: &Window,
    c_out: usize,
    budget: usize,
    dwt: &mut [T],
) {
    let (k, l) = (g.patch_len(), g.out_len());
    let (img, hw, taps) = (g.c * g.h * g.w, g.h * g.w, g.kh * g.kw);
    let chunk = (budget / (k * l)).clamp(1, g.n);
    // The calling thread's slots: the tasks below run on the pool's workers, or, when the
    // caller is one, find the slot empty and allocate their own.
    let mut cols = Scratch::take(0, k * chunk * l);
    let mut wide_dy = Scratch::take(2, c_out * chunk * l);
    // About 256 patch rows per unfolding task.
    let channels_per_task = (256 / taps).max(1);
    for (s, n0) in (0..g.n).step_by(chunk).enumerate() {
        let imgs = chunk.min(g.n - n0);
        let wide = imgs * l;
        let cols = &mut cols[..k * wide];
        cols.par_chunks_mut(channels_per_task * taps * wide)
            .enumerate()
            .for_each(|(t, part)| {
                let c0 = t * channels_per_task;
                let sub = Window {
                    c: part.len() / (taps * wide),
                    ..*g
                };
                for i in 0..imgs {
                    let planes = &x[(n0 + i) * img + c0 * hw..][..sub.c * hw];
                    im2col_image(planes, &sub, &mut part[i * l..], wide);
                }
            });
        let wdy = &mut wide_dy[..c_out * wide];
        to_wide(&dy[n0 * c_out * l..(n0 + imgs) * c_out * l], c_out, l, wdy);
        let dym = MatRef::row_major(&*wdy, c_out, wide);
        let cols = MatRef::row_major(&cols[..], k, wide);
        // gemm splits the product over the pool itself: measured faster than one product
        // per stripe of 256 rows in parallel (each of which packs all of dY again).
        matmul_threads(dwt, cols, dym.t(), s > 0, rayon::current_num_threads());
    }
}

/// Σ of the tasks' dWᵀ partials (each `k × c_out`, back to back in `partials`), transposed
/// into `dw` (`c_out × k`).
///
/// The partials are summed into the first in task order (0 + p₀ = p₀ exactly, so this is
/// the same sum as starting from zero), in parallel over disjoint stretches of it; then one
/// blocked transpose into dW. (Transposing every partial cost ResNet-18's 512-channel
/// layers two strided passes over 9 MiB each.)
fn sum_partials_into<T: Real>(partials: &mut [T], k: usize, c_out: usize, dw: &mut [T]) {
    transpose_par(sum_partials(partials, k * c_out), k, c_out, dw);
}

/// The sum of `partials`' consecutive runs of `len` values, in run order for every element
/// (the same bits on any number of threads), in parallel over stretches of the first run,
/// which holds it.
pub(super) fn sum_partials<T: Real>(partials: &mut [T], len: usize) -> &mut [T] {
    let (first, rest) = partials.split_at_mut(len);
    if !rest.is_empty() {
        const STRETCH: usize = 4096;
        first
            .par_chunks_mut(STRETCH)
            .enumerate()
            .for_each(|(i, acc)| {
                for p in rest.chunks_exact(len) {
                    for (a, b) in acc.iter_mut().zip(&p[i * STRETCH..]) {
                        *a += *b;
                    }
                }
            });
    }
    first
}

/// The unit and the window's geometry, when this convolution's products read their
/// patches straight from the images ([`bf16::Patches`], an implicit GEMM): f32 data,
/// products on a bf16 unit (or, for the layers `F32_IMPLICIT_WEIGHT` names, the f32 patch
/// product), and a square odd window with padding (k − 1) / 2 whose stride
/// divides the input's sides and whose output planes the packers can walk
/// ([`bf16::PatchGeometry::new`]). Every 3 × 3 and 1 × 1 layer of the ResNets qualifies,
/// strided ones and the ImageNet stem's 7 × 7 stride 2 included (their patches read the
/// images' phase planes); odd-sided strided inputs and planes whose positions do not come in
/// blocks of 16 unfold their patches (im2col) as before, and so do fp32's other layers,
/// whose products gemm packs itself.
fn implicit<T: Real>(
    g: &Window,
    c_out: usize,
    products: Products,
) -> Option<(Implicit, bf16::PatchGeometry)> {
    let unit = match products {
        Products::Bf16(dot) => Implicit::Bf16(dot),
        Products::F32(fma)
            if c_out * g.patch_len() <= F32_IMPLICIT_WEIGHT && g.c.min(c_out) >= 16 =>
        {
            Implicit::F32(fma)
        }
        Products::F32(_) | Products::Native => return None,
    };
    T::as_f32(&[])?;
    let odd_same = g.kh == g.kw && g.kh == 2 * g.pad + 1;
    let geometry = odd_same.then(|| bf16::PatchGeometry::new((g.h, g.w), g.kh, g.stride))??;
    Some((unit, geometry))
}

/// The largest weight (values, `c_out · c·kh·kw`) whose f32 products go through the patch
/// product rather than gemm: 64 → 64 channels at 3 × 3 (36,864). Measured per layer
/// (`conv_layer_times`, `benches/results/f32-patch-product-layers.txt`, fastest of 20): the
/// patch product is up to 1.4× faster (forward) and 1.1× (backward) than im2col + gemm on
/// resnet8-tiny's layers, where unfolding and packing the patches cost as much as the
/// arithmetic, level on ResNet-18's 64-channel ones, and in earlier runs 5–25 % slower on
/// ResNet-18's 128–512-channel layers, where gemm's register tile reuses each loaded value
/// more and the unfolding is a small share. Layers of fewer than 16 input
/// or output channels (a stem) stay on gemm too: the product's rows come in blocks of 8
/// and 16, and a 3-row input gradient would compute 8.
const F32_IMPLICIT_WEIGHT: usize = 40_000;

/// What an implicit convolution's products run on.
#[derive(Clone, Copy, Debug)]
enum Implicit {
    Bf16(bf16::Dot),
    F32(bf16::Fma),
}

impl Implicit {
    /// Whether a layer's weight gradient gains from this path on its own. The f32 path
    /// computes dW as gemm does (the patches unfolded): a layer that needs only dW (a
    /// network's first) stays on `conv_backward_joined`.
    fn has_dw(self) -> bool {
        matches!(self, Implicit::Bf16(_))
    }

    /// `a` (`m × (C·taps)`, columns `(channel, tap)`) packed for the unit.
    fn pack(self, a: MatRef<'_, f32>, taps: usize) -> bf16::PatchWeight {
        match self {
            Implicit::Bf16(dot) => bf16::PatchWeight::new(a, taps, dot),
            Implicit::F32(fma) => bf16::PatchWeight::f32(a, taps, fma),
        }
    }
}

/// The patch matrices of images `n0..n0 + imgs` of `x` (`c` channels of `g`'s input size),
/// as [`bf16::Patches`]: over the images themselves at stride 1, over their phase planes
/// split into `split` (`imgs · c · geometry.plane_len()` values) otherwise.
fn patches_of<'a>(
    x: &'a [f32],
    g: &Window,
    geometry: &'a bf16::PatchGeometry,
    c: usize,
    (n0, imgs): (usize, usize),
    split: &'a mut [f32],
) -> bf16::Patches<'a> {
    let img = c * g.h * g.w;
    let images = &x[n0 * img..(n0 + imgs) * img];
    let planes: &[f32] = if geometry.reads_images() {
        images
    } else {
        let per = c * geometry.plane_len();
        for (image, dst) in images.chunks_exact(img).zip(split.chunks_exact_mut(per)) {
            geometry.split(image, c, dst);
        }
        &split[..imgs * per]
    };
    bf16::Patches::new(planes, imgs, c, geometry).expect("the slice holds the images")
}

/// Scratch values [`patches_of`] needs for `imgs` images of `c` channels.
fn split_len(geometry: &bf16::PatchGeometry, c: usize, imgs: usize) -> usize {
    if geometry.reads_images() {
        0
    } else {
        imgs * c * geometry.plane_len()
    }
}

/// [`conv_forward`] on a bf16 unit without unfolding: the same groups of images per product,
/// the patches packed straight from `x` (or its phase planes) into `out` (`n × c_out × l`).
fn conv_forward_implicit(
    x: &[f32],
    w: &[f32],
    g: &Window,
    c_out: usize,
    (unit, geometry): (Implicit, bf16::PatchGeometry),
    out: &mut [f32],
) {
    let (k, l) = (g.patch_len(), g.out_len());
    let packed_w = unit.pack(MatRef::row_major(w, c_out, k), g.kh * g.kw);
    let per = images_per_product(l);
    out.par_chunks_mut(c_out * l * per)
        .enumerate()
        .for_each(|(chunk, y)| {
            let (n0, imgs) = (chunk * per, y.len() / (c_out * l));
            let mut split = Scratch::<f32>::take(0, split_len(&geometry, g.c, imgs));
            let patches = patches_of(x, g, &geometry, g.c, (n0, imgs), &mut split);
            if imgs == 1 {
                bf16::matmul_patches(y, &packed_w, &patches, false);
                return;
            }
            let wide = imgs * l;
            let mut wide_y = Scratch::<f32>::take(1, c_out * wide);
            bf16::matmul_patches(&mut wide_y, &packed_w, &patches, false);
            from_wide(&wide_y[..c_out * wide], c_out, l, y);
        });
}

/// [`conv_backward_joined`] on a bf16 unit, `dW`'s patches packed straight from `x` (or its
/// phase planes), as in [`conv_forward_implicit`].
///
/// The input gradient needs neither a `Wᵀ·dY` patch matrix nor col2im. At stride 1 it is
/// itself a "same" convolution, of `dy` with the weight flipped in space and its channel
/// axes swapped (`w'[c][o][i][j] = w[o][c][kh−1−i][kw−1−j]`): one product per group over
/// `dy`'s patches. At a larger stride each phase plane of `dx` is one such product, of the
/// taps that read that phase ([`bf16::PatchGeometry::gradient_phases`]), written into its
/// place in `dx` ([`merge_phase`]).
///
/// `dy` comes with `want_dx`, as in [`conv_backward_joined`].
fn conv_backward_implicit(
    x: &[f32],
    w: &[f32],
    (dy, want_dx): (&[f32], bool),
    g: &Window,
    c_out: usize,
    (unit, geometry): (Implicit, bf16::PatchGeometry),
    both: &mut [f32],
) {
    let (k, l) = (g.patch_len(), g.out_len());
    let (c, kk) = (g.c, g.kh * g.kw);
    let img = c * g.h * g.w;
    let (dx, dw) = both.split_at_mut(g.n * img);
    // The input gradient's products: at stride 1 one, of the flipped weight over `dy`'s
    // patches in the layer's own geometry; at a larger stride one per phase, of the taps
    // that read it. Not built when dx is not wanted.
    let dx_products: Vec<DxProduct> = if !want_dx {
        Vec::new()
    } else if geometry.reads_images() {
        let taps: Vec<usize> = (0..kk).rev().collect();
        vec![DxProduct {
            phase: None,
            weight: packed_taps(w, (c, c_out, kk), &taps, unit),
            dy_geometry: geometry.clone(),
        }]
    } else {
        geometry
            .gradient_phases()
            .into_iter()
            .map(|phase| DxProduct {
                phase: Some(phase.phase),
                weight: packed_taps(w, (c, c_out, kk), &phase.taps, unit),
                dy_geometry: phase.geometry,
            })
            .collect()
    };
    let per = images_per_product(l);
    let task = images_per_task(per);
    let tasks = g.n.div_ceil(task);
    // A 3 × 3 "same" layer's bf16 weight gradient reads its taps from the images themselves
    // (`bf16::weight_grad_3x3`) instead of a packed patch matrix.
    let taps3 = matches!(unit, Implicit::Bf16(_)) && weight_grad_3x3_chosen(g, c_out);
    let mut partials = zeroed::<f32>(tasks * k * c_out);
    dx.par_chunks_mut(img * task)
        .zip(partials.par_chunks_mut(k * c_out))
        .enumerate()
        .for_each(|(t, (dx_task, dwt))| {
            let single = per == 1;
            let mut wide_dy = Scratch::<f32>::take(2, if single { 0 } else { c_out * l * per });
            // A product's dx is written wide and copied out, except a stride-1 layer's
            // one image, written in place.
            let in_place = single && geometry.reads_images();
            let wide_dx_len = if dx_products.is_empty() || in_place {
                0
            } else {
                c * l * per
            };
            let mut wide_dx = Scratch::<f32>::take(1, wide_dx_len);
            // dW's operand: the bf16 units read the patches from the phase planes (split
            // here at a stride > 1; none when `taps3` reads the images tap by tap), gemm
            // from the unfolded patch matrix.
            let operand_len = match unit {
                Implicit::Bf16(_) if taps3 => 0,
                Implicit::Bf16(_) => split_len(&geometry, c, per),
                Implicit::F32(_) => k * l * per,
            };
            let mut split = Scratch::<f32>::take(0, operand_len);
            for (s, dx_group) in dx_task.chunks_mut(img * per).enumerate() {
                let (n0, imgs) = (t * task + s * per, dx_group.len() / img);
                let wide = imgs * l;
                let dy_images = &dy[n0 * c_out * l..(n0 + imgs) * c_out * l];
                for product in &dx_products {
                    let dy_patches =
                        bf16::Patches::new(dy_images, imgs, c_out, &product.dy_geometry)
                            .expect("the slice holds the images");
                    if in_place {
                        bf16::matmul_patches(dx_group, &product.weight, &dy_patches, false);
                        continue;
                    }
                    let wide_dx = &mut wide_dx[..c * wide];
                    bf16::matmul_patches(wide_dx, &product.weight, &dy_patches, false);
                    match product.phase {
                        None => from_wide(wide_dx, c, l, dx_group),
                        Some(phase) => merge_phase(wide_dx, g, phase, dx_group),
                    }
                }
                let dy_wide: &[f32] = if single {
                    dy_images
                } else {
                    let wide_dy = &mut wide_dy[..c_out * wide];
                    to_wide(dy_images, c_out, l, wide_dy);
                    wide_dy
                };
                let dy_group = MatRef::row_major(dy_wide, c_out, wide);
                // dWᵀ (k × c_out) += patches (k × wide) · dYᵀ, as in `conv_backward_joined`.
                match unit {
                    Implicit::Bf16(dot) if taps3 => {
                        let x_images = &x[n0 * img..(n0 + imgs) * img];
                        let shape = (imgs, c, g.h, g.w, c_out);
                        let stride = g.stride;
                        bf16::weight_grad_3x3(dwt, x_images, dy_wide, shape, stride, s > 0, dot);
                    }
                    Implicit::Bf16(dot) => {
                        let x_patches = patches_of(x, g, &geometry, c, (n0, imgs), &mut split);
                        bf16::matmul_patches_a(dwt, &x_patches, dy_group.t(), s > 0, dot);
                    }
                    // f32: the patches unfolded and multiplied through gemm, as in
                    // `conv_backward_joined` (gemm packs them itself).
                    Implicit::F32(_) => {
                        let cols = &mut split[..k * wide];
                        unfold_group(x, g, n0, cols, wide);
                        let cols_m = MatRef::row_major(cols, k, wide);
                        matmul(dwt, cols_m, dy_group.t(), s > 0);
                    }
                }
            }
        });
    sum_partials_into(&mut partials, k, c_out, dw);
}

/// Turns [`bf16::weight_grad_3x3`] off for an A/B in one binary: `ANNT_CPU_DW3=off` packs
/// the patch matrix for those layers' bf16 weight gradients as before.
pub const DW3_ENV: &str = "ANNT_CPU_DW3";

/// Most input channels for [`bf16::weight_grad_3x3`]. The packed patch matrix it avoids
/// costs most next to a thin product: per layer (`conv_layer_times`, alternating
/// `ANNT_CPU_DW3=off/on`, 2-core Zen 4) resnet8-tiny's 16 → 16 and 32 → 32 weight gradients
/// took 1.21–1.38 / 0.98–1.14 ms against 1.87–1.98 / 1.41–1.47, the strided 16 → 32 backward
/// 1.63–2.06 against 2.64–2.76, ResNet-18's 64 → 64 at 32 × 32 6.6–7.8 against 8.7; from 128
/// channels the packed product (near the unit's peak there) was level or ahead (128 → 256 at
/// stride 2: 12.6–12.9 ms against 10.8–12.4).
const DW3_MAX_CHANNELS: usize = 64;

/// Whether a bf16 weight gradient of window `g` runs tap by tap from the images
/// ([`bf16::weight_grad_3x3_applies`], at most [`DW3_MAX_CHANNELS`] input channels,
/// [`DW3_ENV`] not `off`).
fn weight_grad_3x3_chosen(g: &Window, c_out: usize) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| super::switch_on(DW3_ENV))
        && g.c <= DW3_MAX_CHANNELS
        && bf16::weight_grad_3x3_applies((g.kh, g.kw), (g.stride, g.pad), (g.h, g.w), c_out)
}

/// One product of a bf16 input gradient ([`conv_backward_implicit`]): the weight's taps,
/// where `dy`'s patches for them read, and the phase plane of `dx` it gives (`None`: all of
/// `dx`, at stride 1).
struct DxProduct {
    phase: Option<(usize, usize)>,
    weight: bf16::PatchWeight,
    dy_geometry: bf16::PatchGeometry,
}

/// The `c × (c_out · taps.len())` matrix `a[ch][o·T + t] = w[o][ch][taps[t]]` of weight `w`
/// (`c_out × c × kk`), packed for `dot`: the weight of an input-gradient product over `dy`'s
/// patches whose rows are `(o, t)` (the flipped weight at stride 1, a phase's taps at a
/// larger one).
fn packed_taps(
    w: &[f32],
    (c, c_out, kk): (usize, usize, usize),
    taps: &[usize],
    unit: Implicit,
) -> bf16::PatchWeight {
    // In parallel over groups of 16 input channels: for each `o` a group reads one
    // contiguous run of `w` (16·kk values) instead of 16 runs a whole row of `w` apart, and
    // the two threads share a job the calling thread did alone.
    const GROUP: usize = 16;
    let row = c_out * taps.len();
    let mut a = vec![0f32; c * row];
    a.par_chunks_mut(GROUP * row.max(1))
        .enumerate()
        .for_each(|(group, lines)| {
            let ch0 = group * GROUP;
            let chs = lines.len() / row.max(1);
            for o in 0..c_out {
                let src = &w[(o * c + ch0) * kk..][..chs * kk];
                for (line, filter) in lines.chunks_exact_mut(row).zip(src.chunks_exact(kk)) {
                    let dst = &mut line[o * taps.len()..][..taps.len()];
                    for (v, &t) in dst.iter_mut().zip(taps) {
                        *v = filter[t];
                    }
                }
            }
        });
    unit.pack(MatRef::row_major(&a, c, row), taps.len())
}

/// A group's phase plane `(py, px)` of `dx` (`c × (imgs·l)`, the images side by side, as the
/// product wrote it) into its places in each image (`c × h × w`):
/// `dx[ch][s·y + py][s·x + px] = wide[ch][i·l + y·ow + x]`.
fn merge_phase(wide: &[f32], g: &Window, (py, px): (usize, usize), images: &mut [f32]) {
    let (l, ow, s) = (g.out_len(), g.out_w(), g.stride);
    let width = wide.len() / g.c;
    for (i, image) in images.chunks_exact_mut(g.c * g.h * g.w).enumerate() {
        for (ch, plane) in image.chunks_exact_mut(g.h * g.w).enumerate() {
            let src = &wide[ch * width + i * l..][..l];
            for (y, line) in src.chunks_exact(ow).enumerate() {
                let row = &mut plane[(s * y + py) * g.w..][..g.w];
                for (x, v) in line.iter().enumerate() {
                    row[s * x + px] = *v;
                }
            }
        }
    }
}

/// Depthwise convolution (one `kh × kw` filter per channel): `x` is `n × c × h × w`, `w` is
/// `c × 1 × kh × kw`; returns `n × c × oh × ow`.
pub fn depthwise_forward<T: Real>(x: &[T], w: &[T], g: &Window) -> Vec<T> {
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut out = zeroed(g.n * g.c * oh * ow);
    out.par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(plane_index, dst)| {
            let c = plane_index % g.c;
            let src = &x[plane_index * g.h * g.w..(plane_index + 1) * g.h * g.w];
            let filt = &w[c * g.kh * g.kw..(c + 1) * g.kh * g.kw];
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let wv = filt[i * g.kw + j];
                    let (lo, hi) = g.valid_cols(j);
                    for oy in 0..oh {
                        let Some(r) = g.in_row(oy, i) else { continue };
                        let line = &src[r * g.w..(r + 1) * g.w];
                        let out_line = &mut dst[oy * ow..(oy + 1) * ow];
                        for ox in lo..hi {
                            out_line[ox] += wv * line[ox * g.stride + j - g.pad];
                        }
                    }
                }
            }
        });
    out
}

/// Input gradient of [`depthwise_forward`]: `grad` is `n × c × oh × ow`.
pub fn depthwise_grad_input<T: Real>(grad: &[T], w: &[T], g: &Window) -> Vec<T> {
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut out = zeroed(g.n * g.c * g.h * g.w);
    out.par_chunks_mut(g.h * g.w)
        .enumerate()
        .for_each(|(plane_index, dst)| {
            let c = plane_index % g.c;
            let src = &grad[plane_index * oh * ow..(plane_index + 1) * oh * ow];
            let filt = &w[c * g.kh * g.kw..(c + 1) * g.kh * g.kw];
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let wv = filt[i * g.kw + j];
                    let (lo, hi) = g.valid_cols(j);
                    for oy in 0..oh {
                        let Some(r) = g.in_row(oy, i) else { continue };
                        let line = &mut dst[r * g.w..(r + 1) * g.w];
                        let grad_line = &src[oy * ow..(oy + 1) * ow];
                        for ox in lo..hi {
                            line[ox * g.stride + j - g.pad] += wv * grad_line[ox];
                        }
                    }
                }
            }
        });
    out
}

/// Weight gradient of [`depthwise_forward`]: returns `c × 1 × kh × kw`, summed over the batch.
pub fn depthwise_grad_weight<T: Real>(x: &[T], grad: &[T], g: &Window) -> Vec<T> {
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut out = vec![T::zero(); g.c * g.kh * g.kw];
    out.par_chunks_mut(g.kh * g.kw)
        .enumerate()
        .for_each(|(c, filt)| {
            for n in 0..g.n {
                let plane_index = n * g.c + c;
                let src = &x[plane_index * g.h * g.w..(plane_index + 1) * g.h * g.w];
                let gsrc = &grad[plane_index * oh * ow..(plane_index + 1) * oh * ow];
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let (lo, hi) = g.valid_cols(j);
                        // One partial sum per image keeps f32 rounding error small.
                        let mut acc = T::zero();
                        for oy in 0..oh {
                            let Some(r) = g.in_row(oy, i) else { continue };
                            let line = &src[r * g.w..(r + 1) * g.w];
                            let grad_line = &gsrc[oy * ow..(oy + 1) * ow];
                            for ox in lo..hi {
                                acc += grad_line[ox] * line[ox * g.stride + j - g.pad];
                            }
                        }
                        filt[i * g.kw + j] += acc;
                    }
                }
            }
        });
    out
}

/// The input index of the maximum of one pooling window (the first one on ties, as PyTorch),
/// or `None` for a window entirely in the padding (impossible with PyTorch's pad ≤ k/2 rule).
#[inline]
fn window_argmax<T: Real>(plane: &[T], g: &Window, oy: usize, ox: usize) -> Option<usize> {
    let mut best: Option<(usize, T)> = None;
    for i in 0..g.kh {
        let Some(r) = g.in_row(oy, i) else { continue };
        for j in 0..g.kw {
            let Some(col) = (ox * g.stride + j).checked_sub(g.pad).filter(|&c| c < g.w) else {
                continue;
            };
            let v = plane[r * g.w + col];
            match best {
                Some((_, b)) if !(v > b || v.is_nan()) => {}
                _ => best = Some((r * g.w + col, v)),
            }
        }
    }
    best.map(|(index, _)| index)
}

/// Max pooling with padding treated as −∞: `n × c × h × w` → `n × c × oh × ow`.
pub fn max_pool_forward<T: Real>(x: &[T], g: &Window) -> Vec<T> {
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut out = vec![T::neg_infinity(); g.n * g.c * oh * ow];
    out.par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(plane_index, dst)| {
            let plane = &x[plane_index * g.h * g.w..(plane_index + 1) * g.h * g.w];
            for oy in 0..oh {
                for ox in 0..ow {
                    if let Some(index) = window_argmax(plane, g, oy, ox) {
                        dst[oy * ow + ox] = plane[index];
                    }
                }
            }
        });
    out
}

/// Input gradient of [`max_pool_forward`]: each output's gradient goes to its window's
/// maximum (overlapping windows add up).
pub fn max_pool_grad_input<T: Real>(x: &[T], grad: &[T], g: &Window) -> Vec<T> {
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut out = zeroed(g.n * g.c * g.h * g.w);
    out.par_chunks_mut(g.h * g.w)
        .enumerate()
        .for_each(|(plane_index, dst)| {
            let plane = &x[plane_index * g.h * g.w..(plane_index + 1) * g.h * g.w];
            let gsrc = &grad[plane_index * oh * ow..(plane_index + 1) * oh * ow];
            for oy in 0..oh {
                for ox in 0..ow {
                    if let Some(index) = window_argmax(plane, g, oy, ox) {
                        dst[index] += gsrc[oy * ow + ox];
                    }
                }
            }
        });
    out
}

/// Per-channel mean and biased variance of `n × c × hw` data (two passes per channel, for
/// accuracy): returns `[mean₀…mean_c, var₀…var_c]`.
pub fn channel_stats<T: Real>(x: &[T], n: usize, c: usize, hw: usize) -> Vec<T> {
    let count = T::from(n * hw).unwrap_or_else(T::one);
    let stats: Vec<(T, T)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..n).map(move |i| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw]);
            let mut sum = Lanes::default();
            for p in planes() {
                sum.add_each(p, |v| v);
            }
            let mean = sum.total() / count;
            let mut sq = Lanes::default();
            for p in planes() {
                sq.add_each(p, |v| (v - mean) * (v - mean));
            }
            (mean, sq.total() / count)
        })
        .collect();
    stats
        .iter()
        .map(|s| s.0)
        .chain(stats.iter().map(|s| s.1))
        .collect()
}

/// Partial sums in [`LANES`] independent accumulators: a sum written as one running total
/// cannot be vectorised (float addition is not associative, so the compiler keeps the
/// order); sixteen totals can, and the fixed split keeps the result deterministic.
const LANES: usize = 16;

struct Lanes<T>([T; LANES]);

impl<T: Real> Default for Lanes<T> {
    fn default() -> Self {
        Self([T::zero(); LANES])
    }
}

impl<T: Real> Lanes<T> {
    /// Adds `f(v)` for every `v` in `xs`.
    #[inline]
    fn add_each(&mut self, xs: &[T], f: impl Fn(T) -> T) {
        let mut chunks = xs.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (acc, &v) in self.0.iter_mut().zip(chunk) {
                *acc += f(v);
            }
        }
        for (acc, &v) in self.0.iter_mut().zip(chunks.remainder()) {
            *acc += f(v);
        }
    }

    /// Adds `f(x, y)` for every pair of `xs` and `ys`.
    #[inline]
    fn add_pairs(&mut self, xs: &[T], ys: &[T], f: impl Fn(T, T) -> T) {
        let mut cx = xs.chunks_exact(LANES);
        let mut cy = ys.chunks_exact(LANES);
        for (a, b) in (&mut cx).zip(&mut cy) {
            for ((acc, &u), &v) in self.0.iter_mut().zip(a).zip(b) {
                *acc += f(u, v);
            }
        }
        for ((acc, &u), &v) in self.0.iter_mut().zip(cx.remainder()).zip(cy.remainder()) {
            *acc += f(u, v);
        }
    }

    /// The lanes summed pairwise.
    fn total(&self) -> T {
        let mut v = self.0;
        let mut width = LANES;
        while width > 1 {
            width /= 2;
            for i in 0..width {
                v[i] += v[i + width];
            }
        }
        v[0]
    }
}

/// `out = a[ch]·g' + b[ch]·x + d[ch]` with `g'` the gradient a ReLU after
/// `ma[ch]·x + md[ch]` passes back (`g` where that is > 0, else 0): batch norm's input
/// gradient behind a ReLU, without writing `g'` out first.
#[allow(clippy::too_many_arguments)]
pub fn channel_affine_relu_grad<T: Real>(
    g: &[T],
    x: &[T],
    (ma, md): (&[T], &[T]),
    a: &[T],
    b: &[T],
    d: &[T],
    c: usize,
    hw: usize,
) -> Vec<T> {
    filled_planes(x.len(), c, hw, |ch, r| {
        let (mac, mdc, ac, bc, dc) = (ma[ch], md[ch], a[ch], b[ch], d[ch]);
        g[r.clone()].iter().zip(&x[r]).map(move |(&gv, &xv)| {
            let passed = if mac * xv + mdc > T::zero() {
                gv
            } else {
                T::zero()
            };
            ac * passed + bc * xv + dc
        })
    })
}

/// `out = a[ch]·x + b[ch]·z + d[ch]` elementwise over `n × c × hw` data (`z` may be empty
/// when every `b` is zero): batch norm's forward (`a` = scale, `d` = shift) and backward.
pub fn channel_affine<T: Real>(
    x: &[T],
    z: &[T],
    a: &[T],
    b: &[T],
    d: &[T],
    c: usize,
    hw: usize,
) -> Vec<T> {
    if z.is_empty() {
        return filled_planes(x.len(), c, hw, |ch, r| {
            let (ac, dc) = (a[ch], d[ch]);
            x[r].iter().map(move |&v| ac * v + dc)
        });
    }
    filled_planes(x.len(), c, hw, |ch, r| {
        let (ac, bc, dc) = (a[ch], b[ch], d[ch]);
        x[r.clone()]
            .iter()
            .zip(&z[r])
            .map(move |(&v, &w)| ac * v + bc * w + dc)
    })
}

/// `len` values of `n × c × hw` data made plane by plane in parallel: plane `p` (channel
/// `p mod c`, elements `p·hw .. (p + 1)·hw`) holds what `values(channel, elements)` yields.
fn filled_planes<T, I>(
    len: usize,
    c: usize,
    hw: usize,
    values: impl Fn(usize, Range<usize>) -> I + Sync,
) -> Vec<T>
where
    T: Real,
    I: Iterator<Item = T>,
{
    filled(len, hw, |p| values(p % c, p * hw..(p + 1) * hw))
}

/// `len` values made in parallel chunks of [`ELEMENTWISE_CHUNK`]: each chunk holds what
/// `values(its elements)` yields.
fn filled_chunks<T, I>(len: usize, values: impl Fn(Range<usize>) -> I + Sync) -> Vec<T>
where
    T: Real,
    I: Iterator<Item = T>,
{
    filled(len, ELEMENTWISE_CHUNK, |i| {
        values(i * ELEMENTWISE_CHUNK..((i + 1) * ELEMENTWISE_CHUNK).min(len))
    })
}

/// `max(v, 0)` that keeps a NaN (as PyTorch's ReLU does), so a non-finite activation still
/// reaches the loss scaler's check instead of turning into a quiet 0.
fn relu1<T: Real>(v: T) -> T {
    if v < T::zero() { T::zero() } else { v }
}

/// Elements per task of the element-wise kernels: large enough that a task outweighs its
/// hand-off, small enough that both cores get work on a 32 × 32 × 16 × 64 activation.
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// `max(x, 0)`.
pub fn relu_forward<T: Real>(x: &[T]) -> Vec<T> {
    map1(x, relu1)
}

/// ReLU's input gradient: `g` where `x > 0`, else 0 (PyTorch's convention at 0).
pub fn relu_backward<T: Real>(x: &[T], g: &[T]) -> Vec<T> {
    zip_map(x, g, |v, gv| if v > T::zero() { gv } else { T::zero() })
}

/// `max(a + b, 0)`: a residual block's sum and its activation in one pass.
pub fn add_relu_forward<T: Real>(a: &[T], b: &[T]) -> Vec<T> {
    zip_map(a, b, |u, v| relu1(u + v))
}

/// The gradient `add_relu_forward` passes to both of its inputs: `g` where `a + b > 0`.
pub fn add_relu_backward<T: Real>(a: &[T], b: &[T], g: &[T]) -> Vec<T> {
    filled_chunks(g.len(), |r| {
        a[r.clone()]
            .iter()
            .zip(&b[r.clone()])
            .zip(&g[r])
            .map(|((&u, &v), &gv)| if u + v > T::zero() { gv } else { T::zero() })
    })
}

/// The exact GELU, `x·Φ(x)` with `Φ(x) = (1 + erf(x/√2))/2` (PyTorch's `nn.GELU()`).
pub fn gelu_forward<T: Real>(x: &[T]) -> Vec<T> {
    let half = T::from(0.5).unwrap_or_else(T::zero);
    let r2 = T::from(std::f64::consts::FRAC_1_SQRT_2).unwrap_or_else(T::zero);
    vectorised1(x, super::approx::gelu, |v| {
        half * v * (T::one() + (v * r2).erf())
    })
}

/// GELU's input gradient: `g·(Φ(x) + x·φ(x))`, `φ` the standard normal density.
pub fn gelu_backward<T: Real>(x: &[T], g: &[T]) -> Vec<T> {
    let half = T::from(0.5).unwrap_or_else(T::zero);
    let r2 = T::from(std::f64::consts::FRAC_1_SQRT_2).unwrap_or_else(T::zero);
    let inv_sqrt_2pi = T::from(0.398_942_280_401_432_7).unwrap_or_else(T::zero);
    vectorised2(x, g, super::approx::gelu_grad, |v, gv| {
        let cdf = half * (T::one() + (v * r2).erf());
        let pdf = inv_sqrt_2pi * (-half * v * v).exp_fast();
        gv * (cdf + v * pdf)
    })
}

/// SiLU, `x·σ(x)` (EfficientNet's activation).
pub fn silu_forward<T: Real>(x: &[T]) -> Vec<T> {
    vectorised1(x, super::approx::silu, |v| v / (T::one() + (-v).exp()))
}

/// SiLU's input gradient: `g·σ(x)·(1 + x·(1 − σ(x)))`.
pub fn silu_backward<T: Real>(x: &[T], g: &[T]) -> Vec<T> {
    vectorised2(x, g, super::approx::silu_grad, |v, gv| {
        let s = T::one() / (T::one() + (-v).exp());
        gv * s * (T::one() + v * (T::one() - s))
    })
}

/// `kernel` (one of the vectorised f32 loops in `approx`) over f32 data in parallel
/// chunks; `f` per element otherwise (f64: the gradient checks, on libm).
fn vectorised1<T: Real>(
    x: &[T],
    kernel: fn(&[f32], &mut [f32]),
    f: impl Fn(T) -> T + Sync,
) -> Vec<T> {
    if let Some(xf) = T::as_f32(x) {
        let mut out = zeroed(x.len());
        if let Some(of) = T::as_f32_mut(&mut out) {
            of.par_chunks_mut(ELEMENTWISE_CHUNK)
                .zip(xf.par_chunks(ELEMENTWISE_CHUNK))
                .for_each(|(o, x)| kernel(x, o));
        }
        return out;
    }
    map1(x, f)
}

/// [`vectorised1`] for a kernel of two inputs (a value and its output gradient).
fn vectorised2<T: Real>(
    x: &[T],
    g: &[T],
    kernel: fn(&[f32], &[f32], &mut [f32]),
    f: impl Fn(T, T) -> T + Sync,
) -> Vec<T> {
    if let (Some(xf), Some(gf)) = (T::as_f32(x), T::as_f32(g)) {
        let mut out = zeroed(x.len());
        if let Some(of) = T::as_f32_mut(&mut out) {
            of.par_chunks_mut(ELEMENTWISE_CHUNK)
                .zip(xf.par_chunks(ELEMENTWISE_CHUNK))
                .zip(gf.par_chunks(ELEMENTWISE_CHUNK))
                .for_each(|((o, x), g)| kernel(x, g, o));
        }
        return out;
    }
    zip_map(x, g, f)
}

/// Rows per task of the row-wise kernels (softmax).
const SOFTMAX_ROWS: usize = 64;

/// Softmax of one row into `out`: the maximum subtracted for stability.
#[inline]
pub(super) fn softmax_row<T: Real>(row: &[T], out: &mut [T]) {
    let max = row.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
    // The exponentials in one loop and their sum in lanes: both vectorise.
    for (o, &v) in out.iter_mut().zip(row) {
        *o = (v - max).exp_fast();
    }
    let mut sum = Lanes::default();
    sum.add_each(out, |v| v);
    let inv = T::one() / sum.total();
    for o in out.iter_mut() {
        *o = *o * inv;
    }
}

/// Softmax over rows of `d` values.
pub fn softmax_forward<T: Real>(x: &[T], d: usize) -> Vec<T> {
    let mut out = zeroed(x.len());
    if d == 0 {
        return out;
    }
    out.par_chunks_mut(SOFTMAX_ROWS * d)
        .zip(x.par_chunks(SOFTMAX_ROWS * d))
        .for_each(|(dst, xs)| {
            for (o, row) in dst.chunks_mut(d).zip(xs.chunks(d)) {
                softmax_row(row, o);
            }
        });
    out
}

/// Softmax's input gradient per row, `y·(g − Σ g·y)`, with `y` recomputed from `x` (so the
/// graph keeps no copy of the probabilities).
pub fn softmax_backward<T: Real>(x: &[T], g: &[T], d: usize) -> Vec<T> {
    let mut out = zeroed(x.len());
    if d == 0 {
        return out;
    }
    out.par_chunks_mut(SOFTMAX_ROWS * d)
        .enumerate()
        .for_each(|(i, dst)| {
            let start = i * SOFTMAX_ROWS * d;
            let xs = &x[start..start + dst.len()];
            let gs = &g[start..start + dst.len()];
            for ((o, row), grow) in dst.chunks_mut(d).zip(xs.chunks(d)).zip(gs.chunks(d)) {
                softmax_row(row, o);
                let dot = o
                    .iter()
                    .zip(grow)
                    .fold(T::zero(), |a, (&y, &gv)| a + y * gv);
                for (y, &gv) in o.iter_mut().zip(grow) {
                    *y = *y * (gv - dot);
                }
            }
        });
    out
}

/// `y + b[ch]` over `y` viewed as `outer × c × inner` (`c = b.len()`): a product's
/// `rows × out` with `inner` 1, an NCHW tensor's channels with `inner = h·w`.
pub fn bias_add<T: Real>(y: &[T], b: &[T], inner: usize) -> Vec<T> {
    let block = b.len() * inner;
    let mut out = zeroed(y.len());
    if block == 0 {
        return out;
    }
    let per_task = (ELEMENTWISE_CHUNK / block).max(1) * block;
    out.par_chunks_mut(per_task)
        .zip(y.par_chunks(per_task))
        .for_each(|(dst, ys)| {
            for (d_row, y_row) in dst.chunks_mut(block).zip(ys.chunks(block)) {
                if inner == 1 {
                    for ((d, &v), &bias) in d_row.iter_mut().zip(y_row).zip(b) {
                        *d = v + bias;
                    }
                    continue;
                }
                for ((d_plane, y_plane), &bias) in
                    d_row.chunks_mut(inner).zip(y_row.chunks(inner)).zip(b)
                {
                    for (d, &v) in d_plane.iter_mut().zip(y_plane) {
                        *d = v + bias;
                    }
                }
            }
        });
    out
}

/// Rows of `outer` per partial sum of [`bias_grad`]: a fixed split, so the sum's order (and
/// its bits) do not depend on the thread count.
const BIAS_ROWS: usize = 64;

/// [`bias_add`]'s bias gradient: `g` summed over `outer` and `inner` for each of the `c`
/// channels. Blocks of `BIAS_ROWS` rows are summed in parallel, their partials in order.
pub fn bias_grad<T: Real>(g: &[T], c: usize, inner: usize) -> Vec<T> {
    let block = c * inner;
    let mut total = vec![T::zero(); c];
    if block == 0 {
        return total;
    }
    let partials: Vec<Vec<T>> = g
        .par_chunks(BIAS_ROWS * block)
        .map(|rows| {
            let mut acc = vec![T::zero(); c];
            for row in rows.chunks(block) {
                if inner == 1 {
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += v;
                    }
                    continue;
                }
                for (a, plane) in acc.iter_mut().zip(row.chunks(inner)) {
                    let mut lanes = Lanes::default();
                    lanes.add_each(plane, |v| v);
                    *a += lanes.total();
                }
            }
            acc
        })
        .collect();
    for p in &partials {
        for (t, &v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// `f(x[i])` for every `i`, in parallel chunks.
fn map1<T: Real>(x: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    filled_chunks(x.len(), |r| x[r].iter().map(|&v| f(v)))
}

/// `f(a[i], b[i])` for every `i`, in parallel chunks.
fn zip_map<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    filled_chunks(a.len(), |r| {
        a[r.clone()].iter().zip(&b[r]).map(|(&u, &v)| f(u, v))
    })
}

/// `max(a[ch]·x + d[ch], 0)` over `n × c × hw` data: batch norm and the ReLU after it in
/// one pass.
pub fn channel_affine_relu<T: Real>(x: &[T], a: &[T], d: &[T], c: usize, hw: usize) -> Vec<T> {
    filled_planes(x.len(), c, hw, |ch, r| {
        let (ac, dc) = (a[ch], d[ch]);
        x[r].iter().map(move |&v| relu1(ac * v + dc))
    })
}

/// `max(a[ch]·x + d[ch] + z, 0)` over `n × c × hw` data: batch norm, a residual block's
/// sum with its shortcut `z` and the ReLU after them in one pass, rounded as the three
/// separate ops round (`(a·x + d) + z`).
pub fn channel_affine_add_relu<T: Real>(
    x: &[T],
    z: &[T],
    (a, d): (&[T], &[T]),
    c: usize,
    hw: usize,
) -> Vec<T> {
    filled_planes(x.len(), c, hw, |ch, r| {
        let (ac, dc) = (a[ch], d[ch]);
        x[r.clone()]
            .iter()
            .zip(&z[r])
            .map(move |(&v, &w)| relu1(ac * v + dc + w))
    })
}

/// The gradient [`channel_affine_add_relu`] passes to the sum's two inputs: `g` where
/// `a[ch]·x + d[ch] + z > 0`, the mask recomputed from the same values in the same order as
/// the forward pass (no copy of the batch norm's output is kept for it).
pub fn channel_affine_add_relu_grad<T: Real>(
    x: &[T],
    z: &[T],
    g: &[T],
    (a, d): (&[T], &[T]),
    c: usize,
    hw: usize,
) -> Vec<T> {
    filled_planes(x.len(), c, hw, |ch, r| {
        let (ac, dc) = (a[ch], d[ch]);
        x[r.clone()]
            .iter()
            .zip(&z[r.clone()])
            .zip(&g[r])
            .map(move |((&v, &w), &gv)| {
                if ac * v + dc + w > T::zero() {
                    gv
                } else {
                    T::zero()
                }
            })
    })
}

/// Per-channel `[Σ g, Σ g·(x − mean)]` over `n × c × hw` data: the two sums of batch norm's
/// backward pass.
pub fn channel_grad_sums<T: Real>(
    g: &[T],
    x: &[T],
    mean: &[T],
    n: usize,
    c: usize,
    hw: usize,
) -> Vec<T> {
    grad_sums(g, x, mean, None, (n, c, hw))
}

/// [`channel_grad_sums`] of the gradient a ReLU after `a[ch]·x + d[ch]` passes back: `g`
/// where `a[ch]·x + d[ch] > 0`, else 0 — the ReLU's backward, computed in place instead of
/// written out as a masked copy and read back.
pub fn channel_grad_sums_relu<T: Real>(
    g: &[T],
    x: &[T],
    mean: &[T],
    (a, d): (&[T], &[T]),
    (n, c, hw): (usize, usize, usize),
) -> Vec<T> {
    grad_sums(g, x, mean, Some((a, d)), (n, c, hw))
}

fn grad_sums<T: Real>(
    g: &[T],
    x: &[T],
    mean: &[T],
    relu: Option<(&[T], &[T])>,
    (n, c, hw): (usize, usize, usize),
) -> Vec<T> {
    let sums: Vec<(T, T)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut s1, mut s2) = (Lanes::default(), Lanes::default());
            let m = mean[ch];
            for i in 0..n {
                let range = (i * c + ch) * hw..(i * c + ch + 1) * hw;
                let (gs, xs) = (&g[range.clone()], &x[range]);
                match relu {
                    None => {
                        s1.add_each(gs, |gv| gv);
                        s2.add_pairs(gs, xs, |gv, xv| gv * (xv - m));
                    }
                    Some((a, d)) => {
                        let (a, d) = (a[ch], d[ch]);
                        let pass = move |gv: T, xv: T| {
                            if a * xv + d > T::zero() {
                                gv
                            } else {
                                T::zero()
                            }
                        };
                        s1.add_pairs(gs, xs, pass);
                        s2.add_pairs(gs, xs, |gv, xv| pass(gv, xv) * (xv - m));
                    }
                }
            }
            (s1.total(), s2.total())
        })
        .collect();
    sums.iter()
        .map(|s| s.0)
        .chain(sums.iter().map(|s| s.1))
        .collect()
}

/// Rows per task of the fully connected kernels (a fixed split: the weight gradient's
/// partials are summed in the same order whatever the thread count).
const FC_ROWS: usize = 128;

/// `src` (rows × cols, row-major) transposed into `dst` (cols × rows), in parallel over
/// stripes of 16 destination rows, each through 16 × 16 tiles on the stack: every read and
/// every write is a run of up to 16 consecutive values. (Writing each source row's 16
/// values straight to 16 destination rows, `rows` apart, moved about one value per ns:
/// 7 % of a ViT-Ti/4 bf16 step went to transposing its weight gradients' operands.)
fn transpose_par<T: Real>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    dst.par_chunks_mut(16 * rows)
        .enumerate()
        .for_each(|(b, stripe)| {
            let c0 = b * 16;
            let w = cols.saturating_sub(c0).min(16);
            let mut tile = [[T::zero(); 16]; 16];
            for r0 in (0..rows).step_by(16) {
                let h = (rows - r0).min(16);
                for (r, line) in tile.iter_mut().enumerate().take(h) {
                    line[..w].copy_from_slice(&src[(r0 + r) * cols + c0..][..w]);
                }
                for c in 0..w {
                    let out = &mut stripe[c * rows + r0..][..h];
                    for (r, o) in out.iter_mut().enumerate() {
                        *o = tile[r][c];
                    }
                }
            }
        });
}

/// A fully connected layer's product `y = x · wᵀ`: `x` is `rows × k`, `w` is `n × k`
/// (PyTorch's `[out, in]`); returns `rows × n`. Row blocks run in parallel.
pub fn linear_forward<T: Real>(x: &[T], w: &[T], k: usize, n: usize, products: Products) -> Vec<T> {
    let rows = x.len() / k.max(1);
    let mut y = zeroed(rows * n);
    let wt = MatRef::row_major(w, n, k).t();
    let packed = pack_b_for(wt, products);
    y.par_chunks_mut(FC_ROWS * n)
        .zip(x.par_chunks(FC_ROWS * k))
        .for_each(|(y, x)| {
            let r = y.len() / n.max(1);
            product_b(y, MatRef::row_major(x, r, k), wt, packed.as_ref(), products);
        });
    y
}

/// Both gradients of [`linear_forward`]: `dx = dy · w` over blocks of rows, and
/// `dw = dyᵀ · x` as one product over all rows, split between tasks by columns of `dw`
/// (`dyᵀ` transposed into a contiguous scratch and packed once, the layout the bf16
/// packing reads fastest). Returns `dx` and `dw` end to end.
///
/// The weight gradient was a partial `n × k` product per block of 128 rows, summed on one
/// thread: a 128-long reduction per output element, and for ViT-Ti/4's MLP 17 partials of
/// 147 k values each. Every element of `dw` is now one reduction over all rows, in the
/// same order whatever the thread count (the column split of `dw` is fixed).
pub fn linear_backward<T: Real>(
    x: &[T],
    w: &[T],
    dy: &[T],
    k: usize,
    n: usize,
    products: Products,
) -> Vec<T> {
    /// Columns of `dw` per task.
    const DW_COLS: usize = 32;
    let rows = x.len() / k.max(1);
    let mut out = zeroed(rows * k + n * k);
    let (dx, dw) = out.split_at_mut(rows * k);
    let wm = MatRef::row_major(w, n, k);
    let packed = pack_b_for(wm, products);
    dx.par_chunks_mut(FC_ROWS * k)
        .zip(dy.par_chunks(FC_ROWS * n))
        .for_each(|(dx, dy)| {
            let r = dx.len() / k.max(1);
            product_b(
                dx,
                MatRef::row_major(dy, r, n),
                wm,
                packed.as_ref(),
                products,
            );
        });
    if rows == 0 || n == 0 || k == 0 {
        return out;
    }
    let mut dy_t = zeroed(n * rows);
    transpose_par(dy, rows, n, &mut dy_t);
    // dyᵀ is packed once (for the bf16 unit) and shared; each task takes a block of dw's
    // columns, so each packs only its own columns of x.
    let dyt = MatRef::row_major(&dy_t, n, rows);
    let packed = pack_for(dyt, products);
    let blocks: Vec<Vec<T>> = (0..k.div_ceil(DW_COLS))
        .into_par_iter()
        .map(|b| {
            let (c0, kc) = (b * DW_COLS, (k - b * DW_COLS).min(DW_COLS));
            let mut block = vec![T::zero(); n * kc];
            let xc = MatRef::strided(&x[c0..], (rows, kc), (k, 1));
            product(&mut block, dyt, packed.as_ref(), xc, false, products);
            block
        })
        .collect();
    for (b, block) in blocks.iter().enumerate() {
        let (c0, kc) = (b * DW_COLS, (k - b * DW_COLS).min(DW_COLS));
        for (row, src) in dw.chunks_exact_mut(k).zip(block.chunks_exact(kc)) {
            row[c0..c0 + kc].copy_from_slice(src);
        }
    }
    out
}
/// A fully connected layer with its bias in one pass over the output:
/// `y = x · wᵀ + b` (`x`: `rows × k`, `w`: `n × k`, `b`: `n` or none). In the tensors' own
/// dtype the output starts as copies of the bias and one product over all threads adds
/// `x · wᵀ` onto it (gemm splits the output between the threads); on a bf16 unit the
/// product is [`linear_forward`]'s and the bias is added after.
pub fn linear_bias_forward<T: Real>(
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    k: usize,
    n: usize,
    products: Products,
) -> Vec<T> {
    let rows = x.len() / k.max(1);
    if products.bf16().is_some() && T::as_f32(x).is_some() {
        let mut y = linear_forward(x, w, k, n, products);
        if let Some(b) = b {
            y.par_chunks_mut(FC_ROWS * n).for_each(|block| {
                for row in block.chunks_exact_mut(n) {
                    for (v, &bv) in row.iter_mut().zip(b) {
                        *v += bv;
                    }
                }
            });
        }
        return y;
    }
    let mut y = match b {
        Some(b) => {
            let mut y = Vec::with_capacity(rows * n);
            for _ in 0..rows {
                y.extend_from_slice(b);
            }
            y
        }
        None => zeroed(rows * n),
    };
    matmul_threads(
        &mut y,
        MatRef::row_major(x, rows, k),
        MatRef::row_major(w, n, k).t(),
        b.is_some(),
        rayon::current_num_threads(),
    );
    y
}

/// The gradients of [`linear_bias_forward`] end to end: `dx = dy · w` (`rows × k`),
/// `dw = dyᵀ · x` (`n × k`) and, `with_bias`, `db = Σ_rows dy` (`n`). In the tensors' own
/// dtype each product is one gemm over all threads; on a bf16 unit they are
/// [`linear_backward`]'s.
pub fn linear_bias_backward<T: Real>(
    x: &[T],
    w: &[T],
    dy: &[T],
    k: usize,
    n: usize,
    with_bias: bool,
    products: Products,
) -> Vec<T> {
    let rows = x.len() / k.max(1);
    let mut out = if products.bf16().is_some() && T::as_f32(x).is_some() {
        linear_backward(x, w, dy, k, n, products)
    } else {
        let threads = rayon::current_num_threads();
        let mut out = vec![T::zero(); rows * k + n * k];
        let (dx, dw) = out.split_at_mut(rows * k);
        let dym = MatRef::row_major(dy, rows, n);
        matmul_threads(dx, dym, MatRef::row_major(w, n, k), false, threads);
        matmul_threads(dw, dym.t(), MatRef::row_major(x, rows, k), false, threads);
        out
    };
    if with_bias {
        out.extend(bias_grad(dy, n, 1));
    }
    out
}

/// Rows per task of the layer-norm kernels: fixed, so the parameter-gradient partials are
/// summed in the same order whatever the thread count.
const LN_ROWS: usize = 64;

/// A row's mean and `1/√(var + eps)` (biased variance), accumulated in f64.
fn row_stats<T: Real>(row: &[T], eps: f64) -> (T, T) {
    let d = row.len().max(1) as f64;
    let mean = row.iter().map(|v| v.to_f64().unwrap_or(0.0)).sum::<f64>() / d;
    let var = row
        .iter()
        .map(|v| {
            let c = v.to_f64().unwrap_or(0.0) - mean;
            c * c
        })
        .sum::<f64>()
        / d;
    let rstd = 1.0 / (var + eps).sqrt();
    (
        T::from(mean).unwrap_or(T::zero()),
        T::from(rstd).unwrap_or(T::zero()),
    )
}

/// Layer norm over rows of `gamma.len()` values: `y = (x − μ)·r·γ + β` with
/// `r = 1/√(var + eps)`, in one pass per row (Candle's ops take eight, each with its own
/// output and backward node).
pub fn layer_norm_forward<T: Real>(x: &[T], gamma: &[T], beta: &[T], eps: f64) -> Vec<T> {
    let d = gamma.len();
    let mut y = zeroed(x.len());
    y.par_chunks_mut(d * LN_ROWS)
        .zip(x.par_chunks(d * LN_ROWS))
        .for_each(|(y, x)| {
            for (yr, xr) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                let (mean, rstd) = row_stats(xr, eps);
                for (((o, &v), &g), &b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
                    *o = (v - mean) * rstd * g + b;
                }
            }
        });
    y
}

/// The gradients of [`layer_norm_forward`] (statistics recomputed from `x`): with
/// `x̂ = (x − μ)·r` and `g = dy·γ`, `dx = r·(g − mean(g) − x̂·mean(g·x̂))`, `dγ = Σ dy·x̂`,
/// `dβ = Σ dy`. Returns `dx`, `dγ` and `dβ` end to end.
pub fn layer_norm_backward<T: Real>(x: &[T], gamma: &[T], dy: &[T], eps: f64) -> Vec<T> {
    let d = gamma.len();
    let mut dx = zeroed(x.len());
    let partials: Vec<Vec<T>> = dx
        .par_chunks_mut(d * LN_ROWS)
        .zip(x.par_chunks(d * LN_ROWS).zip(dy.par_chunks(d * LN_ROWS)))
        .map(|(dx, (x, dy))| {
            let mut sums = vec![T::zero(); 2 * d];
            let (dgamma, dbeta) = sums.split_at_mut(d);
            let dn = T::from(d).unwrap_or(T::one());
            for ((dxr, xr), dyr) in dx
                .chunks_exact_mut(d)
                .zip(x.chunks_exact(d))
                .zip(dy.chunks_exact(d))
            {
                let (mean, rstd) = row_stats(xr, eps);
                let (mut sum_g, mut sum_gx) = (T::zero(), T::zero());
                for i in 0..d {
                    let xhat = (xr[i] - mean) * rstd;
                    let g = dyr[i] * gamma[i];
                    sum_g += g;
                    sum_gx += g * xhat;
                    dgamma[i] += dyr[i] * xhat;
                    dbeta[i] += dyr[i];
                }
                let (mean_g, mean_gx) = (sum_g / dn, sum_gx / dn);
                for i in 0..d {
                    let xhat = (xr[i] - mean) * rstd;
                    dxr[i] = rstd * (dyr[i] * gamma[i] - mean_g - xhat * mean_gx);
                }
            }
            sums
        })
        .collect();
    let mut params = vec![T::zero(); 2 * d];
    for p in &partials {
        for (a, b) in params.iter_mut().zip(p) {
            *a += *b;
        }
    }
    dx.extend(params);
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch's patch matrix `[patch_len, n · out_len]` (column `image·out_len + …`), built
    /// from the per-image kernel the convolution uses, so the tests below check that kernel.
    fn im2col(x: &[f64], g: &Window) -> Vec<f64> {
        let (k, l, img) = (g.patch_len(), g.out_len(), g.c * g.h * g.w);
        let mut out = vec![0.0; k * g.n * l];
        for n in 0..g.n {
            im2col_image(&x[n * img..(n + 1) * img], g, &mut out[n * l..], g.n * l);
        }
        out
    }

    /// The adjoint of [`im2col`], through the per-image fold.
    fn col2im(cols: &[f64], g: &Window) -> Vec<f64> {
        let (l, img) = (g.out_len(), g.c * g.h * g.w);
        let mut out = vec![0.0; g.n * img];
        let mut cols = cols.to_vec();
        for n in 0..g.n {
            col2im_image(
                &mut cols[n * l..],
                g,
                &mut out[n * img..(n + 1) * img],
                g.n * l,
            );
        }
        out
    }

    fn naive_conv(x: &[f64], w: &[f64], g: &Window, co: usize) -> Vec<f64> {
        let (oh, ow) = (g.out_h(), g.out_w());
        let mut y = vec![0.0; g.n * co * oh * ow];
        for n in 0..g.n {
            for o in 0..co {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0.0;
                        for c in 0..g.c {
                            for i in 0..g.kh {
                                for j in 0..g.kw {
                                    let r = (oy * g.stride + i) as isize - g.pad as isize;
                                    let q = (ox * g.stride + j) as isize - g.pad as isize;
                                    if r < 0 || q < 0 || r >= g.h as isize || q >= g.w as isize {
                                        continue;
                                    }
                                    let xv =
                                        x[((n * g.c + c) * g.h + r as usize) * g.w + q as usize];
                                    acc += xv * w[((o * g.c + c) * g.kh + i) * g.kw + j];
                                }
                            }
                        }
                        y[((n * co + o) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        y
    }

    fn values(len: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::util::rng::Rng::new(seed);
        (0..len).map(|_| rng.normal() as f64).collect()
    }

    #[test]
    fn im2col_times_weights_is_the_naive_convolution() {
        for (h, w, k, stride, pad) in [
            (5, 7, 3, 1, 1),
            (6, 6, 3, 2, 1),
            (7, 5, 1, 2, 0),
            (8, 8, 4, 4, 0),
            (5, 5, 5, 2, 2),
            // Stride 1, "same" padding: each patch row is a shifted plane (`Window::shift`),
            // down to kernels wider than the image.
            (5, 5, 5, 1, 2),
            (2, 3, 3, 1, 1),
            (1, 1, 3, 1, 1),
            (3, 2, 7, 1, 3),
            (4, 6, 3, 1, 0),
        ] {
            let g = Window {
                n: 2,
                c: 3,
                h,
                w,
                kh: k,
                kw: k,
                stride,
                pad,
            };
            let co = 4;
            let x = values(g.n * g.c * h * w, 1);
            let wt = values(co * g.patch_len(), 2);
            let expected = naive_conv(&x, &wt, &g, co);
            {
                let cols = im2col(&x, &g);
                let (l, kk) = (g.out_len(), g.patch_len());
                for n in 0..g.n {
                    for o in 0..co {
                        for ll in 0..l {
                            let mut acc = 0.0;
                            for q in 0..kk {
                                let v = cols[(q * g.n + n) * l + ll];
                                acc += wt[o * kk + q] * v;
                            }
                            let e = expected[(n * co + o) * l + ll];
                            assert!((acc - e).abs() < 1e-12, "{g:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), c> == <x, col2im(c)> for all x, c: strided windows and stride-1
        // "same" ones (shifted planes), including kernels wider than the image.
        for (h, w, k, stride, pad) in [
            (7, 6, 3, 2, 1),
            (7, 6, 3, 1, 1),
            (4, 5, 5, 1, 2),
            (2, 1, 5, 1, 2),
        ] {
            let g = Window {
                n: 2,
                c: 3,
                h,
                w,
                kh: k,
                kw: k,
                stride,
                pad,
            };
            let x = values(g.n * g.c * g.h * g.w, 3);
            let c = values(g.n * g.patch_len() * g.out_len(), 4);
            let lhs: f64 = im2col(&x, &g).iter().zip(&c).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&col2im(&c, &g)).map(|(a, b)| a * b).sum();
            assert!(
                (lhs - rhs).abs() < 1e-9 * lhs.abs().max(1.0),
                "{g:?}: {lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn depthwise_kernels_match_the_naive_convolution_and_its_adjoints() {
        let g = Window {
            n: 2,
            c: 3,
            h: 7,
            w: 6,
            kh: 3,
            kw: 3,
            stride: 2,
            pad: 1,
        };
        let x = values(g.n * g.c * g.h * g.w, 5);
        let w = values(g.c * 9, 6);
        // A depthwise conv is a dense conv whose weight is zero off the diagonal.
        let mut dense = vec![0.0; g.c * g.c * 9];
        for c in 0..g.c {
            dense[(c * g.c + c) * 9..(c * g.c + c) * 9 + 9].copy_from_slice(&w[c * 9..c * 9 + 9]);
        }
        let y = depthwise_forward(&x, &w, &g);
        for (a, b) in y.iter().zip(naive_conv(&x, &dense, &g, g.c)) {
            assert!((a - b).abs() < 1e-12);
        }
        let gy = values(y.len(), 7);
        // <dy, conv(x, w)> is linear in x and in w: its gradients are the adjoints.
        let gx = depthwise_grad_input(&gy, &w, &g);
        let dx = values(x.len(), 8);
        let lhs = dot(&gy, &depthwise_forward(&dx, &w, &g));
        assert!((lhs - dot(&dx, &gx)).abs() < 1e-9 * lhs.abs().max(1.0));
        let gw = depthwise_grad_weight(&x, &gy, &g);
        let dw = values(w.len(), 9);
        let lhs = dot(&gy, &depthwise_forward(&x, &dw, &g));
        assert!((lhs - dot(&dw, &gw)).abs() < 1e-9 * lhs.abs().max(1.0));
    }

    #[test]
    fn max_pool_pads_with_minus_infinity_and_routes_gradients_to_the_maximum() {
        let g = Window {
            n: 1,
            c: 1,
            h: 3,
            w: 3,
            kh: 3,
            kw: 3,
            stride: 2,
            pad: 1,
        };
        let x: Vec<f64> = vec![-5.0, -4.0, -3.0, -2.0, -1.0, -6.0, -7.0, -8.0, -9.0];
        // All inputs negative: zero padding would win, −∞ padding must not.
        let y = max_pool_forward(&x, &g);
        assert_eq!(y, vec![-1.0, -1.0, -1.0, -1.0]);
        let gx = max_pool_grad_input(&x, &[1.0, 2.0, 3.0, 4.0], &g);
        assert_eq!(gx[4], 10.0);
        assert_eq!(gx.iter().sum::<f64>(), 10.0);
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// `⟨u, grad⟩ = want` to 1e-8 relative: one direction of an adjoint check.
    fn assert_adjoint(u: &[f64], grad: &[f64], want: f64, what: &str, g: &Window) {
        assert!(
            (dot(u, grad) - want).abs() < 1e-8 * want.abs().max(1.0),
            "{what} {g:?}"
        );
    }

    /// The per-image convolution equals the naive one, and its backward is the exact
    /// adjoint: with f(x, w) = ⟨dy, conv(x, w)⟩ (linear in each), ⟨x, dx⟩ = ⟨w, dw⟩ = f.
    #[test]
    fn per_image_convolution_matches_the_naive_one_and_its_backward_is_the_adjoint() {
        for (seed, (c, co, h, k, stride, pad)) in [
            (3, 4, 7, 3, 1, 1),
            (2, 5, 8, 3, 2, 1),
            (3, 2, 9, 7, 2, 3),
            (4, 6, 5, 1, 1, 0),
            (4, 3, 6, 1, 2, 0),
            // Stride 1, "same" padding (shifted planes), 5 × 5 and wider than the image.
            (3, 4, 4, 5, 1, 2),
            (2, 3, 2, 5, 1, 2),
            // ≥ 256 output positions: one image per product, straight into the output.
            (2, 3, 16, 3, 1, 1),
            (3, 4, 16, 1, 1, 0),
        ]
        .into_iter()
        .enumerate()
        {
            let g = Window {
                n: 3,
                c,
                h,
                w: h + 1,
                kh: k,
                kw: k,
                stride,
                pad,
            };
            let x = values(g.n * c * g.h * g.w, 10 + seed as u64);
            let w = values(co * c * k * k, 20 + seed as u64);
            let y = conv_forward(&x, &w, &g, co, Products::Native);
            let want = naive_conv(&x, &w, &g, co);
            assert_eq!(y.len(), want.len());
            assert!(
                y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-10),
                "forward {g:?}"
            );
            let dy = values(y.len(), 30 + seed as u64);
            let (dx, dw) = conv_backward(&x, &w, &dy, &g, co, Products::Native);
            let only_dw = conv_backward_joined(&x, &w, &dy, &g, co, Products::Native, false);
            let (no_dx, same_dw) = only_dw.split_at(dx.len());
            assert!(no_dx.iter().all(|v| *v == 0.0), "dx written {g:?}");
            assert_eq!(same_dw, &dw[..], "dW alone {g:?}");
            let f = dot(&dy, &y);
            assert_adjoint(&x, &dx, f, "dx", &g);
            assert_adjoint(&w, &dw, f, "dw", &g);
            // And along independent directions: ⟨x2, dx⟩ = ⟨dy, conv(x2, w)⟩, likewise w2.
            let x2 = values(x.len(), 40 + seed as u64);
            let w2 = values(w.len(), 50 + seed as u64);
            assert_adjoint(&x2, &dx, dot(&dy, &naive_conv(&x2, &w, &g, co)), "dx", &g);
            assert_adjoint(&w2, &dw, dot(&dy, &naive_conv(&x, &w2, &g, co)), "dw", &g);
        }
    }

    /// Wide layers of small planes take dW over the whole batch ([`dw_over_batch`]): it
    /// equals the per-task partials' dW (the exact adjoint of the forward pass), the same
    /// bits at any thread count, and chunking the batch to a smaller unfold budget gives the
    /// same sums.
    #[test]
    fn the_batched_weight_gradient_is_the_adjoint_in_any_chunking() {
        for (seed, (n, c, co, h, k, stride, pad)) in [
            (20, 3, 4, 4, 3, 1, 1),
            (30, 40, 3, 8, 3, 2, 1),
            (17, 2, 5, 5, 5, 1, 2),
        ]
        .into_iter()
        .enumerate()
        {
            let g = Window {
                n,
                c,
                h,
                w: h + 1,
                kh: k,
                kw: k,
                stride,
                pad,
            };
            let per = images_per_product(g.out_len());
            assert!(
                dw_batched(&g, images_per_task(per), DW_BATCH_WEIGHT, Products::Native),
                "{g:?} not batched at a large c_out"
            );
            let x = values(g.n * c * g.h * g.w, 60 + seed as u64);
            let w = values(co * c * k * k, 70 + seed as u64);
            let y = conv_forward(&x, &w, &g, co, Products::Native);
            let dy = values(y.len(), 80 + seed as u64);
            let (dx, dw) = conv_backward(&x, &w, &dy, &g, co, Products::Native);
            let only_dw = conv_backward_joined(&x, &w, &dy, &g, co, Products::Native, false);
            assert_eq!(&only_dw[dx.len()..], &dw[..], "dW alone {g:?}");
            let f = dot(&dy, &y);
            assert_adjoint(&x, &dx, f, "dx", &g);
            assert_adjoint(&w, &dw, f, "dw", &g);
            let w2 = values(w.len(), 90 + seed as u64);
            assert_adjoint(&w2, &dw, dot(&dy, &naive_conv(&x, &w2, &g, co)), "dw", &g);
            // These layers are small enough for the per-task partials: the batched dW is
            // checked against them.
            let kl = g.patch_len() * g.out_len();
            let mut whole = vec![0.0; g.patch_len() * co];
            dw_over_batch(&x, &dy, &g, co, usize::MAX, &mut whole);
            let mut batched = vec![0.0; whole.len()];
            transpose_par(&whole, g.patch_len(), co, &mut batched);
            assert!(
                batched.iter().zip(&dw).all(|(a, b)| (a - b).abs() < 1e-10),
                "batched dW {g:?}"
            );
            let bits = |threads: usize| {
                let mut out = vec![0.0; whole.len()];
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool")
                    .install(|| dw_over_batch(&x, &dy, &g, co, usize::MAX, &mut out));
                out.iter().map(|v: &f64| v.to_bits()).collect::<Vec<_>>()
            };
            let one = bits(1);
            assert!([2, 3, 7].iter().all(|&t| bits(t) == one), "threads {g:?}");
            for imgs in [1, 3] {
                let mut chunked = vec![0.0; whole.len()];
                dw_over_batch(&x, &dy, &g, co, imgs * kl, &mut chunked);
                assert!(
                    whole
                        .iter()
                        .zip(&chunked)
                        .all(|(a, b)| (a - b).abs() < 1e-10),
                    "{imgs} images per chunk {g:?}"
                );
            }
        }
    }

    /// The backward pass's dW is summed in a fixed order: the same bits whatever the number
    /// of threads or their scheduling (runs are reproducible for a seed).
    #[test]
    fn the_convolution_backward_is_bit_identical_across_thread_counts() {
        let g = Window {
            n: 13,
            c: 3,
            h: 9,
            w: 9,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        };
        let x: Vec<f32> = values(13 * 3 * 81, 1).iter().map(|&v| v as f32).collect();
        let w: Vec<f32> = values(5 * 27, 2).iter().map(|&v| v as f32).collect();
        let dy: Vec<f32> = values(13 * 5 * 81, 3).iter().map(|&v| v as f32).collect();
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool")
                .install(|| conv_backward(&x, &w, &dy, &g, 5, Products::Native))
        };
        let one = run(1);
        for threads in [2, 3, 7] {
            let other = run(threads);
            assert!(
                one.0
                    .iter()
                    .zip(&other.0)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
                    && one
                        .1
                        .iter()
                        .zip(&other.1)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{threads} threads"
            );
        }
    }

    /// `v` rounded to bf16 as the units round it, in f64: the reference's inputs.
    fn bf16_rounded(v: &[f32]) -> Vec<f64> {
        use super::super::bf16;
        v.iter()
            .map(|&x| f64::from(bf16::widen(bf16::round(x))))
            .collect()
    }

    /// The largest difference relative to the reference's largest magnitude.
    fn max_rel_to(got: &[f32], want: &[f64]) -> f64 {
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        got.iter()
            .zip(want)
            .fold(0f64, |m, (g, w)| m.max((f64::from(*g) - w).abs() / scale))
    }

    #[test]
    fn the_convolution_on_the_bf16_units_is_the_f64_convolution_of_the_rounded_inputs() {
        use super::super::bf16::Dot;
        let units = Dot::usable();
        if units.is_empty() {
            eprintln!("this CPU has no bf16 dot-product unit: nothing to compare");
        }
        for dot in units {
            // Grouped images (8 × 8, 4 × 4) and one image per product (16 × 16, 32 × 32),
            // 3 × 3, 5 × 5 and 1 × 1; the last field says whether the patches are read
            // straight from the images or their phase planes (`implicit`) or unfolded first
            // (an odd-sided strided input, planes whose positions do not come in blocks of
            // 16).
            for (c, co, h, k, stride, pad, direct) in [
                (5, 7, 8, 3, 1, 1, true),
                (3, 5, 4, 3, 1, 1, true),
                (2, 4, 32, 3, 1, 1, true),
                (3, 4, 16, 5, 1, 2, true),
                (4, 6, 16, 1, 1, 0, true),
                (3, 20, 16, 3, 2, 1, true),
                (4, 6, 16, 1, 2, 0, true),
                (3, 5, 32, 7, 2, 3, true),
                (2, 3, 32, 3, 2, 1, true),
                (3, 4, 8, 3, 2, 1, true),
                // More channel pairs than one chunk of the pair product (14 at 3 × 3, 128
                // at 1 × 1), and a second block of output rows that is partly padding.
                (40, 18, 8, 3, 1, 1, true),
                (260, 9, 4, 1, 1, 0, true),
                // Whole blocks of 16 output channels at 3 × 3, stride 1: the weight gradient
                // read tap by tap from the images (`bf16::weight_grad_3x3`): three channels
                // per tile, a pair of blocks and a last odd one, grouped images at 4 × 4 and
                // 8 × 8.
                (3, 16, 8, 3, 1, 1, true),
                (5, 48, 32, 3, 1, 1, true),
                (16, 32, 16, 3, 1, 1, true),
                (4, 16, 4, 3, 1, 1, true),
                // And at stride 2, from the bordered phase planes.
                (3, 16, 8, 3, 2, 1, true),
                (5, 32, 32, 3, 2, 1, true),
                (16, 48, 16, 3, 2, 1, true),
                (2, 3, 31, 3, 2, 1, false),
                (3, 4, 6, 3, 1, 1, false),
            ] {
                let g = Window {
                    n: 5,
                    c,
                    h,
                    w: h,
                    kh: k,
                    kw: k,
                    stride,
                    pad,
                };
                assert_eq!(
                    implicit::<f32>(&g, co, Products::Bf16(dot)).is_some(),
                    direct,
                    "{g:?}"
                );
                let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
                let x = f32s(values(g.n * c * h * h, 61));
                let w = f32s(values(co * c * k * k, 62));
                let y = conv_forward(&x, &w, &g, co, Products::Bf16(dot));
                let want = conv_forward(
                    &bf16_rounded(&x),
                    &bf16_rounded(&w),
                    &g,
                    co,
                    Products::Native,
                );
                let e = max_rel_to(&y, &want);
                assert!(e < 1e-5, "{:?} forward {g:?}: {e}", dot.unit());
                let dy = f32s(values(y.len(), 63));
                let (dx, dw) = conv_backward(&x, &w, &dy, &g, co, Products::Bf16(dot));
                let (wdx, wdw) = conv_backward(
                    &bf16_rounded(&x),
                    &bf16_rounded(&w),
                    &bf16_rounded(&dy),
                    &g,
                    co,
                    Products::Native,
                );
                // Without dx (a first layer's backward): the same dW, bit for bit, and
                // nothing written where dx would be.
                let only_dw = conv_backward_joined(&x, &w, &dy, &g, co, Products::Bf16(dot), false);
                let (no_dx, same_dw) = only_dw.split_at(dx.len());
                assert!(no_dx.iter().all(|v| *v == 0.0), "dx written {g:?}");
                assert_eq!(same_dw, &dw[..], "dW alone {g:?}");
                let (ex, ew) = (max_rel_to(&dx, &wdx), max_rel_to(&dw, &wdw));
                assert!(
                    ex < 1e-5 && ew < 1e-5,
                    "{:?} backward {g:?}: dx {ex}, dw {ew}",
                    dot.unit()
                );
            }
        }
    }

    /// The f32 patch product (forward and dx) against the f64 convolution of the same
    /// values, on every geometry it can read (grouped and single images, every stride and
    /// kernel the ResNets use, chunks of channels, ragged row and column blocks), whether or
    /// not `implicit` would send that layer to it; then which layers it is chosen for.
    #[test]
    fn the_f32_patch_product_is_the_f64_convolution() {
        let Some(fma) = super::super::bf16::Fma::usable() else {
            eprintln!("this CPU has no AVX-512F: nothing to compare");
            return;
        };
        // (c, c_out, side, k, stride, pad, n)
        for (c, co, h, k, stride, pad, n) in [
            (5, 7, 8, 3, 1, 1, 5),
            (3, 5, 4, 3, 1, 1, 3),
            (2, 4, 32, 3, 1, 1, 2),
            (3, 4, 16, 5, 1, 2, 3),
            (4, 6, 16, 1, 1, 0, 5),
            (3, 20, 16, 3, 2, 1, 3),
            (4, 6, 16, 1, 2, 0, 2),
            (3, 5, 32, 7, 2, 3, 1),
            (3, 4, 8, 3, 2, 1, 5),
            (40, 18, 8, 3, 1, 1, 5),
            (30, 33, 16, 3, 1, 1, 1),
            (260, 9, 4, 1, 1, 0, 7),
            (16, 32, 16, 3, 2, 1, 4),
        ] {
            let g = Window {
                n,
                c,
                h,
                w: h,
                kh: k,
                kw: k,
                stride,
                pad,
            };
            let geometry = bf16::PatchGeometry::new((h, h), k, stride).expect("a geometry");
            let unit = (Implicit::F32(fma), geometry);
            let (x64, w64) = (values(n * c * h * h, 81), values(co * c * k * k, 82));
            let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let (x, w) = (f32s(&x64), f32s(&w64));
            let mut y = vec![0f32; n * co * g.out_len()];
            conv_forward_implicit(&x, &w, &g, co, unit.clone(), &mut y);
            let want = conv_forward(&x64, &w64, &g, co, Products::Native);
            let e = max_rel_to(&y, &want);
            assert!(e < 1e-5, "forward {g:?}: {e}");
            let dy64 = values(y.len(), 83);
            let dy = f32s(&dy64);
            let dx_len = n * c * h * h;
            let mut both = vec![0f32; dx_len + co * g.patch_len()];
            conv_backward_implicit(&x, &w, (&dy, true), &g, co, unit, &mut both);
            let (dx, dw) = both.split_at(dx_len);
            let (wdx, wdw) = conv_backward(&x64, &w64, &dy64, &g, co, Products::Native);
            let (ex, ew) = (max_rel_to(dx, &wdx), max_rel_to(dw, &wdw));
            assert!(ex < 1e-5 && ew < 1e-5, "backward {g:?}: dx {ex}, dw {ew}");
        }
        // The layers it is chosen for: readable planes, ≥ 16 channels in and out, a weight
        // of at most `F32_IMPLICIT_WEIGHT` values; a layer that needs only dW stays on
        // `conv_backward_joined`.
        let p = Products::F32(fma);
        for (c, co, h, k, stride, chosen) in [
            (16, 16, 32, 3, 1, true),
            (64, 64, 8, 3, 1, true),
            (32, 64, 16, 1, 2, true),
            (64, 128, 8, 3, 1, false),
            (3, 16, 32, 3, 1, false),
            (16, 8, 32, 3, 1, false),
            (16, 16, 31, 3, 2, false),
            (16, 16, 6, 3, 1, false),
        ] {
            let g = Window {
                n: 2,
                c,
                h,
                w: h,
                kh: k,
                kw: k,
                stride,
                pad: k / 2,
            };
            assert_eq!(implicit::<f32>(&g, co, p).is_some(), chosen, "{g:?}");
            let (x, w) = (vec![0.5f32; 2 * c * h * h], vec![0.25f32; co * c * k * k]);
            let dy = vec![1f32; 2 * co * g.out_len()];
            let (dx, dw) = conv_backward(&x, &w, &dy, &g, co, p);
            let only_dw = conv_backward_joined(&x, &w, &dy, &g, co, p, false);
            let (no_dx, same_dw) = only_dw.split_at(dx.len());
            assert!(no_dx.iter().all(|v| *v == 0.0), "dx written {g:?}");
            assert_eq!(same_dw, &dw[..], "dW alone {g:?}");
        }
    }

    #[test]
    fn the_fully_connected_product_matches_its_reference_on_every_path() {
        use super::super::bf16::Dot;
        // f64 against the plain triple loop, over several row blocks and a ragged last one.
        let (rows, k, n) = (2 * FC_ROWS + 37, 23, 71);
        let x = values(rows * k, 71);
        let w = values(n * k, 72);
        let dy = values(rows * n, 73);
        let y = linear_forward(&x, &w, k, n, Products::Native);
        for r in [0, FC_ROWS, rows - 1] {
            for j in 0..n {
                let want: f64 = (0..k).map(|p| x[r * k + p] * w[j * k + p]).sum();
                assert!((y[r * n + j] - want).abs() < 1e-12);
            }
        }
        let both = linear_backward(&x, &w, &dy, k, n, Products::Native);
        let (dx, dw) = both.split_at(rows * k);
        // Adjoints: ⟨dy, x2·wᵀ⟩ = ⟨x2, dx⟩ and ⟨dy, x·w2ᵀ⟩ = ⟨w2, dw⟩.
        let (x2, w2) = (values(x.len(), 74), values(w.len(), 75));
        let fx = dot(&dy, &linear_forward(&x2, &w, k, n, Products::Native));
        let fw = dot(&dy, &linear_forward(&x, &w2, k, n, Products::Native));
        assert!((dot(&x2, dx) - fx).abs() < 1e-9 * fx.abs().max(1.0));
        assert!((dot(&w2, dw) - fw).abs() < 1e-9 * fw.abs().max(1.0));
        // The bf16 units against the f64 product of the rounded inputs.
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let (x, w, dy) = (f32s(&x), f32s(&w), f32s(&dy));
        for unit in Dot::usable() {
            let p = Products::Bf16(unit);
            let y = linear_forward(&x, &w, k, n, p);
            let want = linear_forward(&bf16_rounded(&x), &bf16_rounded(&w), k, n, Products::Native);
            assert!(max_rel_to(&y, &want) < 1e-5, "{:?} forward", unit.unit());
            let got = linear_backward(&x, &w, &dy, k, n, p);
            let want = linear_backward(
                &bf16_rounded(&x),
                &bf16_rounded(&w),
                &bf16_rounded(&dy),
                k,
                n,
                Products::Native,
            );
            let (e_dx, e_dw) = (
                max_rel_to(&got[..rows * k], &want[..rows * k]),
                max_rel_to(&got[rows * k..], &want[rows * k..]),
            );
            assert!(
                e_dx < 1e-5 && e_dw < 1e-5,
                "{:?} backward: dx {e_dx}, dw {e_dw}",
                unit.unit()
            );
        }
    }

    /// Not a check: milliseconds per call of each convolution of resnet8-tiny (batch 64) and
    /// of resnet18-cifar (batch 32), f32 against each bf16 unit, on the global
    /// thread pool (`RAYON_NUM_THREADS=2 cargo test --release --lib conv_layer_times --
    /// --ignored --nocapture`): which layers the bf16 path pays on.
    #[test]
    #[ignore]
    fn conv_layer_times() {
        use super::super::bf16::Dot;
        // (n, c, c_out, side, k, stride, pad)
        let layers = [
            (64, 3, 16, 32, 3, 1, 1),
            (64, 16, 16, 32, 3, 1, 1),
            (64, 16, 32, 32, 3, 2, 1),
            (64, 16, 32, 32, 1, 2, 0),
            (64, 32, 32, 16, 3, 1, 1),
            (64, 32, 64, 16, 3, 2, 1),
            (64, 32, 64, 16, 1, 2, 0),
            (64, 64, 64, 8, 3, 1, 1),
            (32, 3, 64, 32, 3, 1, 1),
            (32, 64, 64, 32, 3, 1, 1),
            (32, 64, 128, 32, 3, 2, 1),
            (32, 64, 128, 32, 1, 2, 0),
            (32, 128, 128, 16, 3, 1, 1),
            (32, 128, 256, 16, 3, 2, 1),
            (32, 128, 256, 16, 1, 2, 0),
            (32, 256, 256, 8, 3, 1, 1),
            (32, 256, 512, 8, 3, 2, 1),
            (32, 256, 512, 8, 1, 2, 0),
            (32, 512, 512, 4, 3, 1, 1),
        ];
        // `ANNT_LAYER=n64 16→32` times only the layers whose label starts with it (for a
        // profile of one layer).
        let only = std::env::var("ANNT_LAYER").unwrap_or_default();
        for (n, c, co, side, k, stride, pad) in layers {
            let label = format!("n{n} {c}→{co} {side}² k{k} s{stride}");
            if !label.starts_with(only.as_str()) {
                continue;
            }
            let g = Window {
                n,
                c,
                h: side,
                w: side,
                kh: k,
                kw: k,
                stride,
                pad,
            };
            let x: Vec<f32> = values(n * c * side * side, 3)
                .iter()
                .map(|&v| v as f32)
                .collect();
            let w: Vec<f32> = values(co * c * k * k, 4)
                .iter()
                .map(|&v| v as f32)
                .collect();
            let dy: Vec<f32> = values(n * co * g.out_len(), 5)
                .iter()
                .map(|&v| v as f32)
                .collect();
            let time = |f: &mut dyn FnMut()| {
                f();
                let reps = std::env::var("ANNT_REPS")
                    .ok()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(10);
                // The fastest repetition: this machine's noise only ever adds time.
                (0..reps)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        f();
                        t.elapsed().as_secs_f64() * 1e3
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            let mut line = format!("{label}:");
            let mut units = vec![Products::Native];
            units.extend(bf16::Fma::usable().map(Products::F32));
            units.extend(Dot::usable().into_iter().map(Products::Bf16));
            // `ANNT_UNIT=f32` (or a unit's label prefix) times only that unit.
            let unit = std::env::var("ANNT_UNIT").unwrap_or_default();
            for p in units {
                let name = match p {
                    Products::Native => "f32",
                    Products::F32(_) => "fma",
                    Products::Bf16(d) => d.unit().label(),
                };
                if !name.starts_with(unit.as_str()) {
                    continue;
                }
                let f = time(&mut || {
                    std::hint::black_box(conv_forward(&x, &w, &g, co, p));
                });
                let b = time(&mut || {
                    std::hint::black_box(conv_backward(&x, &w, &dy, &g, co, p));
                });
                // dW alone (a first layer's backward): bwd − dw is what dx costs.
                let d = time(&mut || {
                    std::hint::black_box(conv_backward_joined(&x, &w, &dy, &g, co, p, false));
                });
                line += &format!("  {name} fwd {f:.2} bwd {b:.2} (dw {d:.2})");
            }
            println!("{line}");
        }
    }
}
