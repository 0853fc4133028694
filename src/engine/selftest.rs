//! `annt selftest`: every op the GPU path runs, checked against the CPU reference, then a
//! few steps of training of every model family on the GPU — the first command anyone with a
//! GPU runs.
//!
//! Each op check runs the op on the device under test in a compute dtype (f32, bf16, f16)
//! and on the reference device (the CPU) in f64 on the same inputs (rounded to the compute
//! dtype first, so input rounding is not counted as error). Inputs are random and never
//! zero (|v| ≥ 0.1), so a kernel that leaves memory unwritten or drops a term shows. The loss
//! is `Σ y·r` with a fixed random `r`, so every output element's gradient differs. The
//! error reported is the *max relative error* `max|a − b| / max|b|` over a tensor (relative
//! to the tensor's largest magnitude: an element-wise ratio would explode where the true
//! value is near zero). Tolerances: f32 1e-3, bf16/f16 1e-2.
//!
//! The harness runs on any pair of devices: the CPU build's tests run it with the CPU as the
//! device under test (annt's CPU kernels against f64), which checks the harness and every
//! CPU kernel with the same code a GPU is checked with.

use candle_core::{DType, Device, Tensor, Var};
use serde::Serialize;

use crate::models::ForwardCtx;
use crate::models::layers::Kernels;
use crate::models::layers::activation::softmax;
use crate::models::layers::conv::{ConvSpec, conv2d};
use crate::models::layers::loss::cross_entropy;
use crate::models::layers::norm::{BatchNorm2d, LayerNorm};
use crate::models::layers::pool::max_pool2d;
use crate::util::rng::Rng;

/// One comparison: an op's output or one of its gradients in one dtype.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    pub op: String,
    pub dtype: String,
    /// `max|a − b| / max|b|` against the reference (0 for exact checks such as the finite
    /// check); NaN where the check could not run.
    pub max_rel_error: f64,
    pub tolerance: f64,
    pub passed: bool,
    /// Why a check failed or what it compared, for the table's last column.
    pub detail: String,
}

/// A few optimizer steps of one model on the device under test.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Smoke {
    pub model: String,
    pub amp: String,
    pub steps: u64,
    pub final_train_loss: f64,
    pub passed: bool,
    pub detail: String,
}

/// Everything `annt selftest` found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SelftestReport {
    pub device: String,
    /// Set when there was nothing to check (a CPU-only build): the reason, for the user.
    pub nothing_to_check: Option<String>,
    pub checks: Vec<Check>,
    pub smoke: Vec<Smoke>,
}

impl SelftestReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed) && self.smoke.iter().all(|s| s.passed)
    }

    pub fn failures(&self) -> usize {
        self.checks.iter().filter(|c| !c.passed).count()
            + self.smoke.iter().filter(|s| !s.passed).count()
    }

    /// The plain-text table the CLI prints.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        if let Some(why) = &self.nothing_to_check {
            let _ = writeln!(out, "annt selftest: nothing to check — {why}");
            return out;
        }
        let _ = writeln!(out, "annt selftest on {}", self.device);
        let _ = writeln!(
            out,
            "{:<50} {:<5} {:<4} {:>11} {:>9}  detail",
            "op", "dtype", "", "max rel err", "tolerance"
        );
        for c in &self.checks {
            let _ = writeln!(
                out,
                "{:<50} {:<5} {:<4} {:>11.3e} {:>9.0e}  {}",
                c.op,
                c.dtype,
                if c.passed { "PASS" } else { "FAIL" },
                c.max_rel_error,
                c.tolerance,
                c.detail
            );
        }
        if !self.smoke.is_empty() {
            let _ = writeln!(out, "\nsmoke training (a few steps per model family)");
            for s in &self.smoke {
                let _ = writeln!(
                    out,
                    "{:<18} {:<5} {:<4} {} steps, train loss {:.4}  {}",
                    s.model,
                    s.amp,
                    if s.passed { "PASS" } else { "FAIL" },
                    s.steps,
                    s.final_train_loss,
                    s.detail
                );
            }
        }
        let _ = writeln!(
            out,
            "\n{} checks, {} smoke runs, {} failed",
            self.checks.len(),
            self.smoke.len(),
            self.failures()
        );
        out
    }
}

/// `max|a − b| / max|b|` (0 for two empty or all-zero tensors; ∞ for a length mismatch; NaN
/// propagates so a NaN never passes).
pub fn max_rel_error(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut worst = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        if d.is_nan() {
            return f64::NAN;
        }
        worst = worst.max(d);
    }
    if scale == 0.0 { worst } else { worst / scale }
}

/// The tolerance of a compute dtype.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F16 | DType::BF16 => 1e-2,
        _ => 1e-3,
    }
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => "f64",
        _ => "other",
    }
}

/// Random values in ±[0.1, 1], never zero.
pub fn nonzero_values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..len)
        .map(|_| {
            let u = rng.next_f32();
            let magnitude = 0.1 + 0.9 * u;
            if rng.next_f32() < 0.5 {
                -magnitude
            } else {
                magnitude
            }
        })
        .collect()
}

/// Values as the compute dtype holds them (rounded through it), in f64.
fn rounded(values: &[f32], dtype: DType) -> candle_core::Result<Vec<f64>> {
    Tensor::new(values, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_dtype(DType::F64)?
        .to_vec1()
}

fn flat(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1()
}

/// An op under test: given its inputs (already in the compute dtype, or f64 on the
/// reference) and the parameters (f32 on the device, f64 on the reference), the outputs;
/// the first output is differentiated, the others (e.g. running statistics) only compared.
type OpFn<'a> = &'a dyn Fn(&[Tensor], &[Var], DType) -> candle_core::Result<Vec<Tensor>>;

/// One op with its inputs: shapes of the activations (cast to the compute dtype) and of the
/// parameters (kept in f32, as master weights are).
struct OpCase<'a> {
    name: String,
    inputs: Vec<Vec<usize>>,
    params: Vec<Vec<usize>>,
    /// Names of the inputs' and parameters' gradients, in order (`None`: not compared).
    grad_names: Vec<Option<&'static str>>,
    output_names: Vec<&'static str>,
    f: OpFn<'a>,
}

struct Side {
    outputs: Vec<Vec<f64>>,
    grads: Vec<Option<Vec<f64>>>,
}

fn run_side(
    case: &OpCase,
    values: &[Vec<f32>],
    r_seed: u64,
    device: &Device,
    dtype: DType,
    reference: bool,
) -> candle_core::Result<Side> {
    let n_in = case.inputs.len();
    let var_dtype = if reference { DType::F64 } else { DType::F32 };
    let mut vars = Vec::new();
    for (i, shape) in case.inputs.iter().chain(&case.params).enumerate() {
        let v = if i < n_in {
            rounded(&values[i], dtype)?
        } else {
            values[i].iter().map(|&x| f64::from(x)).collect()
        };
        let t = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?
            .to_dtype(var_dtype)?
            .to_device(device)?;
        vars.push(Var::from_tensor(&t)?);
    }
    let compute = if reference { DType::F64 } else { dtype };
    let inputs: Vec<Tensor> = vars[..n_in]
        .iter()
        .map(|v| v.as_tensor().to_dtype(compute))
        .collect::<candle_core::Result<_>>()?;
    let outputs = (case.f)(&inputs, &vars[n_in..], compute)?;
    let Some(y) = outputs.first() else {
        candle_core::bail!("{}: the op returned no output", case.name)
    };
    // The loss weights: drawn from `r_seed` once the output's size is known, so both sides
    // get the same ones.
    let r = Tensor::from_vec(
        nonzero_values(y.elem_count(), r_seed)
            .iter()
            .map(|&x| f64::from(x))
            .collect::<Vec<_>>(),
        y.shape(),
        &Device::Cpu,
    )?
    .to_dtype(var_dtype)?
    .to_device(device)?;
    let loss = (y.to_dtype(var_dtype)? * r)?.sum_all()?;
    let grads = loss.backward()?;
    Ok(Side {
        outputs: outputs
            .iter()
            .map(flat)
            .collect::<candle_core::Result<_>>()?,
        grads: vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).map(flat).transpose())
            .collect::<candle_core::Result<_>>()?,
    })
}

fn compare_case(
    case: &OpCase,
    device: &Device,
    reference: &Device,
    dtype: DType,
    seed: u64,
) -> Vec<Check> {
    let tol = tolerance(dtype);
    let check = |what: &str, err: f64, detail: String| Check {
        op: format!("{} {what}", case.name),
        dtype: dtype_name(dtype).into(),
        max_rel_error: err,
        tolerance: tol,
        passed: err.is_finite() && err < tol,
        detail,
    };
    let values: Vec<Vec<f32>> = case
        .inputs
        .iter()
        .chain(&case.params)
        .enumerate()
        .map(|(i, s)| nonzero_values(s.iter().product(), seed + i as u64))
        .collect();
    let test = run_side(case, &values, seed ^ 0x5eed, device, dtype, false);
    let truth = run_side(case, &values, seed ^ 0x5eed, reference, dtype, true);
    let (test, truth) = match (test, truth) {
        (Ok(t), Ok(r)) => (t, r),
        (Err(e), _) => return vec![check("forward", f64::NAN, format!("failed: {e}"))],
        (_, Err(e)) => return vec![check("forward", f64::NAN, format!("reference failed: {e}"))],
    };
    let mut out = Vec::new();
    for (i, name) in case.output_names.iter().enumerate() {
        let (Some(a), Some(b)) = (test.outputs.get(i), truth.outputs.get(i)) else {
            out.push(check(name, f64::NAN, "output missing".into()));
            continue;
        };
        out.push(check(
            name,
            max_rel_error(a, b),
            format!("{} values", b.len()),
        ));
    }
    for (i, name) in case.grad_names.iter().enumerate() {
        let Some(name) = name else { continue };
        match (
            test.grads.get(i).cloned().flatten(),
            truth.grads.get(i).cloned().flatten(),
        ) {
            (Some(a), Some(b)) => out.push(check(
                name,
                max_rel_error(&a, &b),
                format!("{} values", b.len()),
            )),
            (None, _) => out.push(check(name, f64::NAN, "no gradient arrived".into())),
            (_, None) => out.push(check(name, f64::NAN, "no reference gradient".into())),
        }
    }
    out
}

/// Every op check on `device` against `reference` (the CPU) in each compute dtype.
pub fn op_checks(device: &Device, reference: &Device) -> Vec<Check> {
    let mut checks = Vec::new();
    let dtypes = [DType::F32, DType::BF16, DType::F16];
    let conv_cases: Vec<(String, usize, usize, usize, usize, usize)> = vec![
        // (name, c_in, c_out, k, stride, groups)
        ("conv 1×1 s1".into(), 8, 16, 1, 1, 1),
        ("conv 3×3 s1".into(), 8, 16, 3, 1, 1),
        ("conv 3×3 s2".into(), 8, 16, 3, 2, 1),
        ("conv 7×7 s2 (ImageNet stem)".into(), 3, 16, 7, 2, 1),
        ("conv 3×3 s1 depthwise".into(), 16, 16, 3, 1, 16),
        ("conv 3×3 s2 depthwise".into(), 16, 16, 3, 2, 16),
    ];
    for (seed, (name, c_in, c_out, k, stride, groups)) in conv_cases.into_iter().enumerate() {
        let spec = ConvSpec {
            stride,
            padding: k / 2,
            groups,
        };
        let f = move |x: &[Tensor], _: &[Var], _: DType| {
            Ok(vec![conv2d(&x[0], &x[1], spec, Kernels::Annt)?])
        };
        let case = OpCase {
            name,
            inputs: vec![vec![2, c_in, 15, 15], vec![c_out, c_in / groups, k, k]],
            params: vec![],
            grad_names: vec![Some("∂input"), Some("∂weight")],
            output_names: vec!["forward"],
            f: &f,
        };
        for dtype in dtypes {
            checks.extend(compare_case(
                &case,
                device,
                reference,
                dtype,
                100 + seed as u64,
            ));
        }
    }
    for (seed, (k, s, p)) in [(3usize, 2usize, 1usize), (2, 2, 0), (3, 1, 1)]
        .into_iter()
        .enumerate()
    {
        let f = move |x: &[Tensor], _: &[Var], _: DType| {
            Ok(vec![max_pool2d(&x[0], k, s, p, Kernels::Annt)?])
        };
        let case = OpCase {
            name: format!("max-pool {k}/{s}/{p}"),
            inputs: vec![vec![2, 4, 16, 16]],
            params: vec![],
            grad_names: vec![Some("∂input")],
            output_names: vec!["forward"],
            f: &f,
        };
        for dtype in dtypes {
            checks.extend(compare_case(
                &case,
                device,
                reference,
                dtype,
                200 + seed as u64,
            ));
        }
    }
    // Batch norm in training: output, ∂x, ∂γ, ∂β and the running statistics.
    let bn = |x: &[Tensor], p: &[Var], dtype: DType| {
        let rm = Var::from_tensor(&p[0].as_tensor().zeros_like()?)?;
        let rv = Var::from_tensor(&p[0].as_tensor().ones_like()?)?;
        let layer = BatchNorm2d {
            weight: p[0].clone(),
            bias: p[1].clone(),
            running_mean: rm.clone(),
            running_var: rv.clone(),
            eps: 1e-5,
            momentum: 0.1,
        };
        let y = layer.forward(&x[0], &ForwardCtx::train(dtype, 0))?;
        Ok(vec![y, rm.as_tensor().clone(), rv.as_tensor().clone()])
    };
    let case = OpCase {
        name: "batch norm (train)".into(),
        inputs: vec![vec![4, 8, 9, 9]],
        params: vec![vec![8], vec![8]],
        grad_names: vec![Some("∂input"), Some("∂γ"), Some("∂β")],
        output_names: vec!["forward", "running mean", "running var"],
        f: &bn,
    };
    for dtype in dtypes {
        checks.extend(compare_case(&case, device, reference, dtype, 300));
    }
    let sm = |x: &[Tensor], _: &[Var], _: DType| Ok(vec![softmax(&x[0])?]);
    let ln = |x: &[Tensor], p: &[Var], _: DType| {
        let layer = LayerNorm {
            weight: p[0].clone(),
            bias: p[1].clone(),
            eps: 1e-6,
        };
        Ok(vec![layer.forward(&x[0])?])
    };
    let ce = |x: &[Tensor], _: &[Var], _: DType| {
        let labels = Tensor::new(&[3u32, 0, 9, 5, 1, 7], x[0].device())?;
        Ok(vec![cross_entropy(&x[0], &labels, 0.1)?.reshape(1)?])
    };
    let case = |name: &str, inputs, params, grads, f| OpCase {
        name: name.into(),
        inputs,
        params,
        grad_names: grads,
        output_names: vec!["forward"],
        f,
    };
    let simple = [
        case(
            "softmax",
            vec![vec![6, 10]],
            vec![],
            vec![Some("∂input")],
            &sm,
        ),
        case(
            "layer norm",
            vec![vec![6, 32]],
            vec![vec![32], vec![32]],
            vec![Some("∂input"), Some("∂γ"), Some("∂β")],
            &ln,
        ),
        case(
            "cross-entropy (smoothing 0.1)",
            vec![vec![6, 10]],
            vec![],
            vec![Some("∂logits")],
            &ce,
        ),
    ];
    for (seed, case) in simple.iter().enumerate() {
        for dtype in dtypes {
            checks.extend(compare_case(
                case,
                device,
                reference,
                dtype,
                400 + seed as u64,
            ));
        }
    }
    checks.extend(optimizer_checks(device, reference));
    checks.extend(finite_checks(device));
    checks
}

/// Three steps of each optimizer on the device (f32) against the reference (f64).
fn optimizer_checks(device: &Device, reference: &Device) -> Vec<Check> {
    use crate::train::optim::{OptimSpec, Optimizer, OptimizerConfig};
    let configs = [
        (
            "SGD momentum 0.9 nesterov wd 5e-4",
            OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 5e-4,
            },
        ),
        (
            "Adam wd 1e-4",
            OptimizerConfig::Adam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 1e-4,
            },
        ),
        (
            "AdamW wd 0.05",
            OptimizerConfig::AdamW {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.05,
            },
        ),
    ];
    let start = nonzero_values(64, 500);
    let coef = nonzero_values(64, 501);
    let run = |config: &OptimizerConfig, device: &Device, dtype: DType| {
        let mut b = crate::models::params::Builder::new(0, device).with_dtype(dtype);
        let w = b
            .tensor(
                "w",
                &[64],
                crate::models::params::Init::Zeros,
                crate::models::params::ParamKind::Weight,
            )
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        w.set(&Tensor::new(start.as_slice(), device)?.to_dtype(dtype)?)?;
        let store = b.finish();
        let spec = OptimSpec {
            optimizer: config.clone(),
            no_decay_on_norm_and_bias: true,
            groups: Vec::new(),
        };
        let mut opt =
            Optimizer::new(&spec, &store).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let c = Tensor::new(coef.as_slice(), device)?.to_dtype(dtype)?;
        for t in 1..=3 {
            // A loss whose gradient changes each step: Σ c·w·t + Σ w²/2.
            let loss = ((w.as_tensor() * &c)? * f64::from(t))?
                .sum_all()?
                .add(&(w.as_tensor().sqr()? * 0.5)?.sum_all()?)?;
            opt.step(&loss.backward()?)?;
        }
        flat(w.as_tensor())
    };
    configs
        .iter()
        .map(|(name, config)| {
            let result = run(config, device, DType::F32)
                .and_then(|a| Ok((a, run(config, reference, DType::F64)?)));
            match result {
                Ok((a, b)) => {
                    let err = max_rel_error(&a, &b);
                    Check {
                        op: format!("optimizer step: {name}"),
                        dtype: "f32".into(),
                        max_rel_error: err,
                        tolerance: 1e-3,
                        passed: err < 1e-3,
                        detail: "3 steps, 64 weights".into(),
                    }
                }
                Err(e) => Check {
                    op: format!("optimizer step: {name}"),
                    dtype: "f32".into(),
                    max_rel_error: f64::NAN,
                    tolerance: 1e-3,
                    passed: false,
                    detail: format!("failed: {e}"),
                },
            }
        })
        .collect()
}

/// A model's parameter gradients of one small batch's loss, by annt's tape and by Candle's
/// backward, on `device`: whether the tape covered the network, and the largest
/// [`max_rel_error`] over the parameters (0 when they agree bit for bit).
pub fn tape_agreement(name: &str, device: &Device) -> candle_core::Result<(bool, f64)> {
    use crate::models::layers::tape::{Head, record};
    use crate::models::{Model, ModelSpec};
    let model = Model::build(&ModelSpec::new(name, 10), device)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let x = Tensor::new(nonzero_values(3 * 3 * 32 * 32, 700), device)?.reshape((3, 3, 32, 32))?;
    let labels = Tensor::new(&[1u32, 7, 3], device)?;
    let grads = |taped: bool| -> candle_core::Result<(Vec<Vec<f64>>, bool)> {
        let mut ctx = ForwardCtx::train(DType::F32, 5);
        let recording = taped.then(record);
        let logits = model.forward(&x, &mut ctx)?;
        let (grads, covered) = match recording {
            Some(r) => {
                let head = Head::new(&logits, r)?;
                let covered = head.taped();
                let loss = cross_entropy(head.logits(), &labels, 0.1)?;
                (head.backward(&loss)?, covered)
            }
            None => (cross_entropy(&logits, &labels, 0.1)?.backward()?, false),
        };
        let mut values = Vec::new();
        for p in model.params().trainable() {
            match grads.get(p.var.as_tensor()) {
                Some(g) => values.push(flat(g)?),
                None => candle_core::bail!("{name}: no gradient for {}", p.name),
            }
        }
        Ok((values, covered))
    };
    let (want, _) = grads(false)?;
    let (got, covered) = grads(true)?;
    let worst = want
        .iter()
        .zip(&got)
        .map(|(w, g)| max_rel_error(g, w))
        .fold(0.0f64, f64::max);
    Ok((covered, worst))
}

/// The trainer's backward on annt's tape against Candle's, one model of each family.
fn tape_checks(device: &Device) -> Vec<Check> {
    ["resnet8-tiny", "efficientnet-b0", "vit-ti4"]
        .into_iter()
        .map(|name| {
            let (max_rel_error, passed, detail) = match tape_agreement(name, device) {
                Ok((true, e)) => (e, e <= 1e-5, "tape vs Candle's backward".to_string()),
                Ok((false, e)) => (e, false, "an op outside the tape".to_string()),
                Err(e) => (f64::NAN, false, format!("failed: {e}")),
            };
            Check {
                op: format!("backward on the tape: {name}"),
                dtype: "f32".into(),
                max_rel_error,
                tolerance: 1e-5,
                passed,
                detail,
            }
        })
        .collect()
}

/// The mixed-precision finite check on +∞, −∞ and NaN (and on finite values) in each dtype.
fn finite_checks(device: &Device) -> Vec<Check> {
    use crate::accel::amp::all_finite;
    let mut out = Vec::new();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for (what, bad, expected) in [
            ("finite", None, true),
            ("+inf", Some(f32::INFINITY), false),
            ("-inf", Some(f32::NEG_INFINITY), false),
            ("NaN", Some(f32::NAN), false),
        ] {
            let mut v = nonzero_values(1000, 600);
            if let Some(b) = bad {
                v[737] = b;
            }
            let got = Tensor::new(v.as_slice(), device)
                .and_then(|t| t.to_dtype(dtype))
                .and_then(|t| all_finite(&[&t]));
            let (passed, detail) = match got {
                Ok(g) => (
                    g == expected,
                    format!("all_finite = {g}, expected {expected}"),
                ),
                Err(e) => (false, format!("failed: {e}")),
            };
            out.push(Check {
                op: format!("finite check on {what}"),
                dtype: dtype_name(dtype).into(),
                max_rel_error: 0.0,
                tolerance: 0.0,
                passed,
                detail,
            });
        }
    }
    out
}

/// A few optimizer steps of each model family on `device`, in f32 and bf16.
pub fn smoke_runs(device: &Device) -> Vec<Smoke> {
    use crate::accel::amp::AmpMode;
    use crate::bench::plan::Arm;
    use crate::config::RunConfig;
    use crate::engine::event::{StopFlag, VecSink};
    use crate::engine::trainer::{RunPlace, train_run};
    let mut out = Vec::new();
    let models = [
        ("resnet18", Some(64)),
        ("resnet50-cifar", None),
        ("efficientnet-b0", Some(64)),
        ("vit-ti4", None),
    ];
    let mut base = RunConfig::quick_cpu();
    base.data.train_limit = Some(96);
    base.data.test_limit = Some(32);
    base.train.epochs = 1;
    base.train.batch_size = 16;
    base.train.max_images = Some(48);
    base.train.timing_warmup_steps = 0;
    let data = match crate::engine::session::open_data(
        &base.data,
        &crate::engine::SessionOptions::default(),
    ) {
        Ok(d) => std::sync::Arc::new(d),
        Err(e) => {
            out.push(Smoke {
                model: "(data)".into(),
                amp: "-".into(),
                steps: 0,
                final_train_loss: f64::NAN,
                passed: false,
                detail: format!("the built-in data set did not open: {e}"),
            });
            return out;
        }
    };
    for (model, resolution) in models {
        for amp in [AmpMode::Off, AmpMode::Bf16] {
            let mut run = base.clone();
            run.model.name = model.into();
            run.model.resolution = resolution;
            run.switches.amp = amp;
            let arm = Arm {
                label: format!("{model} {}", amp.label()),
                run,
            };
            let result = train_run(
                &arm,
                RunPlace::single(),
                &data,
                device,
                &mut VecSink::default(),
                &StopFlag::new(),
                None,
            );
            out.push(match result {
                Ok(t) => {
                    let loss = t.result.epochs.last().map_or(f64::NAN, |e| e.train_loss);
                    Smoke {
                        model: model.into(),
                        amp: amp.label().into(),
                        steps: t.result.optimizer_steps,
                        final_train_loss: loss,
                        passed: loss.is_finite() && t.result.optimizer_steps == 3,
                        detail: format!("{:.0} img/s", t.result.timing.images_per_sec),
                    }
                }
                Err(e) => Smoke {
                    model: model.into(),
                    amp: amp.label().into(),
                    steps: 0,
                    final_train_loss: f64::NAN,
                    passed: false,
                    detail: format!("failed: {e}"),
                },
            });
        }
    }
    out
}

/// `annt selftest` on `device`: the op checks, the pinned-memory checks and the smoke runs
/// on a GPU; on the CPU, nothing to check (the CPU *is* the reference).
pub fn run(device: &Device) -> SelftestReport {
    if device.is_cpu() {
        return SelftestReport {
            device: "cpu".into(),
            nothing_to_check: Some(if cfg!(feature = "cuda") {
                "the device is the CPU, which is the reference; pass --device cuda:N to check a GPU"
                    .into()
            } else {
                "this build has no CUDA support, and the CPU is the reference the GPU path is checked against (`cargo test` covers the CPU kernels); run the annt-cuda build on a machine with an NVIDIA GPU".into()
            }),
            ..SelftestReport::default()
        };
    }
    let mut checks = op_checks(device, &Device::Cpu);
    checks.extend(pinned_checks(device));
    checks.extend(tape_checks(device));
    SelftestReport {
        device: format!("{device:?}"),
        nothing_to_check: None,
        checks,
        smoke: smoke_runs(device),
    }
}

#[cfg(not(feature = "cuda"))]
fn pinned_checks(_: &Device) -> Vec<Check> {
    Vec::new()
}

/// A pinned upload's round trip, and the reuse race: with the stream kept busy, the upload
/// is queued and the buffer refilled at once; the device copy must hold the first contents.
#[cfg(feature = "cuda")]
fn pinned_checks(device: &Device) -> Vec<Check> {
    use crate::accel::pinned::cuda::{PinnedPool, upload};
    let check = |op: &str, result: candle_core::Result<(bool, String)>| {
        let (passed, detail) = result.unwrap_or_else(|e| (false, format!("failed: {e}")));
        Check {
            op: op.into(),
            dtype: "u8".into(),
            max_rel_error: 0.0,
            tolerance: 0.0,
            passed,
            detail,
        }
    };
    let bytes = 8 << 20;
    let pattern = |seed: u8| -> Vec<u8> {
        (0..bytes)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    };
    let round_trip = (|| {
        let pool = PinnedPool::new(device)?;
        let mut buf = pool.take(bytes);
        let a = pattern(1);
        buf.as_mut_slice()[..bytes].copy_from_slice(&a);
        let on_device: Vec<u8> = upload(&mut buf, device)?.to_vec1()?;
        Ok((on_device[..bytes] == a[..], format!("{bytes} bytes")))
    })();
    let race = (|| {
        let pool = PinnedPool::new(device)?;
        let mut buf = pool.take(bytes);
        let a = pattern(2);
        let b = pattern(3);
        buf.as_mut_slice()[..bytes].copy_from_slice(&a);
        // Keep the stream busy so the copy is still queued when the host refills the buffer.
        let m = Tensor::ones((4096, 4096), DType::F32, device)?;
        let mut busy = m.clone();
        for _ in 0..8 {
            busy = busy.matmul(&m)?;
        }
        let on_device = upload(&mut buf, device)?;
        buf.as_mut_slice()[..bytes].copy_from_slice(&b);
        let got: Vec<u8> = on_device.to_vec1()?;
        drop(busy);
        Ok((
            got[..bytes] == a[..],
            "the refill waited for the copy".into(),
        ))
    })();
    vec![
        check("pinned upload round trip", round_trip),
        check("pinned buffer reuse while a copy is queued", race),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relative_error_is_relative_to_the_largest_magnitude_and_never_hides_nan() {
        assert_eq!(max_rel_error(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((max_rel_error(&[1.0, 2.1], &[1.0, 2.0]) - 0.05).abs() < 1e-12);
        // Near-zero true values do not explode the error.
        assert!((max_rel_error(&[1e-9, 4.0], &[0.0, 4.0]) - 2.5e-10).abs() < 1e-15);
        assert!(max_rel_error(&[f64::NAN], &[1.0]).is_nan());
        assert_eq!(max_rel_error(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(tolerance(DType::F32), 1e-3);
        assert_eq!(tolerance(DType::BF16), 1e-2);
    }

    #[test]
    fn inputs_are_never_zero() {
        let v = nonzero_values(10_000, 3);
        assert!(v.iter().all(|x| x.abs() >= 0.1 && x.abs() <= 1.0));
        assert!(v.iter().any(|&x| x < 0.0) && v.iter().any(|&x| x > 0.0));
    }

    /// The harness, with the CPU as the device under test: every CPU kernel passes against
    /// the f64 reference in every dtype, and the list covers what the GPU path runs.
    #[test]
    fn every_check_passes_on_the_cpu_kernels_and_the_list_covers_the_gpu_path() {
        let checks = op_checks(&Device::Cpu, &Device::Cpu);
        let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
        assert!(failed.is_empty(), "{failed:#?}");
        for needle in [
            "conv 1×1 s1 forward",
            "conv 3×3 s2 ∂input",
            "conv 7×7 s2 (ImageNet stem) ∂weight",
            "conv 3×3 s2 depthwise ∂weight",
            "max-pool 3/2/1 ∂input",
            "batch norm (train) running var",
            "batch norm (train) ∂γ",
            "softmax ∂input",
            "layer norm ∂β",
            "cross-entropy (smoothing 0.1) ∂logits",
            "optimizer step: AdamW wd 0.05",
            "finite check on NaN",
        ] {
            assert!(
                checks.iter().any(|c| c.op == needle),
                "no check named {needle:?}"
            );
        }
        for dtype in ["f32", "bf16", "f16"] {
            assert!(
                checks
                    .iter()
                    .any(|c| c.op == "conv 3×3 s1 ∂weight" && c.dtype == dtype)
            );
        }
    }

    /// A kernel that is wrong by 1 % in one element fails its f32 check.
    #[test]
    fn a_wrong_kernel_fails_its_check() {
        let broken = |x: &[Tensor], _: &[Var], _: DType| {
            let y = softmax(&x[0])?;
            let mut bump = vec![0.0; y.elem_count()];
            bump[7] = 0.01;
            let bump = Tensor::from_vec(bump, y.shape(), y.device())?.to_dtype(y.dtype())?;
            Ok(vec![(y + bump)?])
        };
        let right = |x: &[Tensor], _: &[Var], _: DType| Ok(vec![softmax(&x[0])?]);
        // The broken op runs on the "device", the right one on the reference: compare them
        // through one case whose function tells the sides apart by dtype.
        let either = move |x: &[Tensor], p: &[Var], d: DType| {
            if d == DType::F64 {
                right(x, p, d)
            } else {
                broken(x, p, d)
            }
        };
        let case = OpCase {
            name: "softmax (broken)".into(),
            inputs: vec![vec![4, 10]],
            params: vec![],
            grad_names: vec![Some("∂input")],
            output_names: vec!["forward"],
            f: &either,
        };
        let checks = compare_case(&case, &Device::Cpu, &Device::Cpu, DType::F32, 9);
        let forward = checks
            .iter()
            .find(|c| c.op.ends_with("forward"))
            .expect("forward");
        assert!(
            !forward.passed && forward.max_rel_error > 1e-3,
            "{forward:?}"
        );
    }

    #[test]
    fn the_cpu_build_has_nothing_to_check_and_says_why() {
        let report = run(&Device::Cpu);
        assert!(report.passed());
        let why = report.nothing_to_check.as_deref().expect("a reason");
        assert!(why.contains("reference"), "{why}");
        assert!(
            report
                .table()
                .starts_with("annt selftest: nothing to check")
        );
    }

    #[test]
    fn the_table_marks_failures_and_counts_them() {
        let report = SelftestReport {
            device: "Cuda(0)".into(),
            nothing_to_check: None,
            checks: vec![Check {
                op: "conv 3×3 s1 forward".into(),
                dtype: "bf16".into(),
                max_rel_error: 0.5,
                tolerance: 1e-2,
                passed: false,
                detail: "x".into(),
            }],
            smoke: vec![],
        };
        assert!(!report.passed());
        let t = report.table();
        assert!(t.contains("FAIL") && t.contains("1 failed"), "{t}");
    }
}
