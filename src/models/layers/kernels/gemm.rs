//! Matrix products on slices through the gemm crate (the kernels Candle's CPU matmul uses),
//! for the CPU convolution, which multiplies one image's patch matrix at a time inside its
//! own parallel loop — a Candle `matmul` would need a tensor per image and would spawn its
//! own threads inside annt's.
//!
//! `gemm::gemm` takes raw pointers and strides; [`matmul`] checks every extent against the
//! slices first, so the one `unsafe` call cannot read or write out of bounds. This module
//! and the CUDA modules are the only places `unsafe` is allowed in annt's kernels.

#![allow(unsafe_code)]

use super::real::Real;

/// A read-only matrix view: element (r, c) is `data[r·row_stride + c·col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    pub(super) data: &'a [T],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: usize,
    pub(super) col_stride: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// `rows × cols`, row-major and dense.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// `rows × cols` with the given strides over `data` (a block of columns of a wider
    /// matrix: one attention head's queries inside the rows of `[q | k | v]`).
    pub fn strided(
        data: &'a [T],
        (rows, cols): (usize, usize),
        (row_stride, col_stride): (usize, usize),
    ) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element the view addresses lies inside its slice.
    pub(super) fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .and_then(|a| (self.cols - 1).checked_mul(self.col_stride).map(|b| (a, b)))
            .and_then(|(a, b)| a.checked_add(b));
        last.is_some_and(|l| l < self.data.len())
    }
}

/// `dst (m × n, row-major) = a · b`, or `dst += a · b` with `accumulate`; single-threaded
/// (callers parallelise over images). Panics on mismatched shapes or views that leave their
/// slices — a bug in the caller, never a property of the data.
pub fn matmul<T: Real>(dst: &mut [T], a: MatRef<'_, T>, b: MatRef<'_, T>, accumulate: bool) {
    matmul_threads(dst, a, b, accumulate, 1)
}

/// A writable matrix view: element (r, c) is `data[r·row_stride + c·col_stride]` — a
/// block of columns of a wider matrix, or a matrix interleaved with others (a convolution
/// tap's slice of a weight gradient).
#[derive(Debug)]
pub struct MatMut<'a, T> {
    pub(super) data: &'a mut [T],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: usize,
    pub(super) col_stride: usize,
}

impl<'a, T> MatMut<'a, T> {
    /// `rows × cols` with the given strides over `data`.
    pub fn strided(
        data: &'a mut [T],
        (rows, cols): (usize, usize),
        (row_stride, col_stride): (usize, usize),
    ) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// The same extents as a read-only view (for the bounds check).
    fn as_ref(&self) -> MatRef<'_, T> {
        MatRef {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }
}

/// [`matmul`] on `threads` of rayon's pool (gemm splits the output; each element is still
/// one reduction in one order).
pub fn matmul_threads<T: Real>(
    dst: &mut [T],
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    accumulate: bool,
    threads: usize,
) {
    let (m, n) = (a.rows, b.cols);
    assert_eq!(
        b.rows, a.cols,
        "matmul: inner dimensions {} and {}",
        a.cols, b.rows
    );
    assert!(
        dst.len() >= m * n,
        "matmul: destination holds {} < {m}×{n}",
        dst.len()
    );
    matmul_into(
        MatMut::strided(dst, (m, n), (n, 1)),
        a,
        b,
        accumulate,
        threads,
    );
}

/// `dst = a · b` (or `+=`) into a strided view, on `threads` of rayon's pool. Panics on
/// mismatched shapes or views that leave their slices, as [`matmul`].
pub fn matmul_into<T: Real>(
    dst: MatMut<'_, T>,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    accumulate: bool,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner dimensions {k} and {}", b.rows);
    assert!(
        dst.rows == m && dst.cols == n,
        "matmul: destination is {}×{}, the product {m}×{n}",
        dst.rows,
        dst.cols
    );
    assert!(
        a.in_bounds() && b.in_bounds() && dst.as_ref().in_bounds(),
        "matmul: a view leaves its slice"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for c in 0..n {
                    dst.data[r * dst.row_stride + c * dst.col_stride] = T::zero();
                }
            }
        }
        return;
    }
    // SAFETY: the asserts above keep every address gemm computes inside the slices: `dst`,
    // `a` and `b` address only elements checked by `in_bounds`. `dst` is a unique borrow,
    // so it aliases neither input. Strides fit isize: they come from slice lengths.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.col_stride as isize,
            dst.row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn products_and_transposed_views_match_the_naive_product() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|v| (v as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|v| (v as f64 * 0.71).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut c = vec![9.0; m * n];
        matmul(
            &mut c,
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&b, k, n),
            false,
        );
        assert!(c.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-12));
        // Accumulating adds a second product.
        matmul(
            &mut c,
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&b, k, n),
            true,
        );
        assert!(
            c.iter()
                .zip(&want)
                .all(|(x, y)| (x - 2.0 * y).abs() < 1e-12)
        );
        // aᵀ stored as k × m gives the same product through a transposed view.
        let at: Vec<f64> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let mut d = vec![0.0; m * n];
        matmul(
            &mut d,
            MatRef::row_major(&at, k, m).t(),
            MatRef::row_major(&b, k, n),
            false,
        );
        assert!(d.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-12));
    }

    /// A strided destination (a block of columns of a wider matrix, and columns interleaved
    /// with another matrix's) gets the product and nothing outside it changes.
    #[test]
    fn strided_destinations_get_the_product_and_nothing_else() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|v| (v as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|v| (v as f64 * 0.71).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let (am, bm) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
        for (row_stride, col_stride, offset) in [(n + 4, 1, 2), (3 * n, 3, 1), (n, 1, 0)] {
            let mut wide = vec![-1.0; offset + (m - 1) * row_stride + (n - 1) * col_stride + 5];
            let len = wide.len();
            for accumulate in [false, true] {
                let dst = MatMut::strided(&mut wide[offset..], (m, n), (row_stride, col_stride));
                matmul_into(dst, am, bm, accumulate, 1);
            }
            let mut inside = vec![false; len];
            for i in 0..m {
                for j in 0..n {
                    let at = offset + i * row_stride + j * col_stride;
                    inside[at] = true;
                    // Written, then accumulated once more.
                    assert!((wide[at] - 2.0 * want[i * n + j]).abs() < 1e-12);
                }
            }
            assert!(wide.iter().zip(&inside).all(|(v, i)| *i || *v == -1.0));
        }
    }

    #[test]
    #[should_panic(expected = "inner dimensions")]
    fn mismatched_shapes_are_refused() {
        let a = [1.0f32; 6];
        let mut c = [0.0f32; 4];
        matmul(
            &mut c,
            MatRef::row_major(&a, 2, 3),
            MatRef::row_major(&a, 2, 3),
            false,
        );
    }

    #[test]
    fn a_view_past_its_slice_is_detected() {
        let a = [1.0f32; 5];
        assert!(!MatRef::row_major(&a, 2, 3).in_bounds());
        assert!(MatRef::row_major(&a[..], 1, 5).t().in_bounds());
    }
}

#[cfg(test)]
mod layout_speed {
    use super::*;

    /// Milliseconds per call of `f` over `reps` calls, after one untimed call.
    fn ms_per_call(reps: usize, f: &mut dyn FnMut()) -> f64 {
        f();
        let t = std::time::Instant::now();
        for _ in 0..reps {
            f();
        }
        t.elapsed().as_secs_f64() / reps as f64 * 1e3
    }

    /// Which orientation of a convolution's weight-gradient product is fastest, through gemm
    /// and on the bf16 units: `cargo test --release --lib dw_product_layouts -- --ignored
    /// --nocapture` (`benches/results/dw-product-layouts.txt`).
    #[test]
    #[ignore]
    fn dw_product_layouts() {
        for (m, red, n) in [(16, 4096, 144), (32, 2048, 288), (64, 1024, 576)] {
            let a: Vec<f32> = (0..m * red).map(|v| (v as f32 * 0.37).sin()).collect();
            let cols: Vec<f32> = (0..n * red).map(|v| (v as f32 * 0.71).cos()).collect();
            let mut c = vec![0.0f32; m * n];
            let time = |f: &mut dyn FnMut()| ms_per_call(50, f);
            // cols stored n × red (patch-major, as im2col writes it): Bᵀ view.
            let t_view = time(&mut || {
                matmul(
                    &mut c,
                    MatRef::row_major(&a, m, red),
                    MatRef::row_major(&cols, n, red).t(),
                    true,
                )
            });
            // cols stored red × n (position-major): row-major B.
            let t_rows = time(&mut || {
                matmul(
                    &mut c,
                    MatRef::row_major(&a, m, red),
                    MatRef::row_major(&cols, red, n),
                    true,
                )
            });
            // dWᵀ = cols · dYᵀ: cols as stored (n × red), dY as a transposed view.
            let mut ct = vec![0.0f32; n * m];
            let t_swap = time(&mut || {
                matmul(
                    &mut ct,
                    MatRef::row_major(&cols, n, red),
                    MatRef::row_major(&a, m, red).t(),
                    true,
                )
            });
            // A blocked transpose of cols to row-major, for reference.
            let mut tr = vec![0.0f32; n * red];
            let t_tr = time(&mut || {
                for i0 in (0..n).step_by(16) {
                    for j0 in (0..red).step_by(16) {
                        for i in i0..(i0 + 16).min(n) {
                            for j in j0..(j0 + 16).min(red) {
                                tr[j * n + i] = cols[i * red + j];
                            }
                        }
                    }
                }
            });
            println!(
                "m {m} red {red} n {n}: transposed view {t_view:.3} ms, row-major {t_rows:.3} ms, swapped {t_swap:.3} ms, transpose {t_tr:.3} ms"
            );
            for dot in super::super::bf16::Dot::usable() {
                let t_view = time(&mut || {
                    super::super::bf16::matmul(
                        &mut c,
                        MatRef::row_major(&a, m, red),
                        MatRef::row_major(&cols, n, red).t(),
                        true,
                        dot,
                    )
                });
                let t_swap = time(&mut || {
                    super::super::bf16::matmul(
                        &mut ct,
                        MatRef::row_major(&cols, n, red),
                        MatRef::row_major(&a, m, red).t(),
                        true,
                        dot,
                    )
                });
                println!(
                    "    {}: transposed view {t_view:.3} ms, swapped {t_swap:.3} ms",
                    dot.unit().label()
                );
            }
        }
    }

    /// One core's rate through gemm on ResNet-18's convolution products, as the layers hand
    /// them over (forward: W · cols; dx: Wᵀ · dY; dW: cols · dYᵀ), against a square product:
    /// `cargo test --release --lib gemm_rates -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn gemm_rates() {
        let time = |flop: f64, f: &mut dyn FnMut()| flop / ms_per_call(10, f) / 1e6;
        let fill =
            |len: usize, s: f32| -> Vec<f32> { (0..len).map(|v| (v as f32 * s).sin()).collect() };
        let sq = 1024;
        let (a, b) = (fill(sq * sq, 0.37), fill(sq * sq, 0.71));
        let mut c = vec![0.0f32; sq * sq];
        let r = time(2.0 * (sq * sq * sq) as f64, &mut || {
            matmul(
                &mut c,
                MatRef::row_major(&a, sq, sq),
                MatRef::row_major(&b, sq, sq),
                false,
            )
        });
        println!("square {sq}: {r:.1} GFLOP/s");
        // (c_out, k = c·9, wide)
        for (co, k, wide) in [
            (64, 576, 1024),
            (128, 1152, 256),
            (256, 2304, 256),
            (512, 4608, 256),
        ] {
            let w = fill(co * k, 0.37);
            let cols = fill(k * wide, 0.71);
            let dy = fill(co * wide, 0.13);
            let flop = 2.0 * (co * k * wide) as f64;
            let mut y = vec![0.0f32; co * wide];
            let fwd = time(flop, &mut || {
                matmul(
                    &mut y,
                    MatRef::row_major(&w, co, k),
                    MatRef::row_major(&cols, k, wide),
                    false,
                )
            });
            let mut dcols = vec![0.0f32; k * wide];
            let dx = time(flop, &mut || {
                matmul(
                    &mut dcols,
                    MatRef::row_major(&w, co, k).t(),
                    MatRef::row_major(&dy, co, wide),
                    false,
                )
            });
            let mut dwt = vec![0.0f32; k * co];
            let dw = time(flop, &mut || {
                matmul(
                    &mut dwt,
                    MatRef::row_major(&cols, k, wide),
                    MatRef::row_major(&dy, co, wide).t(),
                    true,
                )
            });
            println!("c_out {co} k {k} wide {wide}: fwd {fwd:.1} dx {dx:.1} dW {dw:.1} GFLOP/s");
        }
    }
}
