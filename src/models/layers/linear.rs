//! Fully connected layers and the matrix product every layer uses.

use candle_core::{DType, Device, Result, Tensor, Var};

use super::custom::{attach2, attach3, map_real, map_real_n, raw_n, raw2};
use super::kernels::{Products, cpu as kernels_cpu};
use super::tape;
use crate::models::error::ModelError;
use crate::models::params::{Builder, Init, ParamKind, join};

/// `a · b` in the inputs' dtype. Candle's CPU matmul has no bf16 and its f16 is no faster
/// than f32, so half-precision products on the CPU run in f32 on half-rounded inputs and are
/// rounded back — a tensor core's arithmetic (half inputs, f32 accumulation).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dtype = a.dtype();
    if matches!(a.device(), Device::Cpu) && matches!(dtype, DType::F16 | DType::BF16) {
        return a
            .to_dtype(DType::F32)?
            .matmul(&b.to_dtype(DType::F32)?)?
            .to_dtype(dtype);
    }
    a.matmul(b)
}

/// A fully connected layer's product `x · wᵀ` (`x`: `rows × k`, `w`: `n × k`). With
/// `products` naming a bf16 unit (`--amp bf16` on such a CPU; `x` f32) it runs on the unit
/// with bf16 inputs and f32 accumulation, forward and backward; otherwise [`matmul`].
pub fn matmul_nt(x: &Tensor, w: &Tensor, products: Products) -> Result<Tensor> {
    if products.bf16().is_none() || !x.device().is_cpu() || x.dtype() != DType::F32 {
        return matmul(x, &w.to_dtype(x.dtype())?.t()?);
    }
    let (rows, k) = x.dims2()?;
    let n = w.dim(0)?;
    let x = x.contiguous()?;
    let w = w.to_dtype(DType::F32)?.contiguous()?;
    let y = raw2(
        &x.detach(),
        &w.detach(),
        (rows, n),
        |a, b| kernels_cpu::linear_forward(a, b, k, n, products),
        |a, b| kernels_cpu::linear_forward(a, b, k, n, Products::Native),
    )?;
    attach2(
        "annt-linear-bf16",
        &x,
        &w,
        y,
        Box::new(move |x, w, grad| {
            let both = map_real_n(
                &[x, w, &grad.contiguous()?],
                rows * k + n * k,
                |v| kernels_cpu::linear_backward(v[0], v[1], v[2], k, n, products),
                |v| kernels_cpu::linear_backward(v[0], v[1], v[2], k, n, Products::Native),
            )?;
            Ok((
                both.narrow(0, 0, rows * k)?.reshape((rows, k))?,
                both.narrow(0, rows * k, n * k)?.reshape((n, k))?,
            ))
        }),
    )
}

/// A fully connected layer `x · wᵀ + b` (`x`: `rows × k`, `w`: `n × k`, `b`: `n`) as one
/// node of the graph, on the CPU in f32 or f64 (f32 for a bf16 unit); `None` elsewhere (the
/// caller then builds it from [`matmul_nt`] and [`add_bias`]).
///
/// Built from Candle's ops the layer is a transpose, a product and a bias add: three nodes
/// whose backward zero-fills and adds a gradient for each edge (the transposed weight's
/// through a strided add), and a product split across the threads by Candle. Here the
/// forward writes the bias and adds the product onto it in one pass, and the backward is
/// two gemm products and a column sum written straight into the three gradients.
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    products: Products,
) -> Result<Option<Tensor>> {
    let dtype = x.dtype();
    let fits = match dtype {
        DType::F32 => true,
        DType::F64 => products.bf16().is_none(),
        _ => false,
    };
    if !x.device().is_cpu() || !fits {
        return Ok(None);
    }
    let (rows, k) = x.dims2()?;
    let n = w.dim(0)?;
    let x = x.contiguous()?;
    let w = w.to_dtype(dtype)?.contiguous()?;
    let Some(b) = b else {
        let y = raw2(
            &x.detach(),
            &w.detach(),
            (rows, n),
            |x, w| kernels_cpu::linear_bias_forward(x, w, None, k, n, products),
            |x, w| kernels_cpu::linear_bias_forward(x, w, None, k, n, products),
        )?;
        return attach2(
            "annt-linear",
            &x,
            &w,
            y,
            Box::new(move |x, w, grad| {
                let both = map_real_n(
                    &[x, w, &grad.contiguous()?],
                    rows * k + n * k,
                    |v| kernels_cpu::linear_bias_backward(v[0], v[1], v[2], k, n, false, products),
                    |v| kernels_cpu::linear_bias_backward(v[0], v[1], v[2], k, n, false, products),
                )?;
                Ok((
                    both.narrow(0, 0, rows * k)?.reshape((rows, k))?,
                    both.narrow(0, rows * k, n * k)?.reshape((n, k))?,
                ))
            }),
        )
        .map(Some);
    };
    let b = b.to_dtype(dtype)?.contiguous()?;
    let y = raw_n(
        &[&x.detach(), &w.detach(), &b.detach()],
        (rows, n),
        |v| kernels_cpu::linear_bias_forward(v[0], v[1], Some(v[2]), k, n, products),
        |v| kernels_cpu::linear_bias_forward(v[0], v[1], Some(v[2]), k, n, products),
    )?;
    attach3(
        "annt-linear-bias",
        [&x, &w, &b],
        y,
        Box::new(move |x, w, _b, grad| {
            let all = map_real_n(
                &[x, w, &grad.contiguous()?],
                rows * k + n * k + n,
                |v| kernels_cpu::linear_bias_backward(v[0], v[1], v[2], k, n, true, products),
                |v| kernels_cpu::linear_bias_backward(v[0], v[1], v[2], k, n, true, products),
            )?;
            Ok((
                all.narrow(0, 0, rows * k)?.reshape((rows, k))?,
                all.narrow(0, rows * k, n * k)?.reshape((n, k))?,
                all.narrow(0, rows * k + n * k, n)?,
            ))
        }),
    )
    .map(Some)
}

/// `y + bias`, the bias along dimension `dim` of `y` (1 for a `rows × out` product and for
/// NCHW convolutions), in `y`'s dtype.
///
/// In half precision the bias gradient — a sum of the output gradient over every other
/// dimension, tens of thousands of terms — is accumulated in f32: Candle's own half-precision
/// sums accumulate in half, which loses the small terms. (The value costs one extra copy in
/// half precision; f32 and f64 take the plain broadcast, whose sums are already exact enough.)
pub fn add_bias(y: &Tensor, bias: &Tensor, dim: usize) -> Result<Tensor> {
    let dtype = y.dtype();
    let c = bias.dim(0)?;
    let mut shape = vec![1usize; y.rank()];
    if dim >= shape.len() {
        candle_core::bail!("add_bias: dimension {dim} of a rank-{} tensor", y.rank());
    }
    shape[dim] = c;
    let b = bias.to_dtype(dtype)?;
    if y.device().is_cpu() && matches!(dtype, DType::F32 | DType::F64) {
        // One pass forward; the bias gradient as one parallel column sum. Candle's
        // broadcast add records a broadcast whose backward is its generic reduction —
        // 10 % of a ViT-Ti/4 step on the CPU, single-threaded.
        let y = y.contiguous()?;
        let inner: usize = y.dims()[dim + 1..].iter().product();
        let value = raw2(
            &y.detach(),
            &b.detach(),
            y.shape(),
            |v, b| kernels_cpu::bias_add(v, b, inner),
            |v, b| kernels_cpu::bias_add(v, b, inner),
        )?;
        return attach2(
            "annt-bias-add",
            &y,
            &b,
            value,
            Box::new(move |_y, _b, grad| {
                let grad_bias = map_real(
                    &grad.contiguous()?,
                    c,
                    |g| kernels_cpu::bias_grad(g, c, inner),
                    |g| kernels_cpu::bias_grad(g, c, inner),
                )?;
                Ok((grad.clone(), grad_bias))
            }),
        );
    }
    let b = b.reshape(shape.as_slice())?;
    if !matches!(dtype, DType::F16 | DType::BF16) {
        return y.broadcast_add(&b);
    }
    let value = y.detach().broadcast_add(&b.detach())?;
    let sum_dims: Vec<usize> = (0..y.rank()).filter(|&d| d != dim).collect();
    super::custom::attach2(
        "annt-bias-add-f32-grad",
        y,
        bias,
        value,
        Box::new(move |_y, bias, grad| {
            let grad_bias = grad
                .to_dtype(DType::F32)?
                .sum(sum_dims.as_slice())?
                .to_dtype(bias.dtype())?;
            Ok((grad.clone(), grad_bias))
        }),
    )
}

/// `y = x·Wᵀ + b` over the last dimension of `x`, with PyTorch's `weight` `[out, in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Var,
    pub bias: Option<Var>,
}

impl Linear {
    /// PyTorch's default initialisation: `U(±1/√in)` for weight and bias.
    pub fn new(
        b: &mut Builder,
        name: &str,
        d_in: usize,
        d_out: usize,
        kind: ParamKind,
    ) -> std::result::Result<Self, ModelError> {
        let bound = 1.0 / (d_in as f32).sqrt();
        Self::with_init(
            b,
            name,
            d_in,
            d_out,
            kind,
            Init::Uniform(bound),
            Init::Uniform(bound),
        )
    }

    pub fn with_init(
        b: &mut Builder,
        name: &str,
        d_in: usize,
        d_out: usize,
        kind: ParamKind,
        weight_init: Init,
        bias_init: Init,
    ) -> std::result::Result<Self, ModelError> {
        let bias_kind = if kind == ParamKind::Head {
            ParamKind::Head
        } else {
            ParamKind::Bias
        };
        let weight = b.tensor(&join(name, "weight"), &[d_out, d_in], weight_init, kind)?;
        let bias = Some(b.tensor(&join(name, "bias"), &[d_out], bias_init, bias_kind)?);
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Products::Native)
    }

    /// [`Self::forward`] with the product in `products` (see [`matmul_nt`]).
    pub fn forward_with(&self, x: &Tensor, products: Products) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (d_out, d_in) = self.weight.dims2()?;
        let rows = x.elem_count() / d_in;
        // One 2-D product (not a batched one): its weight gradient is a single GEMM.
        let x2 = tape::reshape(x, (rows, d_in))?;
        let bias = self.bias.as_ref().map(|b| b.as_tensor());
        let y = match linear(&x2, self.weight.as_tensor(), bias, products)? {
            Some(y) => y,
            None => {
                let y = matmul_nt(&x2, self.weight.as_tensor(), products)?;
                match bias {
                    Some(b) => add_bias(&y, b, 1)?,
                    None => y,
                }
            }
        };
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = d_out;
        }
        tape::reshape(&y, out_dims)
    }
}

#[cfg(test)]
mod bias_tests {
    use super::*;

    /// The CPU's fused bias add against Candle's broadcast add, value and both gradients,
    /// over several blocks of rows: along the last dimension (a product) and along
    /// dimension 1 of an NCHW tensor.
    #[test]
    fn the_fused_cpu_bias_add_matches_the_broadcast_add() {
        let dev = Device::Cpu;
        // Largest |difference| between two tensors.
        let gap = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a.flatten_all()? - b.flatten_all()?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()
        };
        let run = |shape: &[usize], dim: usize| -> Result<[f32; 3]> {
            let y = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &dev)?)?;
            let bias = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape[dim], &dev)?)?;
            let r = Tensor::randn(0f32, 1.0, shape, &dev)?;
            let mut b_shape = vec![1usize; shape.len()];
            b_shape[dim] = shape[dim];
            let ours = add_bias(y.as_tensor(), bias.as_tensor(), dim)?;
            let theirs = y
                .as_tensor()
                .broadcast_add(&bias.as_tensor().reshape(b_shape.as_slice())?)?;
            let grads = |t: &Tensor| -> Result<(Tensor, Tensor)> {
                let g = t.mul(&r)?.sum_all()?.backward()?;
                let get = |v: &Var| {
                    g.get(v.as_tensor())
                        .cloned()
                        .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))
                };
                Ok((get(&y)?, get(&bias)?))
            };
            let ((gy, gb), (wy, wb)) = (grads(&ours)?, grads(&theirs)?);
            Ok([gap(&ours, &theirs)?, gap(&gy, &wy)?, gap(&gb, &wb)?])
        };
        for (shape, dim) in [(vec![300usize, 7], 1usize), (vec![70, 5, 3, 4], 1)] {
            let gaps = run(&shape, dim).expect("bias add");
            assert!(
                gaps.iter().all(|&g| g < 1e-4),
                "{shape:?}: y, dy, dbias {gaps:?}"
            );
        }
    }

    /// 4096 rows of gradient 1: a bf16 running sum stops growing at 256 (8 bits of
    /// mantissa), the f32 accumulation gives the exact 4096.
    #[test]
    fn a_half_precision_bias_gradient_is_summed_in_f32() {
        let dev = Device::Cpu;
        let bias = Var::new(&[0.5f32, -0.25], &dev).expect("bias");
        let y = Tensor::zeros((4096, 2), DType::BF16, &dev).expect("y");
        let out = add_bias(&y, bias.as_tensor(), 1).expect("add");
        assert_eq!(out.dtype(), DType::BF16);
        let first: Vec<f32> = out
            .get(0)
            .and_then(|r| r.to_dtype(DType::F32))
            .and_then(|r| r.to_vec1())
            .expect("row");
        assert_eq!(first, [0.5, -0.25]);
        let grads = out
            .to_dtype(DType::F32)
            .and_then(|o| o.sum_all())
            .and_then(|l| l.backward())
            .expect("backward");
        let g: Vec<f32> = grads
            .get(bias.as_tensor())
            .expect("bias grad")
            .to_vec1()
            .expect("vec");
        assert_eq!(g, [4096.0, 4096.0]);
        // What Candle's own broadcast gives in bf16, for contrast.
        let plain = y
            .broadcast_add(&bias.as_tensor().to_dtype(DType::BF16).expect("cast"))
            .and_then(|o| o.to_dtype(DType::F32))
            .and_then(|o| o.sum_all())
            .and_then(|l| l.backward())
            .expect("backward");
        let g: Vec<f32> = plain
            .get(bias.as_tensor())
            .expect("grad")
            .to_vec1()
            .expect("vec");
        assert!(
            g[0] < 4096.0,
            "Candle's bf16 sum is exact here after all: {g:?}"
        );
    }
}
