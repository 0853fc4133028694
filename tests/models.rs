//! The model zoo as a user of the library sees it: parameter counts equal PyTorch's, every
//! trainable tensor learns, train and eval modes behave, and `annt models` lists them.

use annt::models::layers::loss::cross_entropy;
use annt::models::{ForwardCtx, Model, ModelSpec, VARIANTS};
use candle_core::{DType, Device, Tensor};
use std::process::Command;

/// The table, which `torch` reproduces (tests/fixtures/torch/keys.json):
/// (model, params with 10 classes, params with 100 classes).
const PYTORCH_COUNTS: &[(&str, usize, usize)] = &[
    ("resnet50-cifar", 23_520_842, 23_705_252),
    ("resnet18-cifar", 11_173_962, 11_220_132),
    ("resnet50", 23_528_522, 23_712_932),
    ("efficientnet-b0", 4_020_358, 4_135_648),
    ("vit-b16", 85_806_346, 85_875_556),
];

fn count(name: &str, classes: usize) -> usize {
    Model::build_shapes_only(&ModelSpec::new(name, classes))
        .expect("build")
        .param_count()
}

#[test]
fn parameter_counts_equal_pytorch() {
    for &(name, c10, c100) in PYTORCH_COUNTS {
        assert_eq!(count(name, 10), c10, "{name}, 10 classes");
        assert_eq!(count(name, 100), c100, "{name}, 100 classes");
    }
}

/// The README's model table, row by row: what it says is what annt builds, and no model
/// is missing from it.
#[test]
fn the_readme_model_table_is_what_annt_builds() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let number = |cell: &str| -> usize { cell.trim().replace(',', "").parse().expect(cell) };
    let mut seen = Vec::new();
    for line in readme
        .lines()
        .skip_while(|l| !l.starts_with("| model | params, 10 classes"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
    {
        let cells: Vec<&str> = line.trim_matches('|').split('|').collect();
        assert_eq!(cells.len(), 5, "{line}");
        let name = cells[0]
            .split('`')
            .nth(1)
            .expect("a `name` in the first cell");
        let v = VARIANTS
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("README names {name}, which annt does not build"));
        assert_eq!(number(cells[1]), count(name, 10), "{name}, 10 classes");
        assert_eq!(number(cells[2]), count(name, 100), "{name}, 100 classes");
        assert_eq!(number(cells[3]), v.resolution, "{name}: native resolution");
        let pretrained = if v.pretrained { "yes" } else { "no" };
        assert_eq!(cells[4].trim(), pretrained, "{name}: pretrained");
        seen.push(name.to_string());
    }
    for v in VARIANTS {
        assert!(
            seen.iter().any(|n| n == v.name),
            "{} has no README row",
            v.name
        );
    }
}

#[test]
fn parameter_counts_equal_the_torch_reference_file() {
    // Counts recorded by tests/fixtures/torch/generate.py from the real libraries.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/torch/keys.json"
    ))
    .expect("keys.json");
    let refs: serde_json::Value = serde_json::from_str(&text).expect("json");
    for (ours, theirs) in [
        ("resnet18", "torchvision.resnet18"),
        ("resnet50", "torchvision.resnet50"),
        ("resnet18-cifar", "torchvision.resnet18_cifar"),
        ("resnet50-cifar", "torchvision.resnet50_cifar"),
        ("efficientnet-b0", "torchvision.efficientnet_b0"),
        ("vit-b16", "torchvision.vit_b_16"),
    ] {
        for classes in [10, 100] {
            let expected = refs[theirs][format!("params_{classes}")]
                .as_u64()
                .expect("count") as usize;
            assert_eq!(
                count(ours, classes),
                expected,
                "{ours} vs {theirs}, {classes} classes"
            );
        }
    }
}

#[test]
fn one_backward_pass_reaches_every_trainable_tensor_of_every_model() {
    let device = Device::Cpu;
    for variant in VARIANTS {
        // Small inputs keep this fast; ViTs are built for them (their position embeddings
        // depend on the resolution), the convnets pool globally.
        let resolution = if variant.name.starts_with("vit") && variant.resolution == 224 {
            32
        } else {
            32.min(variant.resolution)
        };
        let spec = ModelSpec {
            resolution: Some(resolution),
            seed: 3,
            ..ModelSpec::new(variant.name, 10)
        };
        let model = Model::build(&spec, &device).expect("build");
        // torchvision zero-initialises ViT heads, which would stop every gradient behind
        // them at step one; give the head values so the whole network is exercised.
        for p in model
            .params()
            .iter()
            .filter(|p| p.name == "heads.head.weight")
        {
            p.var
                .set(&Tensor::randn(0f32, 0.02, p.var.shape(), &device).expect("randn"))
                .expect("set");
        }
        let images =
            Tensor::randn(0f32, 1.0, (8, 3, resolution, resolution), &device).expect("images");
        // Eight samples: stochastic depth drops a residual branch per sample, and a branch
        // dropped for the whole batch rightly gets no gradient (p ≤ 0.2: 0.2⁸ ≈ 3e-6).
        let labels = Tensor::new(&[1u32, 7, 0, 2, 3, 4, 5, 6], &device).expect("labels");
        let logits = model
            .forward(&images, &mut ForwardCtx::train(DType::F32, 1))
            .expect("forward");
        assert_eq!(logits.dims(), &[8, 10], "{}", variant.name);
        let grads = cross_entropy(&logits, &labels, 0.1)
            .and_then(|l| l.backward())
            .expect("backward");
        for p in model.params().iter() {
            let grad = grads.get(p.var.as_tensor());
            if !p.kind.is_trainable() {
                assert!(
                    grad.is_none(),
                    "{}: buffer {} got a gradient",
                    variant.name,
                    p.name
                );
                continue;
            }
            let grad =
                grad.unwrap_or_else(|| panic!("{}: {} got no gradient", variant.name, p.name));
            let norm: f32 = grad
                .sqr()
                .and_then(|g| g.sum_all())
                .and_then(|g| g.to_scalar())
                .expect("norm");
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{}: {} has gradient norm {norm}",
                variant.name,
                p.name
            );
        }
    }
}

#[test]
fn eval_mode_is_deterministic_and_train_mode_updates_batch_norm() {
    let device = Device::Cpu;
    let model = Model::build(&ModelSpec::new("resnet8-tiny", 10), &device).expect("build");
    let images = Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &device).expect("images");
    let eval = |m: &Model| {
        m.forward(&images, &mut ForwardCtx::eval(DType::F32))
            .and_then(|t| t.to_vec2::<f32>())
            .expect("eval")
    };
    let before = eval(&model);
    assert_eq!(before, eval(&model));
    model
        .forward(&images, &mut ForwardCtx::train(DType::F32, 0))
        .expect("train");
    assert_ne!(
        before,
        eval(&model),
        "a training pass must move the running statistics"
    );
}

#[test]
fn mixed_precision_forward_keeps_f32_master_weights() {
    let device = Device::Cpu;
    let model = Model::build(&ModelSpec::new("resnet8-tiny", 10), &device).expect("build");
    let images = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &device).expect("images");
    let reference = model
        .forward(&images, &mut ForwardCtx::eval(DType::F32))
        .expect("f32");
    for dtype in [DType::BF16, DType::F16] {
        let logits = model
            .forward(&images, &mut ForwardCtx::eval(dtype))
            .expect("half");
        assert_eq!(
            logits.dtype(),
            DType::F32,
            "logits come back in f32 for the loss"
        );
        let diff: f32 = (&logits - &reference)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar())
            .expect("diff");
        let scale: f32 = reference
            .abs()
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar())
            .expect("scale");
        assert!(
            diff <= 0.05 * scale,
            "{dtype:?}: max difference {diff} at scale {scale}"
        );
        // And it really ran in half precision: a path that silently computed in f32
        // would match f32 (to its summation order), far below a half's rounding.
        let floor = if dtype == DType::BF16 { 1e-4 } else { 1e-5 };
        assert!(
            diff >= floor * scale,
            "{dtype:?}: max difference {diff} at scale {scale} is too small for half precision"
        );
        let grads = logits
            .sum_all()
            .and_then(|l| l.backward())
            .expect("backward");
        for p in model.params().trainable() {
            assert_eq!(p.var.dtype(), DType::F32);
            assert_eq!(
                grads.get(p.var.as_tensor()).expect("grad").dtype(),
                DType::F32,
                "{}",
                p.name
            );
        }
    }
}

#[test]
fn annt_models_lists_every_variant_as_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_annt"))
        .args(["models", "--classes", "100", "--json"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json list");
    assert_eq!(list.len(), VARIANTS.len());
    let b16 = list
        .iter()
        .find(|m| m["name"] == "vit-b16")
        .expect("vit-b16");
    assert_eq!(b16["params"], 85_875_556);
    assert_eq!(b16["pretrained"], true);
    let bad = Command::new(env!("CARGO_BIN_EXE_annt"))
        .args(["models", "--classes", "1"])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2), "one class is a usage error");
}
