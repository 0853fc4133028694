//! bf16 matrix products on the CPU's bf16 dot-product units, with f32 accumulation: what
//! `--amp bf16` computes its convolutions with on a CPU that has them.
//!
//! Two units, detected at run time ([`Dot::detect`]):
//! - **AMX** (`amx_bf16`, Sapphire Rapids and later): `tdpbf16ps` adds a 16×32 · 32×16 bf16
//!   product into a 16×16 f32 tile per instruction — 16× the multiply-adds of an AVX-512 f32
//!   FMA per cycle. Linux hands out the tile state only on request (`arch_prctl`), so AMX is
//!   used only when that request succeeds.
//! - **AVX512-BF16** (`avx512_bf16`, Cooper Lake, Zen 4 and later): `vdpbf16ps` adds pairs of
//!   bf16 products into 16 f32 lanes — twice an f32 FMA's multiply-adds.
//!
//! Both read the same packed operands: `A` (m × k) in blocks of 16 rows × 32 bf16, `B` (k × n)
//! in blocks of 16 k-pairs × 16 columns × 2 (the "VNNI" order the instructions read), every
//! block 512 values (1 KiB), zero-padded at the edges. Inputs are rounded to bf16 to nearest
//! even while packing, as `vcvtne2ps2bf16` does (denormals flushed to zero, like the
//! instructions); products accumulate in f32 and the result is f32 — the arithmetic of a GPU
//! tensor core on bf16 inputs. [`reference()`] computes the same rounding with f64
//! accumulation; the tests hold both units to it.
//!
//! The module also holds the f32 patch product ([`Fma`], [`PatchWeight::f32`]): an f32
//! convolution's products read their patches with the same geometry, masks and kernel shape
//! as the bf16 pair product, FMAs in place of `vdpbf16ps`, so both live beside the patch
//! reader they share.
//!
//! This module, `gemm.rs`, `fill.rs` and the CUDA modules are the only places `unsafe` is allowed in
//! annt's kernels: every block says why it is sound. A [`Dot`] can only be made by
//! [`Dot::detect`] / [`Dot::usable`], which check the CPU (and the OS, for AMX) first, so the
//! `#[target_feature]` functions below never run on a CPU without those instructions.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::sync::OnceLock;

use super::gemm::MatRef;

/// The bf16 dot-product instructions a product runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Intel AMX tiles (`tdpbf16ps`).
    Amx,
    /// AVX-512 BF16 (`vdpbf16ps`).
    Avx512Bf16,
}

impl Unit {
    /// How reports name it.
    pub fn label(self) -> &'static str {
        match self {
            Unit::Amx => "AMX (tdpbf16ps)",
            Unit::Avx512Bf16 => "AVX512-BF16 (vdpbf16ps)",
        }
    }
}

/// Overrides the unit annt picks: `amx`, `avx512-bf16` or `off` (the numerics-only path).
/// For measuring one unit against the other on a CPU that has both; a unit the CPU lacks is
/// not used whatever this says.
pub const UNIT_ENV: &str = "ANNT_CPU_BF16";

/// Proof that this CPU (and OS) can run a unit: only [`Dot::detect`] and [`Dot::usable`]
/// make one, after checking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dot {
    unit: Unit,
}

impl Dot {
    /// The best unit this machine offers (AMX before AVX512-BF16), or the one [`UNIT_ENV`]
    /// names; `None` when there is none or the variable says `off`. Probed once per process.
    pub fn detect() -> Option<Dot> {
        static CHOSEN: OnceLock<Option<Dot>> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let wish = std::env::var(UNIT_ENV).ok();
            let usable = Dot::usable();
            choose(wish.as_deref(), &usable).unwrap_or_else(|message| {
                eprintln!("annt: {message}; using the best unit this CPU has");
                usable.first().copied()
            })
        })
    }

    /// Every unit this machine can run, best first (tests run each of them).
    pub fn usable() -> Vec<Dot> {
        let mut units = Vec::new();
        if probe::avx512_bf16() {
            if probe::amx() {
                units.push(Dot { unit: Unit::Amx });
            }
            units.push(Dot {
                unit: Unit::Avx512Bf16,
            });
        }
        units
    }

    pub fn unit(self) -> Unit {
        self.unit
    }
}

/// The unit [`UNIT_ENV`]'s value `wish` asks for among the `usable` ones (best first): unset
/// means the best, `off` none, a unit the CPU lacks none; anything else is an error.
fn choose(wish: Option<&str>, usable: &[Dot]) -> Result<Option<Dot>, String> {
    let find = |unit| usable.iter().copied().find(|d| d.unit == unit);
    match wish.map(str::trim) {
        None | Some("") => Ok(usable.first().copied()),
        Some("off") => Ok(None),
        Some("amx") => Ok(find(Unit::Amx)),
        Some("avx512-bf16") => Ok(find(Unit::Avx512Bf16)),
        Some(other) => Err(format!(
            "{UNIT_ENV}={other:?} is not one of amx, avx512-bf16, off"
        )),
    }
}

/// Overrides how f32 convolutions multiply: `gemm` (unfolded patches through the gemm crate)
/// or `fma` (the AVX-512F patch product, the default where the CPU has AVX-512F). For
/// measuring one against the other; `fma` on a CPU without AVX-512F is gemm.
pub const F32_ENV: &str = "ANNT_CPU_F32";

/// Proof that this CPU has AVX-512F, for the f32 patch product ([`PatchWeight::f32`]): an
/// f32 convolution's forward and input-gradient products read straight from the images with
/// masked loads, as the bf16 pair product does, instead of unfolding the patches (im2col)
/// and having gemm pack them — on resnet8-tiny's thin layers the unfolding and packing cost
/// as much as the arithmetic. Only [`Fma::detect`] and [`Fma::usable`] make one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fma(());

impl Fma {
    /// The unit, unless the CPU lacks AVX-512F or [`F32_ENV`] says `gemm`. Probed once per
    /// process.
    pub fn detect() -> Option<Fma> {
        static CHOSEN: OnceLock<Option<Fma>> = OnceLock::new();
        *CHOSEN.get_or_init(
            || match std::env::var(F32_ENV).ok().as_deref().map(str::trim) {
                None | Some("") | Some("fma") => Fma::usable(),
                Some("gemm") => None,
                Some(other) => {
                    eprintln!("annt: {F32_ENV}={other:?} is not one of fma, gemm; using fma");
                    Fma::usable()
                }
            },
        )
    }

    /// The unit when the CPU has it, whatever [`F32_ENV`] says (tests run it).
    pub fn usable() -> Option<Fma> {
        probe::avx512f().then_some(Fma(()))
    }
}

#[cfg(target_arch = "x86_64")]
mod probe {
    /// AVX-512F: the f32 patch product's FMAs and masked loads.
    pub fn avx512f() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    /// AVX-512 F/BW (the packing) and BF16 (the conversion and `vdpbf16ps`).
    pub fn avx512_bf16() -> bool {
        avx512f()
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }

    /// AMX-TILE and AMX-BF16 in CPUID leaf 7, and Linux's permission to use the tile data.
    /// (`is_x86_feature_detected!("amx-bf16")` is not stable Rust yet.)
    #[cfg(target_os = "linux")]
    pub fn amx() -> bool {
        static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *GRANTED.get_or_init(|| {
            let leaf = std::arch::x86_64::__cpuid_count(7, 0);
            let (tile, bf16) = ((leaf.edx >> 24) & 1 == 1, (leaf.edx >> 22) & 1 == 1);
            if !(tile && bf16) {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) only asks the kernel to let
            // this process's threads use the AMX tile registers (it enlarges their saved
            // state); it reads and writes no memory of ours. Failure (an old kernel, a
            // sandbox) returns -1 and AMX is simply not used.
            let granted = unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            };
            granted == 0
        })
    }

    /// Other systems hand out the tile state differently; annt does not ask there.
    #[cfg(not(target_os = "linux"))]
    pub fn amx() -> bool {
        false
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod probe {
    pub fn avx512f() -> bool {
        false
    }
    pub fn avx512_bf16() -> bool {
        false
    }
    pub fn amx() -> bool {
        false
    }
}

/// `x` rounded to bf16 (nearest, ties to even), as `vcvtne2ps2bf16` does: denormals become
/// zero of the same sign, NaN stays a (quiet) NaN.
pub fn round(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    if x.is_subnormal() {
        return ((bits >> 16) & 0x8000) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// A bf16 value as f32 (exact).
pub fn widen(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// `a · b` on bf16-rounded inputs, accumulated in f64: what the units compute, up to f32
/// accumulation order.
pub fn reference(a: MatRef<'_, f32>, b: MatRef<'_, f32>) -> Vec<f32> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "reference: inner dimensions {k} and {}", b.rows);
    let at = |i: usize, p: usize| a.data[i * a.row_stride + p * a.col_stride];
    let bt = |p: usize, j: usize| b.data[p * b.row_stride + j * b.col_stride];
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|p| f64::from(widen(round(at(i, p)))) * f64::from(widen(round(bt(p, j)))))
                .sum();
            out[i * n + j] = s as f32;
        }
    }
    out
}

const TILE: usize = 512;

/// k-blocks (of 32) per pass of the AVX-512 kernel over C: 8 KiB of each row block of A.
const KC: usize = 8;

/// Blocks of 16 rows (A) or 16 columns (B) and of 32 along k.
fn blocks(outer: usize, k: usize) -> (usize, usize) {
    (outer.div_ceil(16), k.div_ceil(32))
}

/// The left operand packed once, for products that reuse it (a convolution's weight, shared
/// by every image of the batch).
#[derive(Clone, Debug)]
pub struct PackedA {
    data: Vec<u16>,
    m: usize,
    k: usize,
}

impl PackedA {
    /// `a` packed, in parallel over stripes of 64 rows: a layer packs its weight (up to
    /// 512 × 4608 for ResNet-18) once per call on the calling thread, where a serial pack
    /// left the pool's other threads idle.
    pub fn new(a: MatRef<'_, f32>, dot: Dot) -> Self {
        assert!(a.in_bounds(), "bf16 pack: a view leaves its slice");
        let data = in_stripes(blocks(a.rows, a.cols), |i0, len, out| {
            let rows = MatRef {
                data: &a.data[(i0 * a.row_stride).min(a.data.len())..],
                rows: len.min(a.rows - i0),
                ..a
            };
            pack_a_into(rows, out, dot);
        });
        Self {
            data,
            m: a.rows,
            k: a.cols,
        }
    }
}

/// Packed blocks of `outer.div_ceil(16)` rows (A) or columns (B) by `kb` blocks along k,
/// filled in parallel over stripes of 64 rows or columns: `pack(first, count, out)` packs
/// those `count` of them into `out`, their blocks in the whole matrix's layout.
fn in_stripes(
    (ob, kb): (usize, usize),
    pack: impl Fn(usize, usize, &mut [u16]) + Sync,
) -> Vec<u16> {
    use rayon::prelude::*;
    const STRIPE: usize = 4;
    let mut data = vec![0u16; ob * kb * TILE];
    data.par_chunks_mut((STRIPE * kb * TILE).max(1))
        .enumerate()
        .for_each(|(stripe, out)| pack(stripe * STRIPE * 16, STRIPE * 16, out));
    data
}

/// The left operand of a patch product ([`matmul_patches`]): an `m × (C·T)` matrix whose
/// columns are `(channel, tap)` of the patches' `C` channels and `T` taps, packed for the
/// unit that runs the product.
///
/// On AVX512-BF16 it is packed by channel pairs (`PackedPairs`): the product then reads
/// its right operand straight from the images converted once to pair-interleaved bf16
/// (`vdpbf16ps` multiplies pairs, and a pair of channels at one position is one 32-bit
/// lane), with no packing of the patch matrix at all. Packing it — nine shifted reads and
/// conversions of every input element for a 3 × 3 layer, each serving only `m` products —
/// was the largest cost of the thin layers (12.9 % of a resnet8-tiny bf16 step against the
/// products' own 16.7 %). AMX's tiles read B rows at one fixed stride, which shifted taps do
/// not have, so AMX keeps the packed blocks.
#[derive(Clone, Debug)]
pub struct PatchWeight {
    layout: PatchLayout,
}

/// Each layout with the proof that this CPU runs the kernel that reads it.
#[derive(Clone, Debug)]
enum PatchLayout {
    Blocks(PackedA, Dot),
    Pairs(PackedPairs, Dot),
    Taps(PackedTaps, Fma),
}

impl PatchWeight {
    /// `a` (`m × (C·taps)`, columns `(channel, tap)`) packed for `dot`'s unit.
    pub fn new(a: MatRef<'_, f32>, taps: usize, dot: Dot) -> Self {
        let layout = match dot.unit {
            Unit::Avx512Bf16 => PatchLayout::Pairs(PackedPairs::new(a, taps, dot), dot),
            Unit::Amx => PatchLayout::Blocks(PackedA::new(a, dot), dot),
        };
        Self { layout }
    }

    /// `a` (`m × (C·taps)`, columns `(channel, tap)`) kept in f32 for the FMA patch
    /// product: an f32 layer's forward and input-gradient products.
    pub fn f32(a: MatRef<'_, f32>, taps: usize, fma: Fma) -> Self {
        Self {
            layout: PatchLayout::Taps(PackedTaps::new(a, taps), fma),
        }
    }

    fn k(&self) -> usize {
        match &self.layout {
            PatchLayout::Blocks(a, _) => a.k,
            PatchLayout::Pairs(a, _) => a.channels * a.taps,
            PatchLayout::Taps(a, _) => a.channels * a.taps,
        }
    }
}

/// The channels of a patch product's left operand `a` (columns `(channel, tap)`), after
/// checking that the view stays in its slice and its columns are whole channels.
fn channels_of(a: MatRef<'_, f32>, taps: usize) -> usize {
    assert!(a.in_bounds(), "patch weight pack: a view leaves its slice");
    assert!(
        taps > 0 && a.cols.is_multiple_of(taps),
        "patch weight pack: {} columns are not whole channels of {taps} taps",
        a.cols
    );
    a.cols / taps
}

/// A patch product's left operand by channel pairs: for each block of 16 rows, for each
/// pair `q = p·T + t` (channel pair `p`, tap `t`), the 16 rows' `(a[·][2p·T + t],
/// a[·][(2p+1)·T + t])` rounded to bf16, one 32-bit word per row (low half the even
/// channel), zero past the last row or an odd last channel. [`kernels::pair_dot2`]
/// broadcasts one row's word against 16 columns of pair-interleaved patches.
#[derive(Clone, Debug)]
struct PackedPairs {
    data: Vec<u32>,
    m: usize,
    channels: usize,
    taps: usize,
}

impl PackedPairs {
    /// `a` packed by channel pairs for `dot`'s AVX512-BF16 unit: with the vector kernel
    /// where `a`'s columns are contiguous (every weight annt packs), else value by value.
    fn new(a: MatRef<'_, f32>, taps: usize, dot: Dot) -> Self {
        Self::packed_with(a, taps, dot, a.col_stride == 1)
    }

    /// [`Self::new`] with the vector kernel or ([`pack_pairs_scalar`]) without it.
    fn packed_with(a: MatRef<'_, f32>, taps: usize, dot: Dot, vector: bool) -> Self {
        use rayon::prelude::*;
        let channels = channels_of(a, taps);
        let pairs = channels.div_ceil(2) * taps;
        let mut data = vec![0u32; a.rows.div_ceil(16) * pairs * 16];
        // In parallel over blocks of 16 rows, as `PackedA::new`: the weight is packed on the
        // calling thread once per call.
        data.par_chunks_mut((pairs * 16).max(1))
            .enumerate()
            .for_each(|(bi, block)| {
                if vector {
                    kernels::pack_pairs(a, (bi, channels, taps), block, dot);
                } else {
                    pack_pairs_scalar(a, (bi, channels, taps), block);
                }
            });
        Self {
            data,
            m: a.rows,
            channels,
            taps,
        }
    }
}

/// Block `bi` of [`PackedPairs`] value by value: the definition `kernels::pack_pairs` is
/// tested against, and the packing of a view with strided columns.
fn pack_pairs_scalar(
    a: MatRef<'_, f32>,
    (bi, channels, taps): (usize, usize, usize),
    block: &mut [u32],
) {
    let at = |i: usize, ch: usize, t: usize| {
        if ch < channels {
            u32::from(round(
                a.data[i * a.row_stride + (ch * taps + t) * a.col_stride],
            ))
        } else {
            0
        }
    };
    for r in 0..16.min(a.rows - bi * 16) {
        let i = bi * 16 + r;
        for q in 0..channels.div_ceil(2) * taps {
            let (p, t) = (q / taps, q % taps);
            block[q * 16 + r] = at(i, 2 * p, t) | (at(i, 2 * p + 1, t) << 16);
        }
    }
}

/// An f32 patch product's left operand: for each block of 16 rows, for each column `q =
/// ch·T + t` of `a` (channel `ch`, tap `t`: `a`'s own order), the 16 rows' values, zero past
/// the last row. [`kernels::tap_dot`] broadcasts one row's value against 16 columns of the
/// patches, read straight from the images: an f32 product needs no interleaving either.
#[derive(Clone, Debug)]
struct PackedTaps {
    data: Vec<f32>,
    m: usize,
    channels: usize,
    taps: usize,
}

impl PackedTaps {
    fn new(a: MatRef<'_, f32>, taps: usize) -> Self {
        use rayon::prelude::*;
        let channels = channels_of(a, taps);
        let k = a.cols;
        let mut data = vec![0f32; a.rows.div_ceil(16) * k * 16];
        // In parallel over blocks of 16 rows, as `PackedPairs::new`.
        data.par_chunks_mut((k * 16).max(1))
            .enumerate()
            .for_each(|(bi, block)| {
                for r in 0..16.min(a.rows - bi * 16) {
                    let row = &a.data[(bi * 16 + r) * a.row_stride..];
                    for q in 0..k {
                        block[q * 16 + r] = row[q * a.col_stride];
                    }
                }
            });
        Self {
            data,
            m: a.rows,
            channels,
            taps,
        }
    }
}

thread_local! {
    /// Per-thread packing buffers, reused from call to call (a product per image would
    /// otherwise allocate and fault in a fresh buffer each time).
    static SCRATCH_A: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    static SCRATCH_B: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// `dst (m × n, row-major) = a · b`, or `+=` with `accumulate`, in bf16 with f32
/// accumulation; single-threaded (callers parallelise). Same contract as `gemm::matmul`.
pub fn matmul(dst: &mut [f32], a: MatRef<'_, f32>, b: MatRef<'_, f32>, accumulate: bool, dot: Dot) {
    assert!(a.in_bounds(), "bf16 matmul: a view leaves its slice");
    SCRATCH_A.with(|scratch| {
        let mut packed = scratch.borrow_mut();
        pack_a(a, &mut packed, dot);
        product(dst, &packed, a.rows, a.cols, b, accumulate, dot);
    });
}

/// [`matmul_packed`] into an `m × n` block of a wider matrix: rows `ld` apart in `dst`
/// (a run of columns of a position-major activation, `taps`).
pub fn matmul_packed_into(
    dst: &mut [f32],
    ld: usize,
    a: &PackedA,
    b: MatRef<'_, f32>,
    accumulate: bool,
    dot: Dot,
) {
    assert_eq!(
        a.k, b.rows,
        "bf16 matmul: inner dimensions {} and {}",
        a.k, b.rows
    );
    assert!(b.in_bounds(), "bf16 matmul: a view leaves its slice");
    product_into(
        dst,
        ld,
        &a.data,
        (a.m, a.k, b.cols),
        accumulate,
        dot,
        |pb| pack_b(b, pb, dot),
    );
}

/// The right operand packed once, for products that share it: a fully connected layer's
/// weight (or its transpose) against each block of rows of its input. Packing it again
/// for every 128-row block cost about as much as the block's product on ViT-Ti/4's
/// layers (`k·n` conversions against `128·k·n` multiply-adds at 32 per instruction).
#[derive(Clone, Debug)]
pub struct PackedB {
    data: Vec<u16>,
    k: usize,
    n: usize,
}

impl PackedB {
    /// `b` (`k × n`) packed for `dot`'s unit.
    pub fn new(b: MatRef<'_, f32>, dot: Dot) -> Self {
        assert!(b.in_bounds(), "bf16 pack: a view leaves its slice");
        let mut data = Vec::new();
        pack_b(b, &mut data, dot);
        Self {
            data,
            k: b.rows,
            n: b.cols,
        }
    }

    /// [`PackedB::new`] in parallel over stripes of 64 columns (the same blocks: a stripe's
    /// blocks are the whole matrix's blocks of its columns). A convolution's activation,
    /// packed once for every product that reads a run of its columns (`taps`).
    pub fn new_par(b: MatRef<'_, f32>, dot: Dot) -> Self {
        assert!(b.in_bounds(), "bf16 pack: a view leaves its slice");
        let data = in_stripes(blocks(b.cols, b.rows), |j0, len, out| {
            let cols = MatRef {
                data: &b.data[(j0 * b.col_stride).min(b.data.len())..],
                cols: len.min(b.cols - j0),
                ..b
            };
            pack_b_into(cols, out, dot);
        });
        Self {
            data,
            k: b.rows,
            n: b.cols,
        }
    }
}

/// `dst (a.m × cols.len(), rows ld apart) = a · b[:, cols]` (or `+=`), both operands packed:
/// `cols` starts on a block of 16 columns and ends on one or at `b`'s last column, so its
/// blocks are a run of `b`'s and nothing is packed again.
pub fn matmul_packed_cols_into(
    dst: &mut [f32],
    ld: usize,
    a: &PackedA,
    b: &PackedB,
    cols: std::ops::Range<usize>,
    accumulate: bool,
    dot: Dot,
) {
    assert_eq!(
        a.k, b.k,
        "bf16 matmul: inner dimensions {} and {}",
        a.k, b.k
    );
    assert!(
        cols.start.is_multiple_of(16)
            && cols.start <= cols.end
            && (cols.end.is_multiple_of(16) || cols.end == b.n)
            && cols.end <= b.n,
        "bf16 matmul: columns {cols:?} of {} are not whole blocks",
        b.n
    );
    let kb = a.k.div_ceil(32);
    let blocks = cols.start / 16 * kb * TILE..cols.end.div_ceil(16) * kb * TILE;
    let n = cols.len();
    run_packed(
        dst,
        ld,
        &a.data,
        &b.data[blocks],
        (a.m, a.k, n),
        accumulate,
        dot,
    );
}

/// [`matmul`] with the right operand already packed (the left packed here, per call).
pub fn matmul_b_packed(
    dst: &mut [f32],
    a: MatRef<'_, f32>,
    b: &PackedB,
    accumulate: bool,
    dot: Dot,
) {
    assert_eq!(
        a.cols, b.k,
        "bf16 matmul: inner dimensions {} and {}",
        a.cols, b.k
    );
    assert!(a.in_bounds(), "bf16 matmul: a view leaves its slice");
    SCRATCH_A.with(|scratch| {
        let mut pa = scratch.borrow_mut();
        pack_a(a, &mut pa, dot);
        run_packed(dst, b.n, &pa, &b.data, (a.rows, b.k, b.n), accumulate, dot);
    });
}

/// [`matmul`] with the left operand already packed.
pub fn matmul_packed(dst: &mut [f32], a: &PackedA, b: MatRef<'_, f32>, accumulate: bool, dot: Dot) {
    product(dst, &a.data, a.m, a.k, b, accumulate, dot);
}

fn product(
    dst: &mut [f32],
    pa: &[u16],
    m: usize,
    k: usize,
    b: MatRef<'_, f32>,
    accumulate: bool,
    dot: Dot,
) {
    assert_eq!(
        b.rows, k,
        "bf16 matmul: inner dimensions {k} and {}",
        b.rows
    );
    assert!(b.in_bounds(), "bf16 matmul: a view leaves its slice");
    product_with(dst, pa, (m, k, b.cols), accumulate, dot, |pb| {
        pack_b(b, pb, dot)
    });
}

/// Whether an `m × n` product has anything to write, after checking that `dst` holds it.
fn has_work(dst: &[f32], m: usize, n: usize) -> bool {
    has_work_ld(dst, (m, n), n)
}

/// [`has_work`] for rows `ld` apart: `dst` holds `(m − 1)·ld + n` values.
fn has_work_ld(dst: &[f32], (m, n): (usize, usize), ld: usize) -> bool {
    assert!(
        ld >= n,
        "bf16 matmul: rows {ld} apart hold fewer than {n} columns"
    );
    assert!(
        m == 0 || dst.len() >= (m - 1) * ld + n,
        "bf16 matmul: destination holds {} < {m}×{n} with rows {ld} apart",
        dst.len()
    );
    m > 0 && n > 0
}

/// [`has_work`] for a patch product whose weight has `m` rows of `channels × taps` columns,
/// after checking that they are the patches' channels and taps.
fn patch_work(dst: &[f32], (m, channels, taps): (usize, usize, usize), b: &Patches<'_>) -> bool {
    assert_eq!(
        (b.c, b.geometry.taps.len()),
        (channels, taps),
        "patch matmul: the weight's channels and taps are not the patches'"
    );
    has_work(dst, m, b.cols())
}

/// `dst (m × n) = A · B` (or `+=`) with A packed in `pa` and B packed by `pack_b` into the
/// thread's scratch, which it must fill with `n.div_ceil(16) · k.div_ceil(32)` blocks.
fn product_with(
    dst: &mut [f32],
    pa: &[u16],
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    dot: Dot,
    pack_b: impl FnOnce(&mut Vec<u16>),
) {
    product_into(dst, n, pa, (m, k, n), accumulate, dot, pack_b)
}

/// [`product_with`] into an `m × n` matrix whose rows are `ld` apart in `dst`.
fn product_into(
    dst: &mut [f32],
    ld: usize,
    pa: &[u16],
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    dot: Dot,
    pack_b: impl FnOnce(&mut Vec<u16>),
) {
    if !has_work_ld(dst, (m, n), ld) {
        return;
    }
    SCRATCH_B.with(|scratch| {
        let mut pb = scratch.borrow_mut();
        pack_b(&mut pb);
        run_packed(dst, ld, pa, &pb, (m, k, n), accumulate, dot);
    });
}

/// `dst (m × n, rows ld apart) = A · B` (or `+=`) with both operands packed.
fn run_packed(
    dst: &mut [f32],
    ld: usize,
    pa: &[u16],
    pb: &[u16],
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    dot: Dot,
) {
    if !has_work_ld(dst, (m, n), ld) {
        return;
    }
    let (mb, kb) = blocks(m, k);
    let nb = n.div_ceil(16);
    assert_eq!(
        pa.len(),
        mb * kb * TILE,
        "bf16 matmul: packed A has the wrong size"
    );
    assert_eq!(
        pb.len(),
        nb * kb * TILE,
        "bf16 matmul: packed B has the wrong size"
    );
    if kb == 0 {
        if !accumulate {
            for row in 0..m {
                dst[row * ld..][..n].iter_mut().for_each(|v| *v = 0.0);
            }
        }
        return;
    }
    let out = Out {
        dst,
        m,
        n,
        ld,
        accumulate,
    };
    kernels::run(dot.unit, pa, pb, mb, nb, kb, out);
}

/// `dst = a · patches` (or `+=`): a convolution's forward product read straight from its
/// images (or their phase planes), or — with the flipped, transposed weight and the output
/// gradient's images — a stride-1 layer's input gradient.
pub fn matmul_patches(dst: &mut [f32], a: &PatchWeight, b: &Patches<'_>, accumulate: bool) {
    assert_eq!(
        b.rows(),
        a.k(),
        "bf16 matmul: inner dimensions {} and {}",
        a.k(),
        b.rows()
    );
    match &a.layout {
        PatchLayout::Blocks(a, dot) => {
            let dot = *dot;
            product_with(dst, &a.data, (a.m, a.k, b.cols()), accumulate, dot, |pb| {
                let (nb, kb) = blocks(b.cols(), b.rows());
                pb.resize(nb * kb * TILE, 0);
                kernels::pack_b_patches(b, pb, nb, kb, dot);
            })
        }
        PatchLayout::Pairs(a, dot) => {
            let dot = *dot;
            let (m, n) = (a.m, b.cols());
            if !patch_work(dst, (m, a.channels, a.taps), b) {
                return;
            }
            SCRATCH_B.with(|scratch| {
                let mut pairs = scratch.borrow_mut();
                pairs.resize(b.images * b.c.div_ceil(2) * b.geometry.plane_len() * 2, 0);
                kernels::interleave(b, &mut pairs, dot);
                let out = Out {
                    dst,
                    m,
                    n,
                    ld: n,
                    accumulate,
                };
                kernels::pairs_product(a, b, &pairs, out, dot);
            });
        }
        PatchLayout::Taps(a, fma) => {
            let (m, n) = (a.m, b.cols());
            if !patch_work(dst, (m, a.channels, a.taps), b) {
                return;
            }
            let out = Out {
                dst,
                m,
                n,
                ld: n,
                accumulate,
            };
            kernels::taps_product(a, b, out, *fma);
        }
    }
}

/// `dst = patches · b` (or `+=`): a convolution's weight-gradient product (transposed: the
/// positions are the reduction), the patches packed straight from the images.
pub fn matmul_patches_a(
    dst: &mut [f32],
    a: &Patches<'_>,
    b: MatRef<'_, f32>,
    accumulate: bool,
    dot: Dot,
) {
    SCRATCH_A.with(|scratch| {
        let mut packed = scratch.borrow_mut();
        let (mb, kb) = blocks(a.rows(), a.cols());
        packed.resize(mb * kb * TILE, 0);
        kernels::pack_a_patches(a, &mut packed, mb, kb, dot);
        product(dst, &packed, a.rows(), a.cols(), b, accumulate, dot);
    });
}

/// Whether [`weight_grad_3x3`] takes a layer: a 3 × 3 window with padding 1 at stride 1 or
/// 2 over `h × w` planes whose output rows have an even width (a stride divides both
/// sides), and output channels in whole blocks of 16.
pub fn weight_grad_3x3_applies(
    (kh, kw): (usize, usize),
    (stride, pad): (usize, usize),
    (h, w): (usize, usize),
    c_out: usize,
) -> bool {
    (kh, kw, pad) == (3, 3, 1)
        && matches!(stride, 1 | 2)
        && h.is_multiple_of(stride)
        && w.is_multiple_of(2 * stride)
        && h > 0
        && w > 0
        && c_out.is_multiple_of(16)
}

thread_local! {
    /// [`weight_grad_3x3`]'s bf16 images with their zero border, and its packed `dy`.
    static SCRATCH_PAD: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// The weight gradient of a 3 × 3, padding-1 convolution at stride 1 or 2
/// ([`weight_grad_3x3_applies`]) over `imgs` images, as `dst` (`c·9 × c_out`, row `ch·9 + t`
/// for tap `t = 3·dy + dx`; the transpose of the weight's layout) `= Σ_p patches · dyᵀ`, or
/// `+=` with `accumulate`, on the bf16 unit with f32 sums. `x` holds the images (`c × h × w`
/// each) and `dy` is their output gradients side by side (`c_out × (imgs·l)`, row-major, `l`
/// the output plane's `h/s × w/s` positions).
///
/// The patch matrix is never formed: the images are rounded to bf16 once, each plane (at
/// stride 2 each of its four phase planes, rows `2y + py`, columns `2x + px`) with a
/// one-element zero border, and every tap's operand is read straight from those planes at
/// the tap's shift, two horizontally adjacent positions (a `vdpbf16ps` pair) per 32-bit
/// broadcast — the border gives the zeros where the window overhangs, so nothing is masked.
/// The packed patch matrix this replaces was 9 × the images in bf16, written and read again
/// for every product: with 16 channels its packing took as long as the product
/// (`pack_a_patches`, 7.6 % of a resnet8-tiny bf16 step).
pub fn weight_grad_3x3(
    dst: &mut [f32],
    x: &[f32],
    dy: &[f32],
    (imgs, c, h, w, c_out): (usize, usize, usize, usize, usize),
    stride: usize,
    accumulate: bool,
    dot: Dot,
) {
    assert!(weight_grad_3x3_applies((3, 3), (stride, 1), (h, w), c_out));
    let l = (h / stride) * (w / stride);
    assert!(x.len() >= imgs * c * h * w && dy.len() >= c_out * imgs * l);
    assert!(dst.len() >= c * 9 * c_out);
    let wide = imgs * l;
    let dy_t = MatRef::row_major(&dy[..c_out * wide], c_out, wide).t();
    let (_, kb) = blocks(c_out, wide);
    let pad = Padded {
        imgs,
        c,
        h: h / stride,
        w: w / stride,
        stride,
    };
    SCRATCH_PAD.with(|planes| {
        SCRATCH_B.with(|packed| {
            let (mut planes, mut packed) = (planes.borrow_mut(), packed.borrow_mut());
            planes.resize(pad.len(), 0);
            pad.fill(x, &mut planes, dot);
            pack_b(dy_t, &mut packed, dot);
            kernels::weight_grad_3x3(dst, &planes, &pad, &packed, (c_out, kb), accumulate, dot);
        })
    });
}

/// The layout of [`weight_grad_3x3`]'s bf16 planes: each `h × w` plane (the output's size:
/// the image itself at stride 1, each of its `stride²` phase planes at stride 2, phase
/// `(py, px)` at index `2·py + px`) inside a zero border one element wide, `(h + 2) × (w + 2)`;
/// then channels, then images.
#[derive(Clone, Copy, Debug)]
struct Padded {
    imgs: usize,
    c: usize,
    h: usize,
    w: usize,
    stride: usize,
}

impl Padded {
    /// Elements per channel: its planes.
    fn channel(&self) -> usize {
        self.stride * self.stride * self.plane()
    }

    /// Elements per padded row.
    fn pw(&self) -> usize {
        self.w + 2
    }

    fn plane(&self) -> usize {
        (self.h + 2) * self.pw()
    }

    fn len(&self) -> usize {
        self.imgs * self.c * self.channel()
    }

    /// `x`'s images rounded to bf16 into their bordered planes in `out` (every element of
    /// `out`'s first `len()` written: the borders with zeros).
    fn fill(&self, x: &[f32], out: &mut [u16], dot: Dot) {
        let (s, pw, plane) = (self.stride, self.pw(), self.plane());
        let (in_w, in_plane) = (self.w * s, self.h * self.w * s * s);
        for (src, dst) in x
            .chunks_exact(in_plane)
            .zip(out.chunks_exact_mut(self.channel()))
            .take(self.imgs * self.c)
        {
            for planes in dst.chunks_exact_mut(plane) {
                planes[..pw].fill(0);
                planes[(self.h + 1) * pw..].fill(0);
                for line in planes[pw..(self.h + 1) * pw].chunks_exact_mut(pw) {
                    line[0] = 0;
                    line[pw - 1] = 0;
                }
            }
            for y in 0..self.h {
                let at = (y + 1) * pw + 1;
                if s == 1 {
                    let row = &src[y * in_w..][..in_w];
                    kernels::round_row(row, &mut dst[at..][..self.w], dot);
                    continue;
                }
                // Input rows 2y and 2y + 1: phases (py, 0) and (py, 1) from each.
                for py in 0..2 {
                    let row = &src[(2 * y + py) * in_w..][..in_w];
                    let (first, second) = dst.split_at_mut((2 * py + 1) * plane);
                    let even = &mut first[2 * py * plane + at..][..self.w];
                    let odd = &mut second[at..][..self.w];
                    kernels::round_row_phases(row, even, odd, dot);
                }
            }
        }
    }
}

/// Where a convolution's patch rows read their planes, for an odd square `k × k` window with
/// padding `(k − 1) / 2` at stride `s` over `H × W` planes with `s` dividing both sides (the
/// output is `H/s × W/s`).
///
/// At stride 1 a tap `(i, j)` reads the plane itself, shifted. At stride `s` it reads every
/// `s`-th element of every `s`-th row, from a phase `(i − pad) mod s, (j − pad) mod s`: split
/// into its `s²` polyphase planes (`split`: each `H/s × W/s`, the output's size), each tap
/// reads one of them shifted by `⌊(i − pad)/s⌋, ⌊(j − pad)/s⌋` output positions — so a strided
/// layer's patches are read like a stride-1 layer's, with no im2col. Only the phases some tap
/// reads are kept (a 1 × 1 stride-2 window reads one: the subsampled plane).
///
/// For each tap: the plane and the shift from output position to plane element and, for
/// each block of 16 positions of an image, the lanes whose window does not overhang the
/// padding. It depends on the geometry alone: a layer computes it once and every product of
/// the call shares it.
#[derive(Clone, Debug)]
pub struct PatchGeometry {
    /// The output plane (and every phase plane).
    h: usize,
    w: usize,
    /// The input plane's width and the stride (1: the input is read as it is).
    in_w: usize,
    stride: usize,
    /// The phases kept, `(row, column)` within an `s × s` cell, in plane order.
    phases: Vec<(usize, usize)>,
    /// Blocks of 16 positions per image.
    blocks: usize,
    /// Per tap `i·k + j`: its phase plane and the shift (rows, columns) from output
    /// position to plane element.
    taps: Vec<(usize, (isize, isize))>,
    /// Per tap, `blocks` lane masks.
    masks: Vec<u16>,
    /// The same masks by block: `blocks` runs of one mask per tap.
    block_masks: Vec<u16>,
    /// Per tap, plane element minus output position, from a channel's first plane.
    offsets: Vec<isize>,
}

impl PatchGeometry {
    /// The geometry of an odd `k × k` window with padding `(k − 1) / 2` and stride `stride`
    /// over `h × w` input planes, or `None` when the packers cannot read it this way: an even
    /// kernel, a stride that does not divide both sides, an output whose `h·w` is not a
    /// multiple of 16 or whose rows are neither a multiple of 16 wide nor divide 16 (a block
    /// must lie inside one output row or cover whole ones, so that its lanes are one
    /// contiguous run of the shifted plane).
    pub fn new((in_h, in_w): (usize, usize), k: usize, stride: usize) -> Option<Self> {
        if k.is_multiple_of(2)
            || stride == 0
            || !in_h.is_multiple_of(stride)
            || !in_w.is_multiple_of(stride)
        {
            return None;
        }
        let (h, w) = (in_h / stride, in_w / stride);
        let l = h * w;
        if l == 0 || !l.is_multiple_of(16) || !(w.is_multiple_of(16) || 16 % w == 0) {
            return None;
        }
        let pad = (k / 2) as isize;
        let s = stride as isize;
        // Tap offset `i − pad` = s·shift + phase, with 0 ≤ phase < s.
        let split = |i: usize| {
            let o = i as isize - pad;
            (o.rem_euclid(s) as usize, o.div_euclid(s))
        };
        let mut phases = Vec::new();
        for i in 0..k {
            for j in 0..k {
                let phase = (split(i).0, split(j).0);
                if !phases.contains(&phase) {
                    phases.push(phase);
                }
            }
        }
        phases.sort_unstable();
        let mut taps = Vec::with_capacity(k * k);
        for i in 0..k {
            for j in 0..k {
                let ((py, dy), (px, dx)) = (split(i), split(j));
                let plane = phases
                    .iter()
                    .position(|&p| p == (py, px))
                    .expect("every tap's phase was collected");
                taps.push((plane, (dy, dx)));
            }
        }
        Some(Self::build((h, w), (in_w, stride), phases, taps))
    }

    /// The geometry of taps `(plane, (dy, dx))` over `h × w` output planes (whose sides the
    /// caller checked), read from `phases` of `in_w`-wide input planes at `stride`.
    fn build(
        (h, w): (usize, usize),
        (in_w, stride): (usize, usize),
        phases: Vec<(usize, usize)>,
        taps: Vec<(usize, (isize, isize))>,
    ) -> Self {
        let blocks = h * w / 16;
        let mut masks = Vec::with_capacity(taps.len() * blocks);
        for &(_, (dy, dx)) in &taps {
            for b in 0..blocks {
                let mut mask = 0u16;
                for lane in 0..16 {
                    let q = b * 16 + lane;
                    let (y, x) = ((q / w) as isize + dy, (q % w) as isize + dx);
                    if (0..h as isize).contains(&y) && (0..w as isize).contains(&x) {
                        mask |= 1 << lane;
                    }
                }
                masks.push(mask);
            }
        }
        let block_masks = (0..blocks * taps.len())
            .map(|i| masks[(i % taps.len()) * blocks + i / taps.len()])
            .collect();
        let offsets = taps
            .iter()
            .map(|&(plane, (dy, dx))| (plane * h * w) as isize + dy * w as isize + dx)
            .collect();
        Self {
            h,
            w,
            in_w,
            stride,
            phases,
            blocks,
            taps,
            masks,
            block_masks,
            offsets,
        }
    }

    /// A strided layer's input gradient, phase by phase: for each phase `(py, px)` that
    /// some tap reads, the taps that read it (their indices `i·k + j`) and the geometry of
    /// the output gradient's patches that those taps' weights multiply. Phase plane
    /// `(py, px)` of `dx` is `Σ_o Σ_t w[o][·][t] · dy[o]` shifted back by tap `t`'s shift —
    /// the product of a `c × (c_out · taps)` slice of the weight with those patches
    /// (`dy[o][y − dy_t][x − dx_t]`, zero outside the plane). A phase no tap reads (a 1 × 1
    /// stride-2 window's three others) gets no gradient and is not listed.
    pub fn gradient_phases(&self) -> Vec<GradientPhase> {
        (0..self.phases.len())
            .map(|plane| {
                let taps: Vec<usize> = (0..self.taps.len())
                    .filter(|&t| self.taps[t].0 == plane)
                    .collect();
                let shifts = taps
                    .iter()
                    .map(|&t| {
                        let (dy, dx) = self.taps[t].1;
                        (0, (-dy, -dx))
                    })
                    .collect();
                GradientPhase {
                    phase: self.phases[plane],
                    geometry: Self::build((self.h, self.w), (self.w, 1), vec![(0, 0)], shifts),
                    taps,
                }
            })
            .collect()
    }

    /// Whether the patches read the images as they are (stride 1) rather than their
    /// [`split`](Self::split).
    pub fn reads_images(&self) -> bool {
        self.stride == 1
    }

    /// Values per channel of what the patches read: the kept phase planes.
    pub fn plane_len(&self) -> usize {
        self.phases.len() * self.h * self.w
    }

    /// One `c`-channel image (`c × H × W`) split into the phase planes its patches read:
    /// `dst` is `c × phases × (H/s) × (W/s)`, every element written.
    pub fn split(&self, image: &[f32], c: usize, dst: &mut [f32]) {
        let in_plane = self.h * self.stride * self.in_w;
        assert!(image.len() >= c * in_plane && dst.len() >= c * self.plane_len());
        split_phases(self, image, c, dst);
    }
}

crate::simd_fn! {
    /// [`PatchGeometry::split`]'s loops, compiled for the CPU's widest vectors.
    fn split_phases(geometry: &PatchGeometry, image: &[f32], c: usize, dst: &mut [f32]) {
        let g = geometry;
        let (s, in_w, l) = (g.stride, g.in_w, g.h * g.w);
        let in_plane = g.h * s * in_w;
        for ch in 0..c {
            let src = &image[ch * in_plane..][..in_plane];
            for (p, &(py, px)) in g.phases.iter().enumerate() {
                let out = &mut dst[(ch * g.phases.len() + p) * l..][..l];
                for (y, line) in out.chunks_exact_mut(g.w).enumerate() {
                    let row = &src[(y * s + py) * in_w..][..in_w];
                    // Cells of `s` values, one taken from each: a fixed-width gather. At
                    // stride 2 with the cell and the lane known at compile time it is two
                    // shuffles per 16 values (a run-time stride or lane stayed scalar:
                    // 4–7 % of a resnet8-tiny bf16 step).
                    match (s, px) {
                        (2, 0) => gather::<2, 0>(line, row),
                        (2, 1) => gather::<2, 1>(line, row),
                        _ => {
                            for (v, cell) in line.iter_mut().zip(row.chunks_exact(s)) {
                                *v = cell[px];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `line[x] = row[S·x + PX]`.
#[inline(always)]
fn gather<const S: usize, const PX: usize>(line: &mut [f32], row: &[f32]) {
    for (v, cell) in line.iter_mut().zip(row.chunks_exact(S)) {
        *v = cell[PX];
    }
}

/// One phase of a strided layer's input gradient ([`PatchGeometry::gradient_phases`]).
#[derive(Clone, Debug)]
pub struct GradientPhase {
    /// `(row, column)` within the stride's cell.
    pub phase: (usize, usize),
    /// The taps (`i·k + j`) that read it.
    pub taps: Vec<usize>,
    /// Where the output gradient's patches for it read `dy`'s planes.
    pub geometry: PatchGeometry,
}

/// The patch matrix of a convolution ([`PatchGeometry`]) over `images` consecutive images of
/// `c` channels — the images themselves at stride 1, their phase planes
/// ([`PatchGeometry::split`]) at a larger stride: `c·k·k` rows, `images·(H/s)·(W/s)` columns
/// (the images' matrices side by side), read by the packers straight from the planes — an
/// implicit GEMM. Unfolding it first (im2col) wrote the whole matrix in f32 and read it back
/// before the packing read it once more.
///
/// Row `(ch, i, j)` is one of channel `ch`'s planes shifted by tap `(i, j)`'s offset, zero
/// where the window overhangs: the packers take each block of 16 columns as one masked load.
#[derive(Clone, Copy, Debug)]
pub struct Patches<'a> {
    x: &'a [f32],
    images: usize,
    c: usize,
    /// Values per image in `x` (`c` channels of the geometry's planes).
    image_len: usize,
    geometry: &'a PatchGeometry,
}

impl<'a> Patches<'a> {
    /// `None` when `x` does not hold `images` images of `c` channels of the geometry's
    /// planes.
    pub fn new(x: &'a [f32], images: usize, c: usize, geometry: &'a PatchGeometry) -> Option<Self> {
        let image_len = c * geometry.plane_len();
        let fits = images
            .checked_mul(image_len)
            .is_some_and(|len| len <= x.len());
        fits.then_some(Self {
            x,
            images,
            c,
            image_len,
            geometry,
        })
    }

    fn rows(&self) -> usize {
        self.c * self.geometry.taps.len()
    }

    fn cols(&self) -> usize {
        self.images * self.geometry.h * self.geometry.w
    }

    /// Row `p`, or `None` past the last (a zero row of the packing's padding).
    fn row(&self, p: usize) -> Option<PatchRow<'a>> {
        let g = self.geometry;
        let taps = g.taps.len();
        (p < self.rows()).then(|| {
            let (ch, tap) = (p / taps, p % taps);
            PatchRow {
                offset: (ch * g.plane_len()) as isize + g.offsets[tap],
                masks: &g.masks[tap * g.blocks..][..g.blocks],
            }
        })
    }
}

/// One patch row: where in an image its elements start and which lanes of each block of 16
/// positions hold one.
#[derive(Clone, Copy, Debug)]
struct PatchRow<'a> {
    /// Input element minus output position, from the image's start.
    offset: isize,
    masks: &'a [u16],
}

/// A walk over the 16-column blocks of patch rows, from column 0: the image and the block
/// within it.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    img: usize,
    block: usize,
}

impl Cursor {
    const START: Cursor = Cursor { img: 0, block: 0 };

    fn advance(&mut self, p: &Patches<'_>) {
        self.block += 1;
        if self.block == p.geometry.blocks {
            self.block = 0;
            self.img += 1;
        }
    }

    /// The (wrapping) address lane 0 of `row`'s block here would read, and the lanes that
    /// hold an element (none past the last image).
    #[inline]
    fn lanes(&self, p: &Patches<'_>, row: &PatchRow<'_>) -> (*const f32, u16) {
        if self.img >= p.images {
            return (p.x.as_ptr(), 0);
        }
        let at = (self.img * p.image_len + self.block * 16) as isize + row.offset;
        (p.x.as_ptr().wrapping_offset(at), row.masks[self.block])
    }
}

/// Where finished 16×16 tiles go: the valid part of each is written (or added) into `dst`,
/// an `m × n` matrix whose rows are `ld ≥ n` apart (`n` but for a block of columns of a
/// wider matrix, [`matmul_packed_into`]).
struct Out<'a> {
    dst: &'a mut [f32],
    m: usize,
    n: usize,
    ld: usize,
    accumulate: bool,
}

impl Out<'_> {
    fn tile(&mut self, bi: usize, bj: usize, tile: &[f32; 256]) {
        let (i0, j0) = (bi * 16, bj * 16);
        if i0 >= self.m || j0 >= self.n {
            return;
        }
        let w = 16.min(self.n - j0);
        for r in 0..16.min(self.m - i0) {
            let row = &mut self.dst[(i0 + r) * self.ld + j0..][..w];
            let src = &tile[r * 16..r * 16 + w];
            for (d, s) in row.iter_mut().zip(src) {
                *d = if self.accumulate { *d + s } else { *s };
            }
        }
    }
}

/// Packs `a` (m × k) into 16 × 32 blocks, every element of `out` written (padding zero).
fn pack_a(a: MatRef<'_, f32>, out: &mut Vec<u16>, dot: Dot) {
    let (mb, kb) = blocks(a.rows, a.cols);
    out.resize(mb * kb * TILE, 0);
    pack_a_into(a, out, dot);
}

/// [`pack_a`] into `out`, which holds `a`'s blocks.
fn pack_a_into(a: MatRef<'_, f32>, out: &mut [u16], dot: Dot) {
    let (mb, kb) = blocks(a.rows, a.cols);
    let _ = dot;
    #[cfg(target_arch = "x86_64")]
    if a.col_stride == 1 {
        // SAFETY: `dot` exists, so the CPU has AVX-512 F/BW/BF16; `a` was checked in bounds
        // by every caller and `out` holds mb·kb blocks.
        unsafe { kernels::pack_a_rows(a, out, mb, kb) };
        return;
    }
    for bi in 0..mb {
        for bk in 0..kb {
            let block = &mut out[(bi * kb + bk) * TILE..][..TILE];
            for r in 0..16 {
                for c in 0..32 {
                    let (i, p) = (bi * 16 + r, bk * 32 + c);
                    block[r * 32 + c] = if i < a.rows && p < a.cols {
                        round(a.data[i * a.row_stride + p * a.col_stride])
                    } else {
                        0
                    };
                }
            }
        }
    }
}

/// Packs `b` (k × n) into blocks of 16 k-pairs × 16 columns × 2, every element written.
fn pack_b(b: MatRef<'_, f32>, out: &mut Vec<u16>, dot: Dot) {
    let (nb, kb) = blocks(b.cols, b.rows);
    out.resize(nb * kb * TILE, 0);
    pack_b_into(b, out, dot);
}

/// [`pack_b`] into `out`, which holds `b`'s blocks.
fn pack_b_into(b: MatRef<'_, f32>, out: &mut [u16], dot: Dot) {
    let (nb, kb) = blocks(b.cols, b.rows);
    let _ = dot;
    #[cfg(target_arch = "x86_64")]
    {
        if b.col_stride == 1 {
            // SAFETY: as in `pack_a`: the CPU has the instructions, `b` is in bounds, `out`
            // holds nb·kb blocks.
            unsafe { kernels::pack_b_rows(b, out, nb, kb) };
            return;
        }
        if b.row_stride == 1 {
            // SAFETY: as above.
            unsafe { kernels::pack_b_cols(b, out, nb, kb) };
            return;
        }
    }
    for bj in 0..nb {
        for bk in 0..kb {
            let block = &mut out[(bj * kb + bk) * TILE..][..TILE];
            for r in 0..16 {
                for c in 0..16 {
                    for e in 0..2 {
                        let (p, j) = (bk * 32 + 2 * r + e, bj * 16 + c);
                        block[r * 32 + c * 2 + e] = if p < b.rows && j < b.cols {
                            round(b.data[p * b.row_stride + j * b.col_stride])
                        } else {
                            0
                        };
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod kernels {
    use std::arch::asm;
    use std::arch::x86_64::*;

    use super::{Cursor, Dot, Fma, KC, MatRef, Out, PatchRow, Patches, TILE, Unit};

    pub(super) fn run(
        unit: Unit,
        pa: &[u16],
        pb: &[u16],
        mb: usize,
        nb: usize,
        kb: usize,
        out: Out<'_>,
    ) {
        assert!(pa.len() >= mb * kb * TILE && pb.len() >= nb * kb * TILE);
        match unit {
            // SAFETY (both): a `Unit` reaches here only inside a `Dot`, made after checking
            // the CPU (and the OS for AMX); the packed buffers hold the blocks read (asserted).
            Unit::Amx => unsafe { amx(pa, pb, mb, nb, kb, out) },
            Unit::Avx512Bf16 => unsafe { avx512(pa, pb, mb, nb, kb, out) },
        }
    }

    /// The tile configuration `ldtilecfg` reads: palette 1, eight tiles of 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// Where one accumulator tile starts and ends: straight in `dst` when the whole 16 × 16
    /// tile lies inside it (loaded from there when accumulating), else in a scratch tile
    /// that [`Out::tile`] copies out.
    struct Target {
        ptr: *mut f32,
        stride: usize,
        direct: bool,
    }

    impl Out<'_> {
        fn target(&mut self, bi: usize, bj: usize, scratch: &mut [f32; 256]) -> Target {
            let (i0, j0) = (bi * 16, bj * 16);
            if i0 + 16 <= self.m && j0 + 16 <= self.n {
                Target {
                    // In bounds: the tile's last element (i0 + 15)·ld + j0 + 15 <
                    // (m − 1)·ld + n ≤ len (`has_work`).
                    ptr: self.dst[i0 * self.ld + j0..].as_mut_ptr(),
                    stride: self.ld * 4,
                    direct: true,
                }
            } else {
                Target {
                    ptr: scratch.as_mut_ptr(),
                    stride: 64,
                    direct: false,
                }
            }
        }
    }

    /// Starts accumulator tile `$tmm` at `$t`: its current values when adding into `dst`,
    /// zero otherwise.
    macro_rules! tile_start {
        ($tmm:literal, $t:expr, $accumulate:expr) => {
            if $t.direct && $accumulate {
                asm!(concat!("tileloadd ", $tmm, ", [{p} + {s}*1]"), p = in(reg) $t.ptr, s = in(reg) $t.stride, options(nostack, readonly));
            } else {
                asm!(concat!("tilezero ", $tmm), options(nostack, nomem));
            }
        };
    }

    macro_rules! tile_store {
        ($tmm:literal, $t:expr) => {
            asm!(concat!("tilestored [{p} + {s}*1], ", $tmm), p = in(reg) $t.ptr, s = in(reg) $t.stride, options(nostack));
        };
    }

    /// tmm0–3 accumulate a 32 × 32 block of C (2 × 2 tiles), tmm4–5 hold two row blocks of
    /// A, tmm6–7 two column blocks of B. Edges with a single row or column block use tmm0,
    /// tmm4 and tmm6 alone. Whole tiles are loaded from and stored to `dst` directly.
    unsafe fn amx(pa: &[u16], pb: &[u16], mb: usize, nb: usize, kb: usize, mut out: Out<'_>) {
        let mut cfg = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            cfg.colsb[t] = 64;
            cfg.rows[t] = 16;
        }
        let stride: usize = 64;
        let acc = out.accumulate;
        let a_block = |bi: usize| pa[bi * kb * TILE..].as_ptr();
        let b_block = |bj: usize| pb[bj * kb * TILE..].as_ptr();
        let mut c = [[0f32; 256]; 4];
        // SAFETY: `cfg` is a valid palette-1 configuration (8 tiles × 16 rows × 64 bytes,
        // within AMX's limits) and 64-byte aligned; the OS granted the tile state (checked in
        // `probe::amx`). Tile registers are not used by compiled code, so the asm blocks
        // below can keep values in them between blocks.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly)) };
        for bj in (0..nb).step_by(2) {
            for bi in (0..mb).step_by(2) {
                if bi + 1 < mb && bj + 1 < nb {
                    let (a0, a1, b0, b1) =
                        (a_block(bi), a_block(bi + 1), b_block(bj), b_block(bj + 1));
                    let [c0, c1, c2, c3] = &mut c;
                    let t = [
                        out.target(bi, bj, c0),
                        out.target(bi, bj + 1, c1),
                        out.target(bi + 1, bj, c2),
                        out.target(bi + 1, bj + 1, c3),
                    ];
                    // SAFETY: every A/B load reads one 16 × 64-byte block at `q·TILE` u16 past
                    // a block start, q < kb: inside `pa`/`pb` (asserted in `run`). Each target
                    // is 16 rows of 64 bytes at its stride inside `dst` (see `Out::target`) or
                    // a 1 KiB scratch array.
                    unsafe {
                        tile_start!("tmm0", t[0], acc);
                        tile_start!("tmm1", t[1], acc);
                        tile_start!("tmm2", t[2], acc);
                        tile_start!("tmm3", t[3], acc);
                        for q in 0..kb {
                            let o = q * TILE;
                            asm!(
                                "tileloadd tmm4, [{a0} + {s}*1]",
                                "tileloadd tmm5, [{a1} + {s}*1]",
                                "tileloadd tmm6, [{b0} + {s}*1]",
                                "tileloadd tmm7, [{b1} + {s}*1]",
                                "tdpbf16ps tmm0, tmm4, tmm6",
                                "tdpbf16ps tmm1, tmm4, tmm7",
                                "tdpbf16ps tmm2, tmm5, tmm6",
                                "tdpbf16ps tmm3, tmm5, tmm7",
                                a0 = in(reg) a0.add(o), a1 = in(reg) a1.add(o),
                                b0 = in(reg) b0.add(o), b1 = in(reg) b1.add(o),
                                s = in(reg) stride, options(nostack, readonly));
                        }
                        tile_store!("tmm0", t[0]);
                        tile_store!("tmm1", t[1]);
                        tile_store!("tmm2", t[2]);
                        tile_store!("tmm3", t[3]);
                    }
                    let direct = t.map(|t| t.direct);
                    for (k, (di, dj)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                        if !direct[k] {
                            out.tile(bi + di, bj + dj, &c[k]);
                        }
                    }
                } else {
                    for i in bi..(bi + 2).min(mb) {
                        for j in bj..(bj + 2).min(nb) {
                            let (a0, b0) = (a_block(i), b_block(j));
                            let t = out.target(i, j, &mut c[0]);
                            // SAFETY: as above, one block of A and of B per step.
                            unsafe {
                                tile_start!("tmm0", t, acc);
                                for q in 0..kb {
                                    let o = q * TILE;
                                    asm!(
                                        "tileloadd tmm4, [{a0} + {s}*1]",
                                        "tileloadd tmm6, [{b0} + {s}*1]",
                                        "tdpbf16ps tmm0, tmm4, tmm6",
                                        a0 = in(reg) a0.add(o), b0 = in(reg) b0.add(o),
                                        s = in(reg) stride, options(nostack, readonly));
                                }
                                tile_store!("tmm0", t);
                            }
                            if !t.direct {
                                out.tile(i, j, &c[0]);
                            }
                        }
                    }
                }
            }
        }
        // SAFETY: returns the tile state to its initial (unused) state, so a context switch
        // does not save 8 KiB of tiles for this thread until its next product.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// C in tiles of 16 rows × 32 columns (two column blocks of B, each k-pair row of them
    /// loaded once per 8 rows of A, and each broadcast pair of A used for both); a last
    /// odd column block goes 16 × 16 through [`tile_dot`].
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn avx512(pa: &[u16], pb: &[u16], mb: usize, nb: usize, kb: usize, mut out: Out<'_>) {
        // k in chunks of KC blocks, so a chunk of every row block of A (≤ 16·KC KiB per
        // 16 rows) stays in L2 while each column block pair of B sweeps over it; later
        // chunks add into what the earlier ones stored.
        for q0 in (0..kb).step_by(KC) {
            let q1 = (q0 + KC).min(kb);
            let add = out.accumulate || q0 > 0;
            let block =
                |p: &[u16], i: usize| p[(i * kb + q0) * TILE..(i * kb + q1) * TILE].as_ptr();
            for bj in (0..nb).step_by(2) {
                for bi in 0..mb {
                    let (i0, j0) = (bi * 16, bj * 16);
                    let a = block(pa, bi);
                    if bj + 1 < nb {
                        let b = [block(pb, bj), block(pb, bj + 1)];
                        // Rows 8..16 only where C has them (a small m leaves them padding).
                        for half in 0..(out.m - i0).div_ceil(8).min(2) {
                            let mut acc = [[_mm512_setzero_ps(); 8]; 2];
                            // SAFETY: `a` (from row 8·half of its blocks) and both `b` point
                            // at q1 − q0 whole blocks of 512 u16 (sliced by `block`).
                            unsafe { tile_dot2(a.add(half * 8 * 32), b, q1 - q0, &mut acc) };
                            for (c, acc) in acc.iter().enumerate() {
                                store(&mut out, acc, i0 + half * 8, j0 + c * 16, add);
                            }
                        }
                    } else {
                        let mut acc = [_mm512_setzero_ps(); 16];
                        // SAFETY: `a` and `b` point at q1 − q0 whole blocks (sliced by `block`).
                        unsafe { tile_dot(a, block(pb, bj), q1 - q0, &mut acc) };
                        store(&mut out, &acc, i0, j0, add);
                    }
                }
            }
        }
    }

    /// Rows i0.. (as many as `acc` has, below m) × columns j0..j0 + 16 (below n) of C from
    /// `acc`, straight into `dst` (added to it when `add`), masked at the right and bottom
    /// edges: going through a scratch tile and `Out::tile` cost 16 row copies per tile,
    /// 8 % of a resnet8-tiny bf16 step.
    #[target_feature(enable = "avx512f")]
    fn store(out: &mut Out<'_>, acc: &[__m512], i0: usize, j0: usize, add: bool) {
        if j0 >= out.n {
            return;
        }
        let mask = lanes(out.n - j0);
        for (i, acc) in acc.iter().enumerate().take(out.m.saturating_sub(i0)) {
            let row = out.dst[(i0 + i) * out.ld + j0..].as_mut_ptr();
            // SAFETY: the lanes below min(16, n − j0) address row i0 + i < m, columns j0.. < n,
            // of the m × n matrix in `dst` (rows ld apart, len ≥ (m − 1)·ld + n, checked by
            // `has_work`); masked-off lanes are neither read nor written.
            unsafe {
                let v = if add {
                    _mm512_add_ps(*acc, _mm512_maskz_loadu_ps(mask, row))
                } else {
                    *acc
                };
                _mm512_mask_storeu_ps(row, mask, v);
            }
        }
    }

    /// One row r of a block pair: B's k-pair row r loaded once, then multiplied into each
    /// of the 16 accumulators by row i's pair r of A, broadcast straight from memory inside
    /// `vdpbf16ps` (an embedded `{1to16}` broadcast: one instruction, where the intrinsics
    /// compile to a separate `vbroadcastss` per product).
    macro_rules! dot_row {
        ($r:literal) => {
            concat!(
                "vmovups zmm16, [{b} + ",
                $r,
                "*64]\n",
                "vdpbf16ps {c0}, zmm16, dword ptr [{a} + 0*64 + ",
                $r,
                "*4]{{1to16}}\n",
                "vdpbf16ps {c1}, zmm16, dword ptr [{a} + 1*64 + ",
                $r,
                "*4]{{1to16}}\n",
                "vdpbf16ps {c2}, zmm16, dword ptr [{a} + 2*64 + ",
                $r,
                "*4]{{1to16}}\n",
                "vdpbf16ps {c3}, zmm16, dword ptr [{a} + 3*64 + ",
                $r,
                "*4]{{1to16}}\n",
                "vdpbf16ps {c4}, zmm16, dword ptr [{a} + 4*64 + ",
                $r,
                "*4]{{1to16}}\n",
                "vdpbf16ps {c5}, zmm16, dword ptr [{a} + 5*64 + ",
                $r,
                "*4]{{1to16}}\n",
                "vdpbf16ps {c6}, zmm16, dword ptr [{a} + 6*64 + ",
                $r,
                "*4]{{1to16}}\n",
                "vdpbf16ps {c7}, zmm16, dword ptr [{a} + 7*64 + ",
                $r,
                "*4]{{1to16}}\n",
                "vdpbf16ps {c8}, zmm16, dword ptr [{a} + 8*64 + ",
                $r,
                "*4]{{1to16}}\n",
                "vdpbf16ps {c9}, zmm16, dword ptr [{a} + 9*64 + ",
                $r,
                "*4]{{1to16}}\n",
                "vdpbf16ps {c10}, zmm16, dword ptr [{a} + 10*64 + ",
                $r,
                "*4]{{1to16}}\n",
                "vdpbf16ps {c11}, zmm16, dword ptr [{a} + 11*64 + ",
                $r,
                "*4]{{1to16}}\n",
                "vdpbf16ps {c12}, zmm16, dword ptr [{a} + 12*64 + ",
                $r,
                "*4]{{1to16}}\n",
                "vdpbf16ps {c13}, zmm16, dword ptr [{a} + 13*64 + ",
                $r,
                "*4]{{1to16}}\n",
                "vdpbf16ps {c14}, zmm16, dword ptr [{a} + 14*64 + ",
                $r,
                "*4]{{1to16}}\n",
                "vdpbf16ps {c15}, zmm16, dword ptr [{a} + 15*64 + ",
                $r,
                "*4]{{1to16}}\n",
            )
        };
    }

    /// As [`dot_row`] for 8 rows of A against two column blocks of B.
    macro_rules! dot_row2 {
        ($r:literal) => {
            concat!(
                "vmovups zmm16, [{b0} + ",
                $r,
                "*64]\n",
                "vmovups zmm17, [{b1} + ",
                $r,
                "*64]\n",
                "vbroadcastss zmm18, dword ptr [{a} + 0*64 + ",
                $r,
                "*4]\n",
                "vdpbf16ps {c0}, zmm16, zmm18\n",
                "vdpbf16ps {d0}, zmm17, zmm18\n",
                "vbroadcastss zmm19, dword ptr [{a} + 1*64 + ",
                $r,
                "*4]\n",
                "vdpbf16ps {c1}, zmm16, zmm19\n",
                "vdpbf16ps {d1}, zmm17, zmm19\n",
                "vbroadcastss zmm18, dword ptr [{a} + 2*64 + ",
                $r,
                "*4]\n",
                "vdpbf16ps {c2}, zmm16, zmm18\n",
                "vdpbf16ps {d2}, zmm17, zmm18\n",
                "vbroadcastss zmm19, dword ptr [{a} + 3*64 + ",
                $r,
                "*4]\n",
                "vdpbf16ps {c3}, zmm16, zmm19\n",
                "vdpbf16ps {d3}, zmm17, zmm19\n",
                "vbroadcastss zmm18, dword ptr [{a} + 4*64 + ",
                $r,
                "*4]\n",
                "vdpbf16ps {c4}, zmm16, zmm18\n",
                "vdpbf16ps {d4}, zmm17, zmm18\n",
                "vbroadcastss zmm19, dword ptr [{a} + 5*64 + ",
                $r,
                "*4]\n",
                "vdpbf16ps {c5}, zmm16, zmm19\n",
                "vdpbf16ps {d5}, zmm17, zmm19\n",
                "vbroadcastss zmm18, dword ptr [{a} + 6*64 + ",
                $r,
                "*4]\n",
                "vdpbf16ps {c6}, zmm16, zmm18\n",
                "vdpbf16ps {d6}, zmm17, zmm18\n",
                "vbroadcastss zmm19, dword ptr [{a} + 7*64 + ",
                $r,
                "*4]\n",
                "vdpbf16ps {c7}, zmm16, zmm19\n",
                "vdpbf16ps {d7}, zmm17, zmm19\n",
            )
        };
    }

    /// `acc[c][i] += Σ_q Σ_r A_q[i, pair r] · B_q^c[pair r, ·]` for 8 rows of A (`a` points
    /// at row 0 or 8 of its first block) and two column blocks of B, over `kb` consecutive
    /// blocks of each (1 KiB apart). Each pair of A is broadcast once into a register and
    /// used for both column blocks: 10 loads per 16 products, where [`tile_dot`] needs 17.
    ///
    /// SAFETY (caller): `a` and both `b` point at `kb` whole blocks each (`a` at most 8 rows
    /// in); the CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile_dot2(a: *const u16, b: [*const u16; 2], kb: usize, acc: &mut [[__m512; 8]; 2]) {
        if kb == 0 {
            return;
        }
        let [
            [c0, c1, c2, c3, c4, c5, c6, c7],
            [d0, d1, d2, d3, d4, d5, d6, d7],
        ] = acc;
        // SAFETY: see the caller's contract; the asm reads only the kb blocks, writes only
        // the named registers and zmm16–19, and leaves the stack alone.
        unsafe {
            asm!(
                "2:",
                dot_row2!(0), dot_row2!(1), dot_row2!(2), dot_row2!(3),
                dot_row2!(4), dot_row2!(5), dot_row2!(6), dot_row2!(7),
                dot_row2!(8), dot_row2!(9), dot_row2!(10), dot_row2!(11),
                dot_row2!(12), dot_row2!(13), dot_row2!(14), dot_row2!(15),
                "add {a}, 1024",
                "add {b0}, 1024",
                "add {b1}, 1024",
                "dec {n}",
                "jnz 2b",
                a = inout(reg) a => _, b0 = inout(reg) b[0] => _, b1 = inout(reg) b[1] => _,
                n = inout(reg) kb => _,
                c0 = inout(zmm_reg) *c0, c1 = inout(zmm_reg) *c1,
                c2 = inout(zmm_reg) *c2, c3 = inout(zmm_reg) *c3,
                c4 = inout(zmm_reg) *c4, c5 = inout(zmm_reg) *c5,
                c6 = inout(zmm_reg) *c6, c7 = inout(zmm_reg) *c7,
                d0 = inout(zmm_reg) *d0, d1 = inout(zmm_reg) *d1,
                d2 = inout(zmm_reg) *d2, d3 = inout(zmm_reg) *d3,
                d4 = inout(zmm_reg) *d4, d5 = inout(zmm_reg) *d5,
                d6 = inout(zmm_reg) *d6, d7 = inout(zmm_reg) *d7,
                out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
                options(nostack, readonly),
            );
        }
    }

    /// `acc[i] += Σ_q Σ_r A_q[i, pair r] · B_q[pair r, ·]` over `kb` consecutive block pairs
    /// from `a` and `b` (16 × 32 bf16 of A, 32 × 16 of B, 1 KiB each).
    ///
    /// SAFETY (caller): `a` and `b` point at `kb` whole blocks each; the CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile_dot(a: *const u16, b: *const u16, kb: usize, acc: &mut [__m512; 16]) {
        if kb == 0 {
            return;
        }
        let [
            c0,
            c1,
            c2,
            c3,
            c4,
            c5,
            c6,
            c7,
            c8,
            c9,
            c10,
            c11,
            c12,
            c13,
            c14,
            c15,
        ] = acc;
        // SAFETY: see the caller's contract; the asm reads only the kb blocks, writes only
        // the named registers and zmm16, and leaves the stack alone.
        unsafe {
            asm!(
                "2:",
                dot_row!(0), dot_row!(1), dot_row!(2), dot_row!(3),
                dot_row!(4), dot_row!(5), dot_row!(6), dot_row!(7),
                dot_row!(8), dot_row!(9), dot_row!(10), dot_row!(11),
                dot_row!(12), dot_row!(13), dot_row!(14), dot_row!(15),
                "add {a}, 1024",
                "add {b}, 1024",
                "dec {n}",
                "jnz 2b",
                a = inout(reg) a => _, b = inout(reg) b => _, n = inout(reg) kb => _,
                c0 = inout(zmm_reg) *c0, c1 = inout(zmm_reg) *c1,
                c2 = inout(zmm_reg) *c2, c3 = inout(zmm_reg) *c3,
                c4 = inout(zmm_reg) *c4, c5 = inout(zmm_reg) *c5,
                c6 = inout(zmm_reg) *c6, c7 = inout(zmm_reg) *c7,
                c8 = inout(zmm_reg) *c8, c9 = inout(zmm_reg) *c9,
                c10 = inout(zmm_reg) *c10, c11 = inout(zmm_reg) *c11,
                c12 = inout(zmm_reg) *c12, c13 = inout(zmm_reg) *c13,
                c14 = inout(zmm_reg) *c14, c15 = inout(zmm_reg) *c15,
                out("zmm16") _,
                options(nostack, readonly),
            );
        }
    }

    /// A mask of the first `n` (≤ 16) lanes.
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// 32 values from `src` (those at `start..start+32` below `len`; zero past it), rounded to
    /// bf16, in order.
    ///
    /// SAFETY (caller): `src` points at an allocation of at least `len` f32 that the CPU can
    /// read; masked-off lanes are not read (AVX-512 masked loads suppress their accesses).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn load32(src: *const f32, start: usize, len: usize, stride: usize) -> __m512bh {
        let left = len.saturating_sub(start);
        let (lo, hi) = if stride == 1 {
            // SAFETY: only the lanes below `len` are read; `wrapping_add` keeps the address
            // arithmetic defined even past the end, where no lane is read.
            unsafe {
                (
                    _mm512_maskz_loadu_ps(lanes(left), src.wrapping_add(start)),
                    _mm512_maskz_loadu_ps(
                        lanes(left.saturating_sub(16)),
                        src.wrapping_add(start + 16),
                    ),
                )
            }
        } else {
            let mut v = [0f32; 32];
            for (t, slot) in v.iter_mut().enumerate().take(left.min(32)) {
                // SAFETY: index (start + t)·stride < len·stride is inside the caller's range.
                *slot = unsafe { *src.add((start + t) * stride) };
            }
            // SAFETY: two 16-float reads from a 32-float array.
            unsafe {
                (
                    _mm512_loadu_ps(v.as_ptr()),
                    _mm512_loadu_ps(v.as_ptr().add(16)),
                )
            }
        };
        _mm512_cvtne2ps_pbh(hi, lo)
    }

    /// The `vpermw` index that interleaves a k-pair into one row of a B block: lane 2c takes
    /// column c of the pair's first row, lane 2c + 1 column c of the second.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pair_index() -> __m512i {
        let idx: [u16; 32] = std::array::from_fn(|l| {
            if l % 2 == 0 {
                (l / 2) as u16
            } else {
                16 + (l / 2) as u16
            }
        });
        // SAFETY: 64 bytes from a 32-u16 array.
        unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) }
    }

    /// 32 bf16 into the first 32 u16 of `dst` (a row of an A block).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn store_bf16(dst: &mut [u16], v: __m512bh) {
        assert!(dst.len() >= 32);
        // SAFETY: same-size reinterpretation; 64 bytes into the 32 u16 checked above.
        unsafe {
            _mm512_storeu_si512(
                dst.as_mut_ptr().cast(),
                std::mem::transmute::<__m512bh, __m512i>(v),
            )
        };
    }

    /// A k-pair's 16 columns (`first`, `second`) rounded to bf16 and interleaved (`idx`, from
    /// [`pair_index`]) into the first 32 u16 of `dst` (a row of a B block).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn store_pair(dst: &mut [u16], idx: __m512i, first: __m512, second: __m512) {
        let v = _mm512_cvtne2ps_pbh(second, first);
        // SAFETY: same-size reinterpretations of 32 bf16.
        let v = unsafe {
            std::mem::transmute::<__m512i, __m512bh>(_mm512_permutexvar_epi16(
                idx,
                std::mem::transmute::<__m512bh, __m512i>(v),
            ))
        };
        store_bf16(dst, v);
    }

    /// Block `bi` (16 rows) of [`super::PackedPairs`] from `a` (unit column stride, `channels`
    /// channels of `taps` taps per row): for each row and channel pair, up to 16 taps of
    /// both channels loaded, rounded and interleaved into 32-bit words in registers, and
    /// the 16 rows' words transposed so that each (pair, tap) row of the block is one store.
    /// (The scalar loop, one rounding and a strided read per value, was 1.3 % of a ResNet-18
    /// bf16 step's samples.)
    pub(super) fn pack_pairs(
        a: MatRef<'_, f32>,
        (bi, channels, taps): (usize, usize, usize),
        block: &mut [u32],
        dot: Dot,
    ) {
        let _ = dot;
        assert!(a.col_stride == 1 && a.in_bounds() && a.cols >= channels * taps);
        assert!(block.len() >= channels.div_ceil(2) * taps * 16);
        // SAFETY: `dot` exists, so the CPU has AVX-512 F/BW/BF16.
        unsafe { pack_pairs_avx512(a, (bi, channels, taps), block) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_pairs_avx512(
        a: MatRef<'_, f32>,
        (bi, channels, taps): (usize, usize, usize),
        block: &mut [u32],
    ) {
        let idx = pair_index();
        let rows = 16.min(a.rows - bi * 16);
        for p in 0..channels.div_ceil(2) {
            for t0 in (0..taps).step_by(16) {
                let width = (taps - t0).min(16);
                let mask = lanes(width);
                let mut words = [_mm512_setzero_si512(); 16];
                for (r, word) in words.iter_mut().enumerate().take(rows) {
                    let row = a.data[(bi * 16 + r) * a.row_stride..].as_ptr();
                    let load = |ch: usize| {
                        if ch < channels {
                            // SAFETY: taps t0..t0 + width of channel ch lie in row r (unit
                            // column stride, ch·taps + t0 + width ≤ a.cols, view in bounds).
                            unsafe { _mm512_maskz_loadu_ps(mask, row.add(ch * taps + t0)) }
                        } else {
                            _mm512_setzero_ps()
                        }
                    };
                    let v = _mm512_cvtne2ps_pbh(load(2 * p + 1), load(2 * p));
                    // SAFETY: same-size reinterpretations of 32 bf16.
                    *word = unsafe {
                        _mm512_permutexvar_epi16(idx, std::mem::transmute::<__m512bh, __m512i>(v))
                    };
                }
                let by_tap = transpose16(words);
                for (t, v) in by_tap.iter().enumerate().take(width) {
                    let dst = &mut block[(p * taps + t0 + t) * 16..][..16];
                    // SAFETY: 64 bytes into the 16 u32 just sliced.
                    unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), *v) };
                }
            }
        }
    }

    /// A with unit column stride: each 32-wide piece of a row converted in one instruction.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_a_rows(a: MatRef<'_, f32>, out: &mut [u16], mb: usize, kb: usize) {
        assert!(out.len() >= mb * kb * TILE);
        for i in 0..mb * 16 {
            let (bi, r) = (i / 16, i % 16);
            for bk in 0..kb {
                let v = if i < a.rows {
                    // SAFETY: row i spans `a.cols` floats from `i·row_stride`, inside `a.data`
                    // (the view is in bounds).
                    unsafe { load32(a.data.as_ptr().add(i * a.row_stride), bk * 32, a.cols, 1) }
                } else {
                    // SAFETY: reinterpreting zero bits.
                    unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()) }
                };
                store_bf16(&mut out[(bi * kb + bk) * TILE + r * 32..], v);
            }
        }
    }

    /// B with unit column stride: two rows (a k-pair) converted at once and interleaved.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_b_rows(b: MatRef<'_, f32>, out: &mut [u16], nb: usize, kb: usize) {
        assert!(out.len() >= nb * kb * TILE);
        let idx = pair_index();
        for pp in 0..kb * 16 {
            let (bk, r) = (pp / 16, pp % 16);
            let (p0, p1) = (2 * pp, 2 * pp + 1);
            for bj in 0..nb {
                let j0 = bj * 16;
                let w = b.cols.saturating_sub(j0).min(16);
                let row = |p: usize| {
                    if p < b.rows {
                        // SAFETY: the w ≤ 16 floats of row p from column j0 lie in the view.
                        unsafe {
                            _mm512_maskz_loadu_ps(
                                lanes(w),
                                b.data.as_ptr().add(p * b.row_stride + j0),
                            )
                        }
                    } else {
                        _mm512_setzero_ps()
                    }
                };
                store_pair(
                    &mut out[(bj * kb + bk) * TILE + r * 32..],
                    idx,
                    row(p0),
                    row(p1),
                );
            }
        }
    }

    /// B with unit row stride (a transposed view): 32 consecutive k of a column converted at
    /// once (16 bf16 pairs), 16 columns at a time, and the 16 × 16 pairs transposed in
    /// registers so that each of the block's pair rows is one 64-byte store. (Spreading each
    /// column's pairs with 32 two-byte stores was 8 % of a narrow layer's bf16 backward.)
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_b_cols(b: MatRef<'_, f32>, out: &mut [u16], nb: usize, kb: usize) {
        assert!(out.len() >= nb * kb * TILE);
        for bj in 0..nb {
            for bk in 0..kb {
                let mut rows = [_mm512_setzero_si512(); 16];
                for (c, row) in rows.iter_mut().enumerate() {
                    let j = bj * 16 + c;
                    if j < b.cols {
                        // SAFETY: column j spans `b.rows` floats from `j·col_stride` (unit
                        // stride).
                        let v = unsafe {
                            load32(b.data.as_ptr().add(j * b.col_stride), bk * 32, b.rows, 1)
                        };
                        *row = unsafe { std::mem::transmute::<__m512bh, __m512i>(v) };
                    }
                }
                let rows = transpose16(rows);
                let block = &mut out[(bj * kb + bk) * TILE..][..TILE];
                for (r, row) in rows.iter().enumerate() {
                    // SAFETY: pair row r is the block's u16s r·32 .. r·32 + 32 (64 bytes,
                    // inside `block`, whose length is TILE = 16 · 32).
                    unsafe { _mm512_storeu_si512(block.as_mut_ptr().add(r * 32).cast(), *row) };
                }
            }
        }
    }

    /// `v` rounded to bf16 into `out` (as long as `v`), 32 values per conversion.
    pub(super) fn round_row(v: &[f32], out: &mut [u16], dot: Dot) {
        let _ = dot;
        assert!(out.len() >= v.len());
        // SAFETY: `dot` exists, so the CPU has AVX-512 F/BW/BF16.
        unsafe { round_row_avx512(v, out) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn round_row_avx512(v: &[f32], out: &mut [u16]) {
        for start in (0..v.len()).step_by(32) {
            let left = v.len() - start;
            // SAFETY: `load32` reads only the lanes below `v.len()`; the store writes the
            // u16s below min(32, left) from `start`, inside `out` (at least as long as `v`).
            unsafe {
                let pairs = load32(v.as_ptr(), start, v.len(), 1);
                let mask: __mmask32 = if left >= 32 { !0 } else { (1u32 << left) - 1 };
                _mm512_mask_storeu_epi16(
                    out.as_mut_ptr().add(start).cast(),
                    mask,
                    std::mem::transmute::<__m512bh, __m512i>(pairs),
                );
            }
        }
    }

    /// `v`'s even elements rounded to bf16 into `even`, its odd ones into `odd` (each half as
    /// long as `v`, whose length is even): 32 values per conversion, split by one shuffle.
    pub(super) fn round_row_phases(v: &[f32], even: &mut [u16], odd: &mut [u16], dot: Dot) {
        let _ = dot;
        assert!(v.len().is_multiple_of(2) && even.len() >= v.len() / 2 && odd.len() >= v.len() / 2);
        // SAFETY: `dot` exists, so the CPU has AVX-512 F/BW/BF16.
        unsafe { round_row_phases_avx512(v, even, odd) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn round_row_phases_avx512(v: &[f32], even: &mut [u16], odd: &mut [u16]) {
        // u16 lane i of the result: element 2i of the 32 for i < 16, element 2(i − 16) + 1
        // above.
        let idx = _mm512_set_epi16(
            31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1, 30, 28, 26, 24, 22, 20, 18,
            16, 14, 12, 10, 8, 6, 4, 2, 0,
        );
        for start in (0..v.len()).step_by(32) {
            let half = (v.len() - start).min(32) / 2;
            let mask: __mmask16 = if half >= 16 { !0 } else { (1u16 << half) - 1 };
            // SAFETY: `load32` reads only the lanes below `v.len()`; each store writes the
            // u16s below `half` from `start / 2`, inside `even` and `odd` (each at least
            // v.len() / 2 long).
            unsafe {
                let pairs = load32(v.as_ptr(), start, v.len(), 1);
                let split =
                    _mm512_permutexvar_epi16(idx, std::mem::transmute::<__m512bh, __m512i>(pairs));
                _mm256_mask_storeu_epi16(
                    even.as_mut_ptr().add(start / 2).cast(),
                    mask,
                    _mm512_castsi512_si256(split),
                );
                _mm256_mask_storeu_epi16(
                    odd.as_mut_ptr().add(start / 2).cast(),
                    mask,
                    _mm512_extracti64x4_epi64::<1>(split),
                );
            }
        }
    }

    /// [`super::weight_grad_3x3`]'s product: tiles of 3 channels' 9 taps × one block of 16
    /// output channels, or one channel's 9 taps × two blocks, each tile's sums kept in
    /// registers over every position pair.
    pub(super) fn weight_grad_3x3(
        dst: &mut [f32],
        planes: &[u16],
        pad: &super::Padded,
        packed: &[u16],
        (c_out, kb): (usize, usize),
        accumulate: bool,
        dot: Dot,
    ) {
        let _ = dot;
        let nb = c_out / 16;
        assert!(planes.len() >= pad.len() && packed.len() >= nb * kb * TILE);
        assert!(dst.len() >= pad.c * 9 * c_out && kb * 16 >= pad.imgs * pad.h * pad.w / 2);
        let tile = Tile3 {
            planes,
            pad,
            packed,
            block_bytes: kb * TILE * 2,
        };
        let mut ch = 0;
        while ch < pad.c {
            let mut bj = 0;
            while bj + 2 <= nb {
                // SAFETY (every call): `dot` exists, so the CPU has AVX-512 F/BW/BF16; the
                // channels and blocks are inside the layout (loop bounds), whose buffers hold
                // them (asserted above).
                unsafe { tile.run::<1, 2>(ch, bj, dst, c_out, accumulate) };
                bj += 2;
            }
            if bj < nb {
                // The last odd block (or a single one): three channels at a time.
                let chs = if nb == 1 { (pad.c - ch).min(3) } else { 1 };
                for b in bj..nb {
                    match chs {
                        3 => unsafe { tile.run::<3, 1>(ch, b, dst, c_out, accumulate) },
                        2 => unsafe { tile.run::<2, 1>(ch, b, dst, c_out, accumulate) },
                        _ => unsafe { tile.run::<1, 1>(ch, b, dst, c_out, accumulate) },
                    }
                }
                ch += chs;
            } else {
                ch += 1;
            }
        }
    }

    /// The operands of [`weight_grad_3x3`]'s tiles.
    struct Tile3<'a> {
        planes: &'a [u16],
        pad: &'a super::Padded,
        packed: &'a [u16],
        /// Bytes per packed block of 16 output channels.
        block_bytes: usize,
    }

    impl Tile3<'_> {
        /// Rows `ch·9 ..` (`C` channels' 9 taps each) × columns of blocks `bj .. bj + J` of
        /// dst.
        ///
        /// SAFETY (caller): the CPU has AVX-512 F/BW/BF16; channels `ch .. ch + C` are below
        /// `pad.c` and blocks `bj .. bj + J` below `c_out / 16`.
        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        unsafe fn run<const C: usize, const J: usize>(
            &self,
            ch: usize,
            bj: usize,
            dst: &mut [f32],
            c_out: usize,
            accumulate: bool,
        ) {
            let pad = self.pad;
            let (pw, plane, chan) = (pad.pw(), pad.plane(), pad.channel());
            let image = pad.c * chan;
            let base = self.planes.as_ptr().wrapping_add(ch * chan);
            let b0 = self
                .packed
                .as_ptr()
                .cast::<u8>()
                .wrapping_add(bj * self.block_bytes);
            let geometry = (pw, plane, chan, image);
            // SAFETY: the caller's contract, and the layout's buffers hold what `sweep` reads
            // (asserted by `weight_grad_3x3`).
            let acc: [[[__m512; J]; 9]; C] = unsafe {
                match pad.stride {
                    1 => sweep::<C, J, 1>(
                        base,
                        geometry,
                        (pad.imgs, pad.h, pad.w / 2),
                        b0,
                        self.block_bytes,
                    ),
                    _ => sweep::<C, J, 2>(
                        base,
                        geometry,
                        (pad.imgs, pad.h, pad.w / 2),
                        b0,
                        self.block_bytes,
                    ),
                }
            };
            for (r, acc) in acc.iter().flatten().enumerate() {
                let line = &mut dst[(ch * 9 + r) * c_out..][..c_out];
                for (j, &acc) in acc.iter().enumerate() {
                    let out = &mut line[(bj + j) * 16..][..16];
                    // SAFETY: `out` is 16 floats (sliced above).
                    unsafe {
                        let v = if accumulate {
                            _mm512_add_ps(_mm512_loadu_ps(out.as_ptr()), acc)
                        } else {
                            acc
                        };
                        _mm512_storeu_ps(out.as_mut_ptr(), v);
                    }
                }
            }
        }
    }

    /// The sums of one [`Tile3::run`] tile over every position pair, kept in registers: the
    /// sums are locals of this function that nothing borrows (held in an array a reference
    /// reached, the compiler stored all of them back to memory after every pair).
    ///
    /// SAFETY (caller): the CPU has AVX-512 F/BW/BF16; `base` is channel `ch`'s padded plane
    /// of image 0 and channels `ch .. ch + C` exist; `b0` is block `bj`'s first pair and
    /// blocks `bj .. bj + J`, `block_bytes` apart, hold `imgs·h·half_w` pairs.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn sweep<const C: usize, const J: usize, const S: usize>(
        base: *const u16,
        (pw, plane, chan, image): (usize, usize, usize, usize),
        (imgs, h, half_w): (usize, usize, usize),
        b0: *const u8,
        block_bytes: usize,
    ) -> [[[__m512; J]; 9]; C] {
        // Written out channel by channel and tap by tap (not loops over the rows), so that
        // every sum has a register.
        let mut acc = [[[_mm512_setzero_ps(); J]; 9]; C];
        let mut q = 0usize;
        for img in 0..imgs {
            for y in 0..h {
                let row = base.wrapping_add(img * image + y * pw);
                for xp in 0..half_w {
                    let at = row.wrapping_add(2 * xp);
                    // SAFETY: pair q < imgs·h·half_w of each block (the caller's contract),
                    // 64 bytes each.
                    let b: [__m512bh; J] = std::array::from_fn(|j| unsafe {
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                            b0.wrapping_add(j * block_bytes + q * 64).cast(),
                        ))
                    });
                    // SAFETY (each): output (y, 2·xp) of tap (ty, tx) reads bordered row
                    // y + ty ≤ h + 1 at stride 1 (at stride 2 row y or y + 1 of a phase
                    // plane), columns 2·xp + {0, 1} plus at most 2 ≤ w + 1, of a channel and
                    // image the caller's contract admits (`taps9`).
                    acc[0] = unsafe { taps9::<J, S>(acc[0], at, (pw, plane), &b) };
                    if C > 1 {
                        let at = at.wrapping_add(chan);
                        acc[1] = unsafe { taps9::<J, S>(acc[1], at, (pw, plane), &b) };
                    }
                    if C > 2 {
                        let at = at.wrapping_add(2 * chan);
                        acc[2] = unsafe { taps9::<J, S>(acc[2], at, (pw, plane), &b) };
                    }
                    q += 1;
                }
            }
        }
        acc
    }

    /// One channel's 9 taps at one position pair, tap `(ty, tx)` multiplied into
    /// `acc[3·ty + tx]` with `b`. `at` is output position `(y, 2·xp)` in the channel's first
    /// bordered plane (`+ (y + 1)·pw + 2·xp + 1` from its start, minus one row and column).
    /// At stride 1 the tap reads the pair at `at + ty·pw + tx`. At stride 2 it reads input
    /// row `2y + ty − 1`: phase row `py = (ty + 1) mod 2` at `y − 1` for ty = 0, else at `y`
    /// (and the same for columns), phase plane `2·py + px`.
    ///
    /// SAFETY (caller): the CPU has AVX-512 F/BW/BF16; the 4 bytes at every such address
    /// are readable.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[inline]
    unsafe fn taps9<const J: usize, const S: usize>(
        mut acc: [[__m512; J]; 9],
        at: *const u16,
        (pw, plane): (usize, usize),
        b: &[__m512bh; J],
    ) -> [[__m512; J]; 9] {
        // Per tap row (col): the phase and the row (column) in the bordered plane, relative
        // to `at`.
        let (phase, shift) = if S == 1 {
            ([0, 0, 0], [0, 1, 2])
        } else {
            ([1, 0, 1], [0, 1, 1])
        };
        let rows: [*const u16; 3] =
            std::array::from_fn(|i| at.wrapping_add(phase[i] * 2 * plane + shift[i] * pw));
        let cols: [usize; 3] = std::array::from_fn(|i| phase[i] * plane + shift[i]);
        macro_rules! tap {
            ($ty:literal, $tx:literal) => {{
                // SAFETY: the caller's contract.
                let a = unsafe {
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                        rows[$ty]
                            .wrapping_add(cols[$tx])
                            .cast::<i32>()
                            .read_unaligned(),
                    ))
                };
                let acc = &mut acc[3 * $ty + $tx];
                for j in 0..J {
                    acc[j] = _mm512_dpbf16_ps(acc[j], b[j], a);
                }
            }};
        }
        tap!(0, 0);
        tap!(0, 1);
        tap!(0, 2);
        tap!(1, 0);
        tap!(1, 1);
        tap!(1, 2);
        tap!(2, 0);
        tap!(2, 1);
        tap!(2, 2);
        acc
    }

    /// The 16 × 16 matrix of 32-bit values whose row `i` is `rows[i]`, transposed: row `j` of
    /// the result holds element `j` of every input row. Two rounds of unpacking within the
    /// 128-bit lanes, then two of moving whole lanes.
    #[target_feature(enable = "avx512f")]
    pub(super) fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        // u[4g + j], lane L: rows 4g .. 4g + 3 at column 4L + j.
        let mut u = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let b = 4 * g;
            u[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
            u[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
            u[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
            u[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
        }
        let mut out = [_mm512_setzero_si512(); 16];
        for j in 0..4 {
            let (a, b, c, d) = (u[j], u[4 + j], u[8 + j], u[12 + j]);
            // Lanes (a0, a2, b0, b2) and (a1, a3, b1, b3), the same of c and d ...
            let v0 = _mm512_shuffle_i32x4::<0x88>(a, b);
            let v1 = _mm512_shuffle_i32x4::<0xdd>(a, b);
            let w0 = _mm512_shuffle_i32x4::<0x88>(c, d);
            let w1 = _mm512_shuffle_i32x4::<0xdd>(c, d);
            // ... then column 4L + j is lane L of a, b, c and d side by side.
            out[j] = _mm512_shuffle_i32x4::<0x88>(v0, w0);
            out[8 + j] = _mm512_shuffle_i32x4::<0xdd>(v0, w0);
            out[4 + j] = _mm512_shuffle_i32x4::<0x88>(v1, w1);
            out[12 + j] = _mm512_shuffle_i32x4::<0xdd>(v1, w1);
        }
        out
    }

    /// Packs [`Patches`] as B, as `pack_b_rows` packs a matrix: every element of `out`'s
    /// `nb · kb` blocks written.
    pub(super) fn pack_b_patches(b: &Patches<'_>, out: &mut [u16], nb: usize, kb: usize, dot: Dot) {
        assert!(out.len() >= nb * kb * TILE);
        let _ = dot;
        // SAFETY: `dot` exists, so the CPU has AVX-512 F/BW/BF16.
        unsafe { pack_b_patches_avx512(b, out, nb, kb) }
    }

    /// Packs [`Patches`] as A (rows = patch rows, the reduction along the positions), as
    /// `pack_a_rows` packs a matrix.
    pub(super) fn pack_a_patches(a: &Patches<'_>, out: &mut [u16], mb: usize, kb: usize, dot: Dot) {
        assert!(out.len() >= mb * kb * TILE);
        let _ = dot;
        // SAFETY: as in `pack_b_patches`.
        unsafe { pack_a_patches_avx512(a, out, mb, kb) }
    }

    /// The 16 values of a patch row's block at `at` (zero where the window overhangs, past
    /// the last row or image), as f32.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn patch_block(p: &Patches<'_>, row: Option<&PatchRow<'_>>, at: &Cursor) -> __m512 {
        let Some(row) = row else {
            return _mm512_setzero_ps();
        };
        let (ptr, mask) = at.lanes(p, row);
        // SAFETY: a lane is in the mask only where its window's element lies inside its
        // plane (`PatchGeometry::new`), so it reads a plane of channel `ch` of image `at.img`
        // (< images, `Cursor::lanes`), which `Patches::new` checked `x` holds. Masked-off
        // lanes are not accessed, so the address may lie outside `x`.
        unsafe { _mm512_maskz_loadu_ps(mask, ptr) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_b_patches_avx512(b: &Patches<'_>, out: &mut [u16], nb: usize, kb: usize) {
        let idx = pair_index();
        for pp in 0..kb * 16 {
            let (bk, r) = (pp / 16, pp % 16);
            let (r0, r1) = (b.row(2 * pp), b.row(2 * pp + 1));
            let mut at = Cursor::START;
            for bj in 0..nb {
                let (first, second) = (
                    patch_block(b, r0.as_ref(), &at),
                    patch_block(b, r1.as_ref(), &at),
                );
                at.advance(b);
                store_pair(
                    &mut out[(bj * kb + bk) * TILE + r * 32..],
                    idx,
                    first,
                    second,
                );
            }
        }
    }

    /// `p`'s images (or phase planes) as bf16 channel pairs into `out`: image `i`, pair `q`
    /// holds `plane_len` 32-bit words, word `e` the even channel's element `e` in its low
    /// half and the odd one's in its high half (zero past an odd last channel). What
    /// [`pairs_product`] reads its right operand from.
    pub(super) fn interleave(p: &Patches<'_>, out: &mut [u16], dot: Dot) {
        let _ = dot;
        let (pl, pairs) = (p.geometry.plane_len(), p.c.div_ceil(2));
        assert!(out.len() >= p.images * pairs * pl * 2 && pl.is_multiple_of(16));
        // SAFETY: `dot` exists, so the CPU has AVX-512 F/BW/BF16.
        unsafe { interleave_avx512(p, out, pl, pairs) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn interleave_avx512(p: &Patches<'_>, out: &mut [u16], pl: usize, pairs: usize) {
        let idx = pair_index();
        for img in 0..p.images {
            let image = &p.x[img * p.image_len..][..p.image_len];
            for q in 0..pairs {
                let even = &image[2 * q * pl..][..pl];
                let odd = (2 * q + 1 < p.c).then(|| &image[(2 * q + 1) * pl..][..pl]);
                let dst = &mut out[(img * pairs + q) * pl * 2..][..pl * 2];
                for (e, dst) in dst.chunks_exact_mut(32).enumerate() {
                    // SAFETY: 16 floats at 16·e < pl of each plane (`pl` is a multiple of 16).
                    let (lo, hi) = unsafe {
                        (
                            _mm512_loadu_ps(even.as_ptr().add(16 * e)),
                            odd.map_or(_mm512_setzero_ps(), |o| {
                                _mm512_loadu_ps(o.as_ptr().add(16 * e))
                            }),
                        )
                    };
                    store_pair(dst, idx, lo, hi);
                }
            }
        }
    }

    /// `out = a · patches` (or `+=`) from the channel-pair-packed weight and the patches'
    /// images interleaved by [`interleave`] into `pairs`: each column block's k-pair rows are
    /// masked loads of the interleaved planes at the tap's shift, so the patch matrix is
    /// never packed. C in tiles of 8 rows × 32 columns (two column blocks), the channel pairs
    /// in chunks of about 128 k-pairs so that the weight's chunk for every row block stays in
    /// L2 while the column blocks sweep over it (as in [`avx512`]).
    pub(super) fn pairs_product(
        a: &super::PackedPairs,
        b: &Patches<'_>,
        pairs: &[u16],
        out: Out<'_>,
        dot: Dot,
    ) {
        let _ = dot;
        // SAFETY: `dot` exists, so the CPU has AVX-512 F/BW/BF16.
        unsafe { pairs_avx512(a, b, pairs, out) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pairs_avx512(a: &super::PackedPairs, b: &Patches<'_>, pairs: &[u16], mut out: Out<'_>) {
        let g = b.geometry;
        let (taps, blocks) = (g.taps.len(), g.blocks);
        let (pl, cps) = (g.plane_len(), b.c.div_ceil(2));
        let (m, n) = (out.m, out.n);
        let nb = n / 16;
        assert!(n.is_multiple_of(16) && nb == b.images * blocks);
        assert!(pairs.len() >= b.images * cps * pl * 2);
        assert!(a.data.len() >= m.div_ceil(16) * cps * taps * 16);
        let chunk = (128 / taps).max(1);
        // Bytes per image and per channel pair (the taps' offsets are in words).
        let (image_bytes, pair_bytes) = ((cps * pl * 4) as isize, (pl * 4) as isize);
        let block = |j: usize| {
            let (img, blk) = (j / blocks, j % blocks);
            let at = img as isize * image_bytes + (blk * 64) as isize;
            (
                pairs.as_ptr().cast::<u8>().wrapping_offset(at),
                &g.block_masks[blk * taps..][..taps],
            )
        };
        for p0 in (0..cps).step_by(chunk) {
            let p1 = (p0 + chunk).min(cps);
            let add = out.accumulate || p0 > 0;
            for bj in (0..nb).step_by(2) {
                // A last odd block is computed twice and stored once.
                let pair = bj + 1 < nb;
                let ((b0, m0), (b1, m1)) = (block(bj), block(if pair { bj + 1 } else { bj }));
                for bi in 0..m.div_ceil(16) {
                    let i0 = bi * 16;
                    for half in 0..(m - i0).div_ceil(8).min(2) {
                        let rows = &a.data[(bi * cps * taps) * 16 + half * 8..];
                        let mut acc = [[_mm512_setzero_ps(); 8]; 2];
                        // SAFETY: `rows` holds the pairs p0..p1 of its block (asserted
                        // above); every lane a mask admits reads an element of its pair's
                        // plane (`PatchGeometry` masks the lanes whose window overhangs), of
                        // an image `pairs` holds (asserted); the CPU has AVX512-BF16 (`dot`).
                        unsafe {
                            pair_dot2(
                                rows,
                                [b0, b1],
                                (&g.offsets, [m0, m1]),
                                (p0, p1, pair_bytes),
                                &mut acc,
                            )
                        };
                        let r0 = i0 + half * 8;
                        store(&mut out, &acc[0], r0, bj * 16, add);
                        if pair {
                            store(&mut out, &acc[1], r0, bj * 16 + 16, add);
                        }
                    }
                }
            }
        }
    }

    /// `acc[c][r] += Σ_{p0 ≤ p < p1} Σ_t A[r][p·T + t] · B_c[p·T + t]` for 8 rows of A
    /// (`rows`: pair `q`'s row `r` at `q·16 + r`) and two column blocks `c` of the
    /// interleaved patches, whose k-pair row `(p, t)` is 16 words at
    /// `b[c] + p·pair_bytes + 4·offsets[t]` under mask `masks[c][t]` (`offsets` in words,
    /// the geometry's own).
    ///
    /// SAFETY (caller): `rows` holds pairs `p1·T` of 16 words; every admitted lane lies in
    /// the allocation `b` points into; the CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pair_dot2(
        rows: &[u32],
        b: [*const u8; 2],
        (offsets, masks): (&[isize], [&[u16]; 2]),
        (p0, p1, pair_bytes): (usize, usize, isize),
        acc: &mut [[__m512; 8]; 2],
    ) {
        let taps = offsets.len();
        assert!(rows.len() >= (p1 * taps - 1) * 16 + 8 || p1 == p0);
        let mut c = *acc;
        for p in p0..p1 {
            let (b0, b1) = (
                b[0].wrapping_offset(p as isize * pair_bytes),
                b[1].wrapping_offset(p as isize * pair_bytes),
            );
            let a = rows[p * taps * 16..].as_ptr();
            for (t, ((&off, &k0), &k1)) in offsets.iter().zip(masks[0]).zip(masks[1]).enumerate() {
                // SAFETY: the caller's contract: admitted lanes lie in the allocation.
                let (v0, v1) = unsafe {
                    (
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi32(
                            k0,
                            b0.wrapping_offset(off * 4).cast(),
                        )),
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi32(
                            k1,
                            b1.wrapping_offset(off * 4).cast(),
                        )),
                    )
                };
                let [c0, c1] = &mut c;
                for (r, (c0, c1)) in c0.iter_mut().zip(c1.iter_mut()).enumerate() {
                    // SAFETY: pair p·T + t's row r < 8 of `rows` (asserted length).
                    let w = unsafe {
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                            *a.add(t * 16 + r) as i32,
                        ))
                    };
                    *c0 = _mm512_dpbf16_ps(*c0, v0, w);
                    *c1 = _mm512_dpbf16_ps(*c1, v1, w);
                }
            }
        }
        *acc = c;
    }

    /// `out = a · patches` (or `+=`) in f32 from the tap-packed weight, each column block's
    /// k rows masked loads of the patches' own planes at the tap's shift: the structure of
    /// [`pairs_product`] with one channel per k row instead of a pair and FMAs instead of
    /// `vdpbf16ps`, so nothing of the patch matrix is unfolded or packed. A tap whose window
    /// overhangs both column blocks entirely (the top and bottom rows of a plane at least
    /// 16 wide) is skipped.
    pub(super) fn taps_product(a: &super::PackedTaps, b: &Patches<'_>, out: Out<'_>, fma: Fma) {
        let _ = fma;
        // SAFETY: `fma` exists, so the CPU has AVX-512F.
        unsafe { taps_avx512(a, b, out) }
    }

    /// Column blocks per tile of [`taps_avx512`]: 8 rows × 3 blocks, 24 accumulators.
    const TAP_BLOCKS: usize = 3;

    #[target_feature(enable = "avx512f")]
    fn taps_avx512(a: &super::PackedTaps, b: &Patches<'_>, mut out: Out<'_>) {
        const N: usize = TAP_BLOCKS;
        let g = b.geometry;
        let (taps, blocks, c) = (g.taps.len(), g.blocks, b.c);
        let (m, n) = (out.m, out.n);
        let nb = n / 16;
        assert!(n.is_multiple_of(16) && nb == b.images * blocks);
        assert!(b.x.len() >= b.images * b.image_len);
        assert!(a.data.len() >= m.div_ceil(16) * c * taps * 16);
        // Channels per chunk: the weight's chunk for every row block stays in L2 while the
        // column blocks sweep over it.
        let chunk = (128 / taps).max(1);
        // Bytes per image and per channel (the taps' offsets are in words).
        let (image_bytes, plane_bytes) = ((b.image_len * 4) as isize, (g.plane_len() * 4) as isize);
        let block = |j: usize| {
            let (img, blk) = (j / blocks, j % blocks);
            let at = img as isize * image_bytes + (blk * 64) as isize;
            (
                b.x.as_ptr().cast::<u8>().wrapping_offset(at),
                &g.block_masks[blk * taps..][..taps],
            )
        };
        for c0 in (0..c).step_by(chunk) {
            let c1 = (c0 + chunk).min(c);
            let add = out.accumulate || c0 > 0;
            for bj in (0..nb).step_by(N) {
                // Past the last block the tile repeats it; only blocks below nb are stored.
                let tile: [(*const u8, &[u16]); N] =
                    std::array::from_fn(|j| block((bj + j).min(nb - 1)));
                let ptrs = tile.map(|(p, _)| p);
                let masks = tile.map(|(_, k)| k);
                for bi in 0..m.div_ceil(16) {
                    let i0 = bi * 16;
                    for half in 0..(m - i0).div_ceil(8).min(2) {
                        let rows = &a.data[(bi * c * taps) * 16 + half * 8..];
                        let mut acc = [[_mm512_setzero_ps(); 8]; N];
                        // SAFETY: `rows` holds the k rows c0·T..c1·T of its block (asserted
                        // above); every lane a mask admits reads an element of its
                        // channel's plane (`PatchGeometry` masks the lanes whose window
                        // overhangs), of an image `b.x` holds (asserted); the CPU has
                        // AVX-512F (`taps_product`'s `Fma`).
                        unsafe {
                            tap_dot(
                                rows,
                                ptrs,
                                (&g.offsets, masks),
                                (c0, c1, plane_bytes),
                                &mut acc,
                            )
                        };
                        let r0 = i0 + half * 8;
                        for (j, acc) in acc.iter().enumerate().take(nb - bj) {
                            store(&mut out, acc, r0, (bj + j) * 16, add);
                        }
                    }
                }
            }
        }
    }

    /// `acc[j][r] += Σ_{c0 ≤ ch < c1} Σ_t A[r][ch·T + t] · B_j[ch·T + t]` for 8 rows of A
    /// (`rows`: k row `q`'s row `r` at `q·16 + r`) and `N` column blocks `j` of the patches,
    /// whose k row `(ch, t)` is 16 floats at `b[j] + ch·plane_bytes + 4·offsets[t]` under
    /// mask `masks[j][t]` (`offsets` in words, the geometry's own). A tap no block admits a
    /// lane of is skipped.
    ///
    /// SAFETY (caller): `rows` holds `c1·T` k rows of 16 values; every admitted lane lies in
    /// the allocation `b` points into; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn tap_dot<const N: usize>(
        rows: &[f32],
        b: [*const u8; N],
        (offsets, masks): (&[isize], [&[u16]; N]),
        (c0, c1, plane_bytes): (usize, usize, isize),
        acc: &mut [[__m512; 8]; N],
    ) {
        let taps = offsets.len();
        assert!(rows.len() >= (c1 * taps - 1) * 16 + 8 || c1 == c0);
        assert!(masks.iter().all(|m| m.len() == taps));
        let mut c = *acc;
        for ch in c0..c1 {
            let base = b.map(|p| p.wrapping_offset(ch as isize * plane_bytes));
            let a = rows[ch * taps * 16..].as_ptr();
            for (t, &off) in offsets.iter().enumerate() {
                let k: [u16; N] = std::array::from_fn(|j| masks[j][t]);
                if k.iter().all(|&k| k == 0) {
                    continue;
                }
                // SAFETY: the caller's contract: admitted lanes lie in the allocation.
                let v: [__m512; N] = std::array::from_fn(|j| unsafe {
                    _mm512_maskz_loadu_ps(k[j], base[j].wrapping_offset(off * 4).cast())
                });
                // Row r's weight is broadcast once for all N blocks: the loops index both
                // axes of `c`, which iterators would not make clearer.
                #[allow(clippy::needless_range_loop)]
                for r in 0..8 {
                    // SAFETY: k row ch·T + t's row r < 8 of `rows` (asserted length).
                    let w = unsafe { _mm512_set1_ps(*a.add(t * 16 + r)) };
                    for j in 0..N {
                        c[j][r] = _mm512_fmadd_ps(v[j], w, c[j][r]);
                    }
                }
            }
        }
        *acc = c;
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_a_patches_avx512(a: &Patches<'_>, out: &mut [u16], mb: usize, kb: usize) {
        for i in 0..mb * 16 {
            let (bi, r) = (i / 16, i % 16);
            let row = a.row(i);
            let mut at = Cursor::START;
            for bk in 0..kb {
                let lo = patch_block(a, row.as_ref(), &at);
                at.advance(a);
                let hi = patch_block(a, row.as_ref(), &at);
                at.advance(a);
                store_bf16(
                    &mut out[(bi * kb + bk) * TILE + r * 32..],
                    _mm512_cvtne2ps_pbh(hi, lo),
                );
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernels {
    use super::{Dot, Fma, Out, Patches, Unit};

    /// As `run`: no `Dot` exists here.
    pub(super) fn pack_pairs(
        _: super::MatRef<'_, f32>,
        _: (usize, usize, usize),
        _: &mut [u32],
        _: Dot,
    ) {
        unreachable!("bf16 dot-product units exist only on x86-64")
    }

    pub(super) fn pack_b_patches(_: &Patches<'_>, _: &mut [u16], _: usize, _: usize, _: Dot) {
        unreachable!("bf16 dot-product units exist only on x86-64")
    }

    pub(super) fn pack_a_patches(_: &Patches<'_>, _: &mut [u16], _: usize, _: usize, _: Dot) {
        unreachable!("bf16 dot-product units exist only on x86-64")
    }

    pub(super) fn interleave(_: &Patches<'_>, _: &mut [u16], _: Dot) {
        unreachable!("bf16 dot-product units exist only on x86-64")
    }

    pub(super) fn round_row(_: &[f32], _: &mut [u16], _: Dot) {
        unreachable!("bf16 dot-product units exist only on x86-64")
    }

    pub(super) fn weight_grad_3x3(
        _: &mut [f32],
        _: &[u16],
        _: &super::Padded,
        _: &[u16],
        _: (usize, usize),
        _: bool,
        _: Dot,
    ) {
        unreachable!("bf16 dot-product units exist only on x86-64")
    }

    pub(super) fn pairs_product(
        _: &super::PackedPairs,
        _: &Patches<'_>,
        _: &[u16],
        _: Out<'_>,
        _: Dot,
    ) {
        unreachable!("bf16 dot-product units exist only on x86-64")
    }

    /// No `Fma` can exist off x86-64 either.
    pub(super) fn taps_product(_: &super::PackedTaps, _: &Patches<'_>, _: Out<'_>, _: Fma) {
        unreachable!("the AVX-512F patch product exists only on x86-64")
    }

    /// No `Dot` can exist off x86-64 (`Dot::usable` is empty), so this never runs.
    pub(super) fn run(_: Unit, _: &[u16], _: &[u16], _: usize, _: usize, _: usize, _: Out<'_>) {
        unreachable!("bf16 dot-product units exist only on x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_register_transpose_is_the_transpose() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        use std::arch::x86_64::*;
        let m: Vec<u32> = (0..256).map(|i| i * 7 + 3).collect();
        let mut got = vec![0u32; 256];
        // SAFETY: AVX-512F was detected above; each load and store is 16 u32 inside `m` or
        // `got` (256 each).
        unsafe {
            let rows: [__m512i; 16] =
                std::array::from_fn(|i| _mm512_loadu_si512(m.as_ptr().add(16 * i).cast()));
            let t = kernels::transpose16(rows);
            for (i, row) in t.iter().enumerate() {
                _mm512_storeu_si512(got.as_mut_ptr().add(16 * i).cast(), *row);
            }
        }
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(got[16 * j + i], m[16 * i + j], "element ({i}, {j})");
            }
        }
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let x = (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(seed.wrapping_mul(40_503));
                (x % 20_011) as f32 / 10_005.0 - 1.0
            })
            .collect()
    }

    /// The tap-wise weight gradient against its definition on the rounded inputs (f64 sums),
    /// on a plane wider than it is tall (the border and the row pitch are the layout's own),
    /// with one, two and three channels per tile and a pair of blocks plus an odd one, added
    /// into what `dst` held.
    #[test]
    fn the_tap_wise_weight_gradient_is_its_definition() {
        let Some(dot) = Dot::usable().last().copied() else {
            eprintln!("this CPU has no bf16 dot-product unit: nothing to compare");
            return;
        };
        let rounded = |v: &[f32]| {
            v.iter()
                .map(|&x| f64::from(widen(round(x))))
                .collect::<Vec<_>>()
        };
        for (imgs, c, h, w, c_out, s) in [
            (2, 4, 3, 6, 48, 1),
            (3, 1, 5, 2, 16, 1),
            (1, 5, 4, 8, 32, 1),
            (2, 4, 6, 12, 48, 2),
            (3, 1, 2, 4, 16, 2),
            (1, 5, 8, 16, 32, 2),
        ] {
            let (oh, ow) = (h / s, w / s);
            let (l, shape) = (oh * ow, (imgs, c, h, w, c_out));
            let x = values(imgs * c * h * w, 11);
            let dy = values(c_out * imgs * l, 12);
            let before = values(c * 9 * c_out, 13);
            let (xr, dyr) = (rounded(&x), rounded(&dy));
            let mut want = vec![0f32; c * 9 * c_out];
            for ch in 0..c {
                for t in 0..9 {
                    let (ty, tx) = ((t / 3) as isize - 1, (t % 3) as isize - 1);
                    let s = s as isize;
                    for o in 0..c_out {
                        let mut sum = 0f64;
                        for i in 0..imgs {
                            for y in 0..oh as isize {
                                for xx in 0..ow as isize {
                                    let (sy, sx) = (s * y + ty, s * xx + tx);
                                    if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                        continue;
                                    }
                                    let xv =
                                        xr[(i * c + ch) * h * w + (sy as usize) * w + sx as usize];
                                    let p = i * l + (y as usize) * ow + xx as usize;
                                    sum += xv * dyr[o * imgs * l + p];
                                }
                            }
                        }
                        want[(ch * 9 + t) * c_out + o] =
                            (sum + f64::from(before[(ch * 9 + t) * c_out + o])) as f32;
                    }
                }
            }
            let mut got = before.clone();
            weight_grad_3x3(&mut got, &x, &dy, shape, s, true, dot);
            let e = max_rel(&got, &want);
            assert!(e < 1e-5, "{shape:?} stride {s}: {e}");
            let mut fresh = before.clone();
            weight_grad_3x3(&mut fresh, &x, &dy, shape, s, false, dot);
            let sums: Vec<f32> = want.iter().zip(&before).map(|(w, b)| w - b).collect();
            let e = max_rel(&fresh, &sums);
            assert!(e < 1e-5, "{shape:?} written, not added: {e}");
        }
    }

    fn max_rel(got: &[f32], want: &[f32]) -> f32 {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
        got.iter()
            .zip(want)
            .fold(0f32, |m, (g, w)| m.max((g - w).abs() / scale))
    }

    #[test]
    fn the_phase_split_takes_every_phase_plane_element_from_its_place() {
        // Stride 2 (the compile-time gathers) and 3 (the general loop), 3 × 3 and 1 × 1.
        for (side, k, s) in [(32, 3, 2), (16, 1, 2), (48, 3, 3)] {
            let g = PatchGeometry::new((side, side), k, s).expect("geometry");
            let c = 3;
            let image: Vec<f32> = (0..c * side * side).map(|v| v as f32).collect();
            let mut dst = vec![f32::NAN; c * g.plane_len()];
            g.split(&image, c, &mut dst);
            let (h, w) = (side / s, side / s);
            let mut want = Vec::new();
            for ch in 0..c {
                for &(py, px) in &g.phases {
                    for y in 0..h {
                        for x in 0..w {
                            want.push(image[(ch * side + s * y + py) * side + s * x + px]);
                        }
                    }
                }
            }
            assert_eq!(dst, want, "side {side}, k {k}, stride {s}");
        }
    }

    #[test]
    fn rounding_is_to_nearest_even_and_flushes_denormals() {
        assert_eq!(widen(round(1.0)), 1.0);
        // 1 + 2⁻⁸ is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(widen(round(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(widen(round(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert_eq!(round(f32::MIN_POSITIVE / 4.0), 0);
        assert_eq!(round(-f32::MIN_POSITIVE / 4.0), 0x8000);
        assert!(widen(round(f32::NAN)).is_nan());
        assert_eq!(widen(round(f32::INFINITY)), f32::INFINITY);
    }

    #[test]
    fn every_unit_matches_the_reference_on_every_layout_and_edge() {
        let units = Dot::usable();
        if units.is_empty() {
            eprintln!("this CPU has no bf16 dot-product unit: only the reference is checked");
        }
        // Sizes on and off the 16/32 block edges, and the shapes a convolution uses.
        let shapes = [
            (1, 1, 1),
            (16, 32, 16),
            (17, 33, 19),
            (31, 64, 48),
            (64, 147, 256),
            (5, 600, 7),
            (40, 9, 100),
            // Three stripes of `PackedA::new`'s parallel packing, the last one ragged.
            (150, 40, 20),
        ];
        for dot in units {
            for &(m, k, n) in &shapes {
                let a = values(m * k, 1);
                let b = values(k * n, 2);
                let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
                let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
                let want = reference(MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
                let views = [
                    (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n)),
                    (
                        MatRef::row_major(&at, k, m).t(),
                        MatRef::row_major(&bt, n, k).t(),
                    ),
                ];
                for (va, vb) in views {
                    let mut got = vec![7.0; m * n];
                    matmul(&mut got, va, vb, false, dot);
                    let e = max_rel(&got, &want);
                    assert!(e < 1e-5, "{:?} {m}×{k}×{n}: relative error {e}", dot.unit());
                    // Accumulating adds the product once more; a packed A gives the same.
                    matmul_packed(&mut got, &PackedA::new(va, dot), vb, true, dot);
                    let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
                    let e = max_rel(&got, &twice);
                    assert!(
                        e < 1e-5,
                        "{:?} {m}×{k}×{n} accumulated: relative error {e}",
                        dot.unit()
                    );
                }
            }
        }
    }

    /// The vector packing of [`PackedPairs`] gives the scalar loop's words bit for bit: taps
    /// below, at and past one 16-lane load (1, 9, 16, 25, 49), odd channel counts (a last
    /// pair with a zero high half), rows that end inside a block, rows wider than the
    /// weight, and values that round to even, overflow to infinity, are denormal or NaN.
    #[test]
    fn the_vector_pair_packing_is_the_scalar_one() {
        for dot in Dot::usable() {
            if dot.unit() != Unit::Avx512Bf16 {
                continue;
            }
            for (rows, channels, taps, extra) in [
                (16, 4, 9, 0),
                (7, 3, 9, 5),
                (33, 5, 1, 0),
                (20, 2, 16, 3),
                (17, 7, 25, 0),
                (5, 3, 49, 2),
            ] {
                let stride = channels * taps + extra;
                let mut a = values(rows * stride, 9);
                let specials = [
                    f32::from_bits(0x3f80_8000),
                    f32::from_bits(0x3f81_8000),
                    f32::MAX,
                    1e-40,
                    -1e-41,
                    f32::NAN,
                    -0.0,
                    f32::INFINITY,
                ];
                for (v, s) in a.iter_mut().step_by(7).zip(specials.iter().cycle()) {
                    *v = *s;
                }
                let m = MatRef {
                    data: &a,
                    rows,
                    cols: channels * taps,
                    row_stride: stride,
                    col_stride: 1,
                };
                let vector = PackedPairs::new(m, taps, dot);
                let scalar = PackedPairs::packed_with(m, taps, dot, false);
                assert!(
                    vector.data == scalar.data,
                    "{rows} rows, {channels} channels, {taps} taps"
                );
            }
        }
    }

    /// The packed-block path of a patch product (AMX's) checked against the channel-pair
    /// path on every unit this CPU has, so that it stays tested where AMX is missing; the
    /// pair path itself is held to the f64 convolution in `cpu.rs`.
    #[test]
    fn both_patch_weight_layouts_give_the_same_product() {
        // (channels, rows, side, k, stride, images)
        let cases = [
            (5, 7, 8, 3, 1, 3),
            (40, 18, 16, 3, 1, 1),
            (3, 20, 16, 3, 2, 2),
            (6, 5, 4, 1, 1, 5),
            (260, 9, 4, 1, 1, 2),
            (3, 17, 32, 7, 2, 1),
        ];
        for dot in Dot::usable() {
            for (c, m, side, k, stride, images) in cases {
                let geometry = PatchGeometry::new((side, side), k, stride).expect("a geometry");
                let x = values(images * c * geometry.plane_len(), 3);
                let patches = Patches::new(&x, images, c, &geometry).expect("patches");
                let a = values(m * c * k * k, 4);
                let am = MatRef::row_major(&a, m, c * k * k);
                let n = patches.cols();
                let weights = [
                    PatchWeight::new(am, k * k, dot),
                    PatchWeight {
                        layout: PatchLayout::Blocks(PackedA::new(am, dot), dot),
                    },
                    PatchWeight {
                        layout: PatchLayout::Pairs(PackedPairs::new(am, k * k, dot), dot),
                    },
                ];
                let products: Vec<Vec<f32>> = weights
                    .iter()
                    .map(|w| {
                        let mut got = vec![7.0; m * n];
                        matmul_patches(&mut got, w, &patches, false);
                        // Accumulating adds the product once more.
                        let mut twice = got.clone();
                        matmul_patches(&mut twice, w, &patches, true);
                        let doubled: Vec<f32> = got.iter().map(|v| 2.0 * v).collect();
                        let e = max_rel(&twice, &doubled);
                        assert!(e < 1e-6, "{c}×{m} {side}² k{k} s{stride}: accumulate {e}");
                        got
                    })
                    .collect();
                for other in &products[1..] {
                    let e = max_rel(other, &products[0]);
                    assert!(
                        e < 1e-5,
                        "{c}×{m} {side}² k{k} s{stride}: layouts differ by {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_vector_conversion_rounds_as_the_scalar_one_does() {
        for dot in Dot::usable() {
            // Ties, denormals, infinities and NaN through the packing's vector path.
            let specials = [
                1.0 + 1.0 / 256.0,
                1.0 + 3.0 / 256.0,
                f32::MIN_POSITIVE / 4.0,
                -1e-40,
                f32::INFINITY,
                -0.0,
                3.4e38,
            ];
            let mut a = values(32, 3);
            a[..specials.len()].copy_from_slice(&specials);
            let mut packed = Vec::new();
            pack_a(MatRef::row_major(&a, 1, 32), &mut packed, dot);
            for (p, &x) in a.iter().enumerate() {
                assert_eq!(packed[p], round(x), "{:?}: {x:e}", dot.unit());
            }
        }
    }

    #[test]
    fn the_unit_named_in_the_environment_is_honoured_and_an_unknown_name_refused() {
        let (amx, avx) = (
            Dot { unit: Unit::Amx },
            Dot {
                unit: Unit::Avx512Bf16,
            },
        );
        assert_eq!(choose(None, &[amx, avx]), Ok(Some(amx)));
        assert_eq!(choose(Some(" "), &[avx]), Ok(Some(avx)));
        assert_eq!(choose(Some("avx512-bf16"), &[amx, avx]), Ok(Some(avx)));
        assert_eq!(choose(Some("amx"), &[avx]), Ok(None));
        assert_eq!(choose(Some("off"), &[amx, avx]), Ok(None));
        assert_eq!(choose(None, &[]), Ok(None));
        let err = choose(Some("tf32"), &[amx]).expect_err("an unknown unit");
        assert!(err.contains(UNIT_ENV) && err.contains("tf32"), "{err}");
        if let Some(d) = Dot::detect() {
            assert!(Dot::usable().contains(&d));
        }
    }

    /// Not a check: single-threaded GFLOP/s of each unit against gemm's f32 on a
    /// convolution's shapes, packing included (`cargo test --release --lib
    /// bf16_products_speed -- --ignored --nocapture`); Bᵀ is the weight gradient's layout.
    #[test]
    #[ignore]
    fn bf16_products_speed() {
        let shapes = [
            (64, 576, 1024),
            (16, 144, 1024),
            (32, 288, 256),
            (128, 1152, 64),
            (256, 2304, 256),
            (512, 4608, 256),
        ];
        for (m, k, n) in shapes {
            let a = values(m * k, 4);
            let b = values(k * n, 5);
            let mut d = vec![0f32; m * n];
            let reps = 200;
            let flops = 2.0 * (m * k * n * reps) as f64;
            let gflops = |f: &mut dyn FnMut()| {
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    f();
                }
                flops / t.elapsed().as_secs_f64() / 1e9
            };
            let (am, bm) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
            let f32s = gflops(&mut || super::super::gemm::matmul(&mut d, am, bm, false));
            let mut line = format!("{m}×{k}×{n}: gemm f32 {f32s:.0} GFLOP/s");
            for dot in Dot::usable() {
                let pa = PackedA::new(am, dot);
                let g = gflops(&mut || matmul_packed(&mut d, &pa, bm, false, dot));
                let bt = MatRef::row_major(&b, n, k).t();
                let gt = gflops(&mut || matmul_packed(&mut d, &pa, bt, false, dot));
                line += &format!(", {} {g:.0} (Bᵀ {gt:.0})", dot.unit().label());
            }
            println!("{line}");
        }
    }
}
