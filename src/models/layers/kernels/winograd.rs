//! 3 × 3 stride-1 convolutions with "same" padding by Winograd's minimal filtering
//! algorithm F(2 × 2, 3 × 3): most of ResNet's 3 × 3 convolutions (all but the strided first
//! of a stage) as 16 matrix products, 4 multiplies per output where a direct convolution
//! has 9.
//!
//! A direct convolution of ResNet-18-CIFAR's 64 → 64 and 128 → 128 layers already runs
//! near this CPU's f32 peak, as PyTorch's oneDNN does (`benches/torch_conv_layers.py`
//! against `conv_layer_times`): only fewer multiplications go faster. The image is cut
//! into 4 × 4 tiles at a stride of 2 (each gives a 2 × 2 block of output), and with Lavin &
//! Gray's matrices (arXiv 1509.09308)
//!
//! ```text
//! Bᵀ = [1  0 −1  0]     G = [ 1    0    0 ]     Aᵀ = [1  1  1  0]
//!      [0  1  1  0]         [ ½    ½    ½ ]          [0  1 −1 −1]
//!      [0 −1  1  0]         [ ½   −½    ½ ]
//!      [0  1  0 −1]         [ 0    0    1 ]
//! ```
//!
//! a tile's output is `Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A`. Summed over input channels, each of the 16
//! elements `ξ` of the transformed tile is one matrix product over the batch's tiles:
//! `M_ξ (c_out × tiles) = U_ξ (c_out × c) · V_ξ (c × tiles)`. The transforms are additions
//! only (½ in the weight's), done on whole rows of tiles so they vectorise.
//!
//! The backward pass is the same algorithm: the input gradient is this convolution of `dY`
//! with the weights flipped and transposed, and the weight gradient is
//! `dW = Gᵀ[Σ_tiles (A dY Aᵀ) ⊙ (Bᵀ d B)]G` — per `ξ` the product `D_ξ (c_out × c) =
//! Ŷ_ξ (c_out × tiles) · V_ξᵀ (tiles × c)`.
//!
//! Training takes this path for f32 layers of at least 64 channels on planes of at least
//! 16 × 16 ([`chosen`]); the products go through gemm (f64 in the tests; the bf16 unit
//! works too, but measured slower than its direct products). Tiles go through in groups of
//! tile rows sized so a group's transformed tiles stay in L2, tasks of whole images in
//! parallel. Numerics: in f32 the error is a few ulps of the largest partial sum (the tests
//! hold it to 1e-5 relative against f64). The weight gradient sums per-task partials in task
//! order, and the tasks are a function of the shape alone, so a run gives the same bits on
//! any number of threads.

use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::Products;
use super::bf16::PackedA;
use super::cpu::{Grads, Real, Scratch, Window, pack_for, product, sum_partials};
use super::gemm::MatRef;

/// Elements of a transformed tile (4 × 4).
const XI: usize = 16;

/// Turns this path off for an A/B in one binary: `ANNT_CPU_WINOGRAD=off` runs these layers
/// as before (taps, the patch product or im2col + gemm).
pub const WINOGRAD_ENV: &str = "ANNT_CPU_WINOGRAD";

/// Fewest input and output channels for this path: with fewer, the products are too thin
/// for the transforms' memory traffic to pay.
const MIN_CHANNELS: usize = 64;

/// Fewest positions per plane: at 8 × 8 (16 tiles per channel and image) the transforms
/// cost more than the products save.
const MIN_PLANE: usize = 256;

/// Whether a convolution of window `g` and `c_out` output channels runs here: [`applies`],
/// [`WINOGRAD_ENV`] not `off`, and products that are not on a bf16 unit.
///
/// On AVX512-BF16 the direct products are twice as fast as in f32 while the transforms
/// cost what they cost in f32, and ResNet-18's layers measured 0.77–0.87× as fast this way
/// (`winograd_layer_times`, 2-core Zen 4): `--amp bf16` keeps the direct convolution.
pub(super) fn chosen(g: &Window, c_out: usize, products: Products) -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    let on = *ON.get_or_init(|| super::switch_on(WINOGRAD_ENV));
    on && products.bf16().is_none()
        && !OFF_IN_TEST.load(std::sync::atomic::Ordering::Relaxed)
        && applies(g, c_out)
}

/// Set by the interleaved timing test to time the path this one replaces in one process.
static OFF_IN_TEST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A 3 × 3 window, stride 1, padding 1 (the output has the input's size), even sides (the
/// 2 × 2 output blocks tile the plane exactly) and at least [`MIN_CHANNELS`] channels on
/// both sides.
pub(super) fn applies(g: &Window, c_out: usize) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.pad == 1
        && g.h >= 2
        && g.w >= 2
        && g.h.is_multiple_of(2)
        && g.w.is_multiple_of(2)
        && g.c.min(c_out) >= MIN_CHANNELS
        && g.h * g.w >= MIN_PLANE
}

/// The tiling of one plane (`th × tw` tiles, each a 2 × 2 block of output) and how many
/// tile rows go through the products together.
#[derive(Clone, Copy, Debug)]
struct Tiles {
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
    group: usize,
}

/// Channels × tiles a group's transformed matrices hold per `ξ` at most (64 channels ×
/// 128 tiles: one `ξ`'s operand is 32 KiB of f32, all 16 of them 512 KiB, so a group's
/// `V` and `M` stay in a 1 MiB L2 between the transform and the products). 4096, 8192
/// and 16384 measured alike on ResNet-18's layers (`winograd_layer_times`, 2-core Zen 4),
/// 32768 slower.
const GROUP_ELEMS: usize = 1 << 13;

impl Tiles {
    /// The tiling of `g`'s planes, in groups of [`GROUP_ELEMS`] for `ch` channels (the
    /// wider side of the layer), at least one tile row.
    fn of(g: &Window, ch: usize) -> Self {
        let tw = g.w / 2;
        Self {
            h: g.h,
            w: g.w,
            th: g.h / 2,
            tw,
            group: (GROUP_ELEMS / (ch * tw)).max(1),
        }
    }
    fn plane(&self) -> usize {
        self.h * self.w
    }
    /// Images per parallel task: enough for a whole group of tile rows.
    fn images_per_task(&self, n: usize) -> usize {
        self.group.div_ceil(self.th).clamp(1, n.max(1))
    }
    /// The groups of `rows` tile rows, in order.
    fn groups(&self, rows: usize) -> impl Iterator<Item = Range<usize>> + use<> {
        let per = self.group;
        (0..rows.div_ceil(per)).map(move |g| g * per..((g + 1) * per).min(rows))
    }
}

/// Splits `row` into its even and odd elements, each with one zero slot: `even` at its end
/// (`even[j] = row[2j]`, `even[tw] = 0`) and `odd` at its start (`odd[j + 1] = row[2j + 1]`,
/// `odd[0] = 0`) — the columns left and right of the plane's edge.
#[inline(always)]
fn split_padded<T: Real>(row: &[T], even: &mut [T], odd: &mut [T]) {
    let tw = row.len() / 2;
    for ((e, o), pair) in even[..tw]
        .iter_mut()
        .zip(odd[1..].iter_mut())
        .zip(row.chunks_exact(2))
    {
        *e = pair[0];
        *o = pair[1];
    }
    even[tw] = T::zero();
    odd[0] = T::zero();
}

/// `Bᵀ d B` of tile rows `rows` of `x` (whole images, `imgs × ch × h × w`; tile row
/// `r = image · th + ty`) into `v`, laid out `v[ξ][c][p]` with `p = (r − rows.start) · tw +
/// tx`. Tile `(ty, tx)` reads input rows `2ty − 1 … 2ty + 2` and columns `2tx − 1 … 2tx + 2`,
/// zero outside the plane.
#[inline(always)]
fn transform_input<T: Real>(
    x: &[T],
    t: &Tiles,
    ch: usize,
    rows: Range<usize>,
    v: &mut [T],
    scratch: &mut [T],
) {
    let (w, tw) = (t.w, t.tw);
    let pb = rows.len() * tw;
    let (vert, rest) = scratch.split_at_mut(4 * w);
    let (even, rest) = rest.split_at_mut(tw + 1);
    let (odd, zero) = rest.split_at_mut(tw + 1);
    let zero = &mut zero[..w];
    zero.fill(T::zero());
    for (p, r) in rows.enumerate() {
        let (image, ty) = (r / t.th, r % t.th);
        let p0 = p * tw;
        for c in 0..ch {
            let plane = &x[(image * ch + c) * t.plane()..][..t.plane()];
            let row = |r: usize| &plane[r * w..(r + 1) * w];
            let r0 = if ty > 0 { row(2 * ty - 1) } else { &zero[..] };
            let (r1, r2) = (row(2 * ty), row(2 * ty + 1));
            let r3 = if 2 * ty + 2 < t.h {
                row(2 * ty + 2)
            } else {
                &zero[..]
            };
            // Bᵀ down the columns: four rows of the plane's width.
            let (v0, rest) = vert.split_at_mut(w);
            let (v1, rest) = rest.split_at_mut(w);
            let (v2, v3) = rest.split_at_mut(w);
            sub(r0, r2, v0);
            add(r1, r2, v1);
            sub(r2, r1, v2);
            sub(r1, r3, v3);
            for (a, vr) in [&*v0, &*v1, &*v2, &*v3].into_iter().enumerate() {
                // B along the rows: tile tx reads columns 2tx − 1 … 2tx + 2, i.e.
                // odd[tx], even[tx], odd[tx + 1], even[tx + 1] of the padded split.
                split_padded(vr, even, odd);
                let at = |b: usize| (4 * a + b) * ch * pb + c * pb + p0;
                sub(&odd[..tw], &odd[1..], &mut v[at(0)..][..tw]);
                add(&even[..tw], &odd[1..], &mut v[at(1)..][..tw]);
                sub(&odd[1..], &even[..tw], &mut v[at(2)..][..tw]);
                sub(&even[..tw], &even[1..], &mut v[at(3)..][..tw]);
            }
        }
    }
}

/// Scratch [`transform_input`] needs.
fn input_scratch(t: &Tiles) -> usize {
    5 * t.w + 2 * (t.tw + 1)
}

/// `A dy Aᵀ` of every 2 × 2 block in tile rows `rows` of `dy` (`imgs × ch × h × w`) into
/// `v[ξ][c][p]`, laid out as [`transform_input`]'s: what the weight gradient multiplies
/// `V` with.
#[inline(always)]
fn transform_grad<T: Real>(
    dy: &[T],
    t: &Tiles,
    ch: usize,
    rows: Range<usize>,
    v: &mut [T],
    scratch: &mut [T],
) {
    let (w, tw) = (t.w, t.tw);
    let pb = rows.len() * tw;
    let (vert, rest) = scratch.split_at_mut(2 * w);
    let (even, odd) = rest.split_at_mut(tw + 1);
    let odd = &mut odd[..tw + 1];
    for (p, r) in rows.enumerate() {
        let (image, ty) = (r / t.th, r % t.th);
        let p0 = p * tw;
        for c in 0..ch {
            let plane = &dy[(image * ch + c) * t.plane()..][..t.plane()];
            let y0 = &plane[2 * ty * w..][..w];
            let y1 = &plane[(2 * ty + 1) * w..][..w];
            // A down the columns: rows y0, y0 + y1, y0 − y1, −y1.
            let (s, d) = vert.split_at_mut(w);
            add(y0, y1, s);
            sub(y0, y1, d);
            for (a, vr) in [y0, &*s, &*d, y1].into_iter().enumerate() {
                split_padded(vr, even, odd);
                let (e, o) = (&even[..tw], &odd[1..]);
                let at = |b: usize| (4 * a + b) * ch * pb + c * pb + p0;
                if a < 3 {
                    v[at(0)..][..tw].copy_from_slice(e);
                    add(e, o, &mut v[at(1)..][..tw]);
                    sub(e, o, &mut v[at(2)..][..tw]);
                    neg(o, &mut v[at(3)..][..tw]);
                } else {
                    // The row is −y1.
                    neg(e, &mut v[at(0)..][..tw]);
                    neg_add(e, o, &mut v[at(1)..][..tw]);
                    sub(o, e, &mut v[at(2)..][..tw]);
                    v[at(3)..][..tw].copy_from_slice(o);
                }
            }
        }
    }
}

/// Scratch [`transform_grad`] needs.
fn grad_scratch(t: &Tiles) -> usize {
    2 * t.w + 2 * (t.tw + 1)
}

/// `Aᵀ m A` of tile rows `rows` (`m[ξ][k][p]`, `ch` channels) into their rows of `y`
/// (whole images, `imgs × ch × h × w`), every element of those rows written.
#[inline(always)]
fn transform_output<T: Real>(
    m: &[T],
    t: &Tiles,
    ch: usize,
    rows: Range<usize>,
    y: &mut [T],
    scratch: &mut [T],
) {
    let (w, tw) = (t.w, t.tw);
    let pb = rows.len() * tw;
    let (s, rest) = scratch.split_at_mut(8 * tw);
    let (even, odd) = rest.split_at_mut(tw);
    let odd = &mut odd[..tw];
    for (p, r) in rows.enumerate() {
        let (image, ty) = (r / t.th, r % t.th);
        let p0 = p * tw;
        for k in 0..ch {
            let plane = &mut y[(image * ch + k) * t.plane()..][..t.plane()];
            let at = |xi: usize| &m[xi * ch * pb + k * pb + p0..][..tw];
            // Aᵀ down the columns: s0_j = m0j + m1j + m2j, s1_j = m1j − m2j − m3j.
            let (s0, s1) = s.split_at_mut(4 * tw);
            for j in 0..4 {
                let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                add3(m0, m1, m2, &mut s0[j * tw..][..tw]);
                sub2(m1, m2, m3, &mut s1[j * tw..][..tw]);
            }
            // A along the rows, the two outputs of each tile interleaved into the row.
            for (a, sa) in [&*s0, &*s1].into_iter().enumerate() {
                let col = |j: usize| &sa[j * tw..][..tw];
                add3(col(0), col(1), col(2), even);
                sub2(col(1), col(2), col(3), odd);
                let row = &mut plane[(2 * ty + a) * w..][..w];
                for ((pair, &e), &o) in row.chunks_exact_mut(2).zip(&*even).zip(&*odd) {
                    pair[0] = e;
                    pair[1] = o;
                }
            }
        }
    }
}

/// Scratch [`transform_output`] needs.
fn output_scratch(t: &Tiles) -> usize {
    10 * t.tw
}

crate::simd_fn! {
    fn transform_input_f32(x: &[f32], t: &Tiles, ch: usize, rows: Range<usize>, v: &mut [f32], s: &mut [f32]) {
        transform_input(x, t, ch, rows, v, s)
    }
}

crate::simd_fn! {
    fn transform_grad_f32(x: &[f32], t: &Tiles, ch: usize, rows: Range<usize>, v: &mut [f32], s: &mut [f32]) {
        transform_grad(x, t, ch, rows, v, s)
    }
}

crate::simd_fn! {
    fn transform_output_f32(m: &[f32], t: &Tiles, ch: usize, rows: Range<usize>, y: &mut [f32], s: &mut [f32]) {
        transform_output(m, t, ch, rows, y, s)
    }
}

/// The three transforms, compiled for the CPU's widest vectors in f32 (the crate is built
/// for baseline x86-64: 4 lanes where a row of 16 tiles is one AVX-512 vector) and generic
/// in f64.
#[derive(Clone, Copy)]
enum Transform {
    Input,
    Grad,
    Output,
}

impl Transform {
    fn scratch(self, t: &Tiles) -> usize {
        match self {
            Transform::Input => input_scratch(t),
            Transform::Grad => grad_scratch(t),
            Transform::Output => output_scratch(t),
        }
    }

    fn run<T: Real>(self, src: &[T], t: &Tiles, ch: usize, rows: Range<usize>, dst: &mut [T]) {
        let mut scratch = Scratch::take(2, self.scratch(t));
        if let (Some(s), Some(d), Some(r)) = (
            T::as_f32(src),
            T::as_f32_mut(dst),
            T::as_f32_mut(&mut scratch),
        ) {
            return match self {
                Transform::Input => transform_input_f32(s, t, ch, rows, d, r),
                Transform::Grad => transform_grad_f32(s, t, ch, rows, d, r),
                Transform::Output => transform_output_f32(s, t, ch, rows, d, r),
            };
        }
        match self {
            Transform::Input => transform_input(src, t, ch, rows, dst, &mut scratch),
            Transform::Grad => transform_grad(src, t, ch, rows, dst, &mut scratch),
            Transform::Output => transform_output(src, t, ch, rows, dst, &mut scratch),
        }
    }
}

/// `U_ξ = (G g Gᵀ)_ξ` of every 3 × 3 kernel `g = w[k][c]` (`w`: `k_out × c_in × 3 × 3`),
/// laid out `u[ξ][k][c]` — or, `flipped`, of the kernel rotated by 180° and the channels
/// swapped, `u[ξ][c][k]`: the weights of the input gradient's convolution.
fn transform_weights<T: Real>(w: &[T], k_out: usize, c_in: usize, flipped: bool) -> Vec<T> {
    let half = T::from(0.5).expect("½ is representable");
    let mut u = vec![T::zero(); XI * k_out * c_in];
    for (k, row) in w.chunks_exact(9 * c_in).enumerate() {
        for (c, g) in row.chunks_exact(9).enumerate() {
            let g = |r: usize, s: usize| {
                if flipped {
                    g[(2 - r) * 3 + 2 - s]
                } else {
                    g[r * 3 + s]
                }
            };
            // G g: four rows of three, built column by column.
            let col = |s: usize| {
                let (a, b, c) = (g(0, s), g(1, s), g(2, s));
                [a, (a + b + c) * half, (a - b + c) * half, c]
            };
            let cols = [col(0), col(1), col(2)];
            let gg: [[T; 3]; 4] = std::array::from_fn(|r| [cols[0][r], cols[1][r], cols[2][r]]);
            let at = if flipped { c * k_out + k } else { k * c_in + c };
            for (r, &[a, b, c]) in gg.iter().enumerate() {
                let out = [a, (a + b + c) * half, (a - b + c) * half, c];
                for (j, v) in out.into_iter().enumerate() {
                    u[(4 * r + j) * k_out * c_in + at] = v;
                }
            }
        }
    }
    u
}

/// `dW[k][c] = Gᵀ D_kc G` from `d[ξ][k][c]`, into `dw` (`k_out × c_in × 3 × 3`).
fn weight_grad_from<T: Real>(d: &[T], k_out: usize, c_in: usize, dw: &mut [T]) {
    let half = T::from(0.5).expect("½ is representable");
    let plane = k_out * c_in;
    // Gᵀ applied to four values: three.
    let gt = |a: T, b: T, c: T, e: T| [a + (b + c) * half, (b - c) * half, (b + c) * half + e];
    for (kc, out) in dw.chunks_exact_mut(9).enumerate() {
        let dd = |xi: usize| d[xi * plane + kc];
        let mut cols = [[T::zero(); 3]; 4];
        for (j, col) in cols.iter_mut().enumerate() {
            *col = gt(dd(j), dd(4 + j), dd(8 + j), dd(12 + j));
        }
        for r in 0..3 {
            let v = gt(cols[0][r], cols[1][r], cols[2][r], cols[3][r]);
            out[r * 3..r * 3 + 3].copy_from_slice(&v);
        }
    }
}

/// Per-`ξ` weights packed for the bf16 unit, when the products run on one.
fn packed<T: Real>(u: &[T], rows: usize, cols: usize, products: Products) -> Vec<Option<PackedA>> {
    u.chunks_exact(rows * cols)
        .map(|ux| pack_for(MatRef::row_major(ux, rows, cols), products))
        .collect()
}

/// The convolution of `x` (`n × c × h × w`) with transformed weights `u` (`u[ξ][k][c]`)
/// into `out` (`n × k × h × w`): in parallel over tasks of whole images, each in groups of
/// tile rows transformed, multiplied per `ξ` and transformed back while in cache.
fn convolve<T: Real>(
    x: &[T],
    u: &[T],
    t: &Tiles,
    (c, k): (usize, usize),
    products: Products,
    out: &mut [T],
) {
    let n = x.len() / (c * t.plane());
    let packed = packed(u, k, c, products);
    let per_task = t.images_per_task(n);
    out.par_chunks_mut(per_task * k * t.plane())
        .zip(x.par_chunks(per_task * c * t.plane()))
        .for_each(|(y, xs)| {
            let rows = xs.len() / (c * t.plane()) * t.th;
            for group in t.groups(rows) {
                let pb = group.len() * t.tw;
                let mut v = Scratch::take(0, XI * c * pb);
                let mut m = Scratch::take(1, XI * k * pb);
                Transform::Input.run(xs, t, c, group.clone(), &mut v);
                for (xi, (mx, vx)) in m
                    .chunks_exact_mut(k * pb)
                    .zip(v.chunks_exact(c * pb))
                    .enumerate()
                {
                    let ux = MatRef::row_major(&u[xi * k * c..][..k * c], k, c);
                    let vx = MatRef::row_major(vx, c, pb);
                    product(mx, ux, packed[xi].as_ref(), vx, false, products);
                }
                Transform::Output.run(&m, t, k, group, y);
            }
        });
}

/// The forward convolution (`x`: `n × c × h × w`, `w`: `c_out × c × 3 × 3`) into `out`
/// (`n × c_out × h × w`), every element written.
pub(super) fn forward<T: Real>(
    x: &[T],
    w: &[T],
    g: &Window,
    c_out: usize,
    products: Products,
    out: &mut [T],
) {
    let u = transform_weights(w, c_out, g.c, false);
    convolve(
        x,
        &u,
        &Tiles::of(g, g.c.max(c_out)),
        (g.c, c_out),
        products,
        out,
    );
}

/// Weight-gradient tasks at most: each sums its groups' products into its own partial,
/// and the partials are added in task order. A function of the shape alone, so the sum's
/// order (and the result's bits) does not depend on the thread count.
const DW_TASKS: usize = 8;

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
    let t = Tiles::of(g, g.c.max(c_out));
    gradients(x, w, dy, &t, (g.c, c_out), products, (grads.dx, grads.dw));
}

/// [`backward`] on the tiling `t`.
fn gradients<T: Real>(
    x: &[T],
    w: &[T],
    dy: &[T],
    t: &Tiles,
    (c, k): (usize, usize),
    products: Products,
    (dx, dw): (Option<&mut [T]>, &mut [T]),
) {
    let n = x.len() / (c * t.plane());
    if let Some(dx) = dx {
        let u = transform_weights(w, k, c, true);
        convolve(dy, &u, t, (k, c), products, dx);
    }
    // The batch's tile rows in groups, the groups shared out over the tasks in order.
    let all: Vec<Range<usize>> = t.groups(n * t.th).collect();
    let tasks = all.len().min(DW_TASKS);
    let per_task = all.len().div_ceil(tasks);
    let mut partials = vec![T::zero(); tasks * XI * k * c];
    partials
        .par_chunks_mut(XI * k * c)
        .zip(all.par_chunks(per_task))
        .for_each(|(d, mine)| {
            for (first, group) in mine.iter().enumerate() {
                let pb = group.len() * t.tw;
                let mut v = Scratch::take(0, XI * c * pb);
                let mut yh = Scratch::take(1, XI * k * pb);
                Transform::Input.run(x, t, c, group.clone(), &mut v);
                Transform::Grad.run(dy, t, k, group.clone(), &mut yh);
                for (xi, dx) in d.chunks_exact_mut(k * c).enumerate() {
                    let a = MatRef::row_major(&yh[xi * k * pb..][..k * pb], k, pb);
                    let b = MatRef::row_major(&v[xi * c * pb..][..c * pb], c, pb).t();
                    product(dx, a, None, b, first > 0, products);
                }
            }
        });
    weight_grad_from(sum_partials(&mut partials, XI * k * c), k, c, dw);
}

/// `out = a + b + c`.
#[inline(always)]
fn add3<T: Real>(a: &[T], b: &[T], c: &[T], out: &mut [T]) {
    for (((o, &a), &b), &c) in out.iter_mut().zip(a).zip(b).zip(c) {
        *o = a + b + c;
    }
}

/// `out = a − b − c`.
#[inline(always)]
fn sub2<T: Real>(a: &[T], b: &[T], c: &[T], out: &mut [T]) {
    for (((o, &a), &b), &c) in out.iter_mut().zip(a).zip(b).zip(c) {
        *o = a - b - c;
    }
}

#[inline(always)]
fn add<T: Real>(a: &[T], b: &[T], out: &mut [T]) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = a + b;
    }
}

#[inline(always)]
fn sub<T: Real>(a: &[T], b: &[T], out: &mut [T]) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = a - b;
    }
}

#[inline(always)]
fn neg<T: Real>(a: &[T], out: &mut [T]) {
    for (o, &a) in out.iter_mut().zip(a) {
        *o = -a;
    }
}

/// `out = −a − b`.
#[inline(always)]
fn neg_add<T: Real>(a: &[T], b: &[T], out: &mut [T]) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = -a - b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    /// The direct 3 × 3 "same" convolution, its input gradient and its weight gradient.
    fn naive(x: &[f64], w: &[f64], dy: &[f64], g: &Window, k: usize) -> [Vec<f64>; 3] {
        let (n, c, h, wd) = (g.n, g.c, g.h as isize, g.w as isize);
        let mut y = vec![0.0; n * k * g.h * g.w];
        let mut dx = vec![0.0; x.len()];
        let mut dw = vec![0.0; w.len()];
        for i in 0..n {
            for o in 0..k {
                for ch in 0..c {
                    for yy in 0..h {
                        for xx in 0..wd {
                            let at = ((i * k + o) * g.h + yy as usize) * g.w + xx as usize;
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (sy, sx) = (yy + ky as isize - 1, xx + kx as isize - 1);
                                    if sy < 0 || sy >= h || sx < 0 || sx >= wd {
                                        continue;
                                    }
                                    let xi = ((i * c + ch) * g.h + sy as usize) * g.w + sx as usize;
                                    let wi = (o * c + ch) * 9 + ky * 3 + kx;
                                    y[at] += w[wi] * x[xi];
                                    dx[xi] += w[wi] * dy[at];
                                    dw[wi] += x[xi] * dy[at];
                                }
                            }
                        }
                    }
                }
            }
        }
        [y, dx, dw]
    }

    fn max_rel(got: &[f64], want: &[f64]) -> f64 {
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        got.iter()
            .zip(want)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs() / scale))
    }

    #[test]
    fn the_winograd_convolution_and_its_gradients_are_the_direct_ones() {
        // Rectangular planes, a 2 × 2 plane (one tile row), channel counts that differ.
        for (n, c, k, h, w) in [(3, 5, 7, 6, 8), (2, 4, 3, 2, 2), (5, 3, 6, 4, 10)] {
            let g = Window {
                n,
                c,
                h,
                w,
                kh: 3,
                kw: 3,
                stride: 1,
                pad: 1,
            };
            let x = values(n * c * h * w, 1);
            let wt = values(k * c * 9, 2);
            let dy = values(n * k * h * w, 3);
            let [y, dx, dw] = naive(&x, &wt, &dy, &g, k);
            // Groups of one tile row, of rows across images' edges, of whole batches.
            for group in [1, 3, 1000] {
                let t = Tiles {
                    group,
                    ..Tiles::of(&g, c.max(k))
                };
                let what = format!("{:?} in groups of {group}", (n, c, k, h, w));
                let mut got = vec![f64::NAN; y.len()];
                convolve(
                    &x,
                    &transform_weights(&wt, k, c, false),
                    &t,
                    (c, k),
                    Products::Native,
                    &mut got,
                );
                assert!(
                    max_rel(&got, &y) < 1e-12,
                    "forward {what}: {}",
                    max_rel(&got, &y)
                );
                let mut gdx = vec![f64::NAN; dx.len()];
                let mut gdw = vec![f64::NAN; dw.len()];
                gradients(
                    &x,
                    &wt,
                    &dy,
                    &t,
                    (c, k),
                    Products::Native,
                    (Some(&mut gdx), &mut gdw),
                );
                assert!(
                    max_rel(&gdx, &dx) < 1e-12,
                    "dx {what}: {}",
                    max_rel(&gdx, &dx)
                );
                assert!(
                    max_rel(&gdw, &dw) < 1e-12,
                    "dw {what}: {}",
                    max_rel(&gdw, &dw)
                );
            }
        }
    }

    #[test]
    fn in_f32_the_winograd_convolution_is_within_1e_5_of_the_f64_one() {
        // ResNet-18's 64-channel layer on a 16 × 16 plane, on the vectorised f32 transforms.
        let g = Window {
            n: 2,
            c: 64,
            h: 16,
            w: 16,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        };
        let k = 64;
        let x = values(g.n * g.c * 256, 7);
        let wt: Vec<f64> = values(k * g.c * 9, 8).iter().map(|v| v * 0.1).collect();
        let dy = values(g.n * k * 256, 9);
        let [y, dx, dw] = naive(&x, &wt, &dy, &g, k);
        let f = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let back = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        assert!(chosen(&g, k, Products::Native), "the layer takes this path");
        let mut got = vec![f32::NAN; y.len()];
        forward(&f(&x), &f(&wt), &g, k, Products::Native, &mut got);
        assert!(
            max_rel(&back(&got), &y) < 1e-5,
            "forward {}",
            max_rel(&back(&got), &y)
        );
        let (mut gdx, mut gdw) = (vec![f32::NAN; dx.len()], vec![f32::NAN; dw.len()]);
        backward(
            &f(&x),
            &f(&wt),
            &f(&dy),
            &g,
            k,
            Products::Native,
            Grads {
                dx: Some(&mut gdx),
                dw: &mut gdw,
            },
        );
        assert!(
            max_rel(&back(&gdx), &dx) < 1e-5,
            "dx {}",
            max_rel(&back(&gdx), &dx)
        );
        assert!(
            max_rel(&back(&gdw), &dw) < 1e-5,
            "dw {}",
            max_rel(&back(&gdw), &dw)
        );
    }

    #[test]
    fn the_gradients_are_the_same_bits_on_any_number_of_threads() {
        let g = Window {
            n: 5,
            c: 64,
            h: 16,
            w: 16,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        };
        let k = 64;
        let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
        let x = f(values(g.n * g.c * 256, 1));
        let wt = f(values(k * g.c * 9, 2));
        let dy = f(values(g.n * k * 256, 3));
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool")
                .install(|| {
                    let (mut dx, mut dw) = (vec![0f32; x.len()], vec![0f32; wt.len()]);
                    backward(
                        &x,
                        &wt,
                        &dy,
                        &g,
                        k,
                        Products::Native,
                        Grads {
                            dx: Some(&mut dx),
                            dw: &mut dw,
                        },
                    );
                    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
                    (bits(&dx), bits(&dw))
                })
        };
        let one = run(1);
        for threads in [2, 3, 7] {
            assert!(run(threads) == one, "{threads} threads");
        }
    }

    /// Winograd against the path it replaces, interleaved in one process (this machine's
    /// speed drifts between runs): `ANNT_UNIT=f32|fma|AVX RAYON_NUM_THREADS=2 cargo test
    /// --release --lib winograd_layer_times -- --ignored --nocapture`. Fastest of
    /// `ANNT_REPS` (default 10), ms.
    #[test]
    #[ignore]
    fn winograd_layer_times() {
        use super::super::bf16::{Dot, Fma};
        use super::super::cpu::{conv_backward, conv_forward};
        use std::sync::atomic::Ordering;
        let reps: usize = std::env::var("ANNT_REPS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(10);
        let unit = std::env::var("ANNT_UNIT").unwrap_or_default();
        let mut units = vec![("f32", Products::Native)];
        units.extend(Fma::usable().map(|f| ("fma", Products::F32(f))));
        units.extend(
            Dot::usable()
                .into_iter()
                .map(|d| (d.unit().label(), Products::Bf16(d))),
        );
        for (n, c, k, side) in [
            (32, 64, 64, 32),
            (32, 128, 128, 16),
            (32, 256, 256, 8),
            (64, 64, 64, 8),
        ] {
            let g = Window {
                n,
                c,
                h: side,
                w: side,
                kh: 3,
                kw: 3,
                stride: 1,
                pad: 1,
            };
            let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
            let x = f(values(n * c * side * side, 3));
            let w = f(values(k * c * 9, 4));
            let dy = f(values(n * k * side * side, 5));
            for (name, p) in &units {
                if !name.starts_with(unit.as_str()) {
                    continue;
                }
                let mut best = [[f64::INFINITY; 2]; 2];
                // Winograd called directly (so the bf16 unit, which `chosen` keeps off this
                // path, can be timed too) against the dispatch with this path off.
                OFF_IN_TEST.store(true, Ordering::Relaxed);
                for _ in 0..=reps {
                    for (i, winograd) in [true, false].into_iter().enumerate() {
                        let t = std::time::Instant::now();
                        if winograd {
                            let mut out = vec![0f32; n * k * side * side];
                            forward(&x, &w, &g, k, *p, &mut out);
                            std::hint::black_box(out);
                        } else {
                            std::hint::black_box(conv_forward(&x, &w, &g, k, *p));
                        }
                        let fwd = t.elapsed().as_secs_f64() * 1e3;
                        let t = std::time::Instant::now();
                        if winograd {
                            let (mut dx, mut dw) = (vec![0f32; x.len()], vec![0f32; w.len()]);
                            backward(
                                &x,
                                &w,
                                &dy,
                                &g,
                                k,
                                *p,
                                Grads {
                                    dx: Some(&mut dx),
                                    dw: &mut dw,
                                },
                            );
                            std::hint::black_box((dx, dw));
                        } else {
                            std::hint::black_box(conv_backward(&x, &w, &dy, &g, k, *p));
                        }
                        let bwd = t.elapsed().as_secs_f64() * 1e3;
                        best[i][0] = best[i][0].min(fwd);
                        best[i][1] = best[i][1].min(bwd);
                    }
                }
                OFF_IN_TEST.store(false, Ordering::Relaxed);
                println!(
                    "n{n} {c}→{k} {side}² {name}: winograd fwd {:.2} bwd {:.2}  before fwd {:.2} bwd {:.2}  ratio fwd {:.2} bwd {:.2}",
                    best[0][0],
                    best[0][1],
                    best[1][0],
                    best[1][1],
                    best[1][0] / best[0][0],
                    best[1][1] / best[0][1]
                );
            }
        }
    }
}
