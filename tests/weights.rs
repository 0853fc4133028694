//! Pretrained-weight import against checkpoints made by real torchvision and transformers
//! (tests/fixtures/torch, see generate.py there): names, values, and PyTorch's logits in
//! eval and train mode; errors that list what is wrong; save/load round trips.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use annt::models::efficientnet::EfficientNetConfig;
use annt::models::resnet::{Block, ResNetConfig, Stem};
use annt::models::vit::VitConfig;
use annt::models::weights::{self, Convention};
use annt::models::{Architecture, Builder, ForwardCtx, Model, ModelError, ModelSpec};
use candle_core::{DType, Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch")
        .join(name)
}

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &Device::Cpu).expect("fixture")
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let d: f32 = (a - b)
        .and_then(|t| t.abs())
        .and_then(|t| t.max_all())
        .and_then(|t| t.to_scalar())
        .expect("diff");
    let s: f32 = b
        .abs()
        .and_then(|t| t.max_all())
        .and_then(|t| t.to_scalar())
        .expect("scale");
    d / s.max(1e-12)
}

fn values(model: &Model) -> Vec<(String, Vec<f32>)> {
    model
        .params()
        .iter()
        .map(|p| {
            let v = p.var.as_tensor().flatten_all().and_then(|t| t.to_vec1());
            (p.name.clone(), v.expect("values"))
        })
        .collect()
}

fn save_to(tensors: &HashMap<String, Tensor>, path: &Path) {
    candle_core::safetensors::save(tensors, path).expect("save");
}

/// hf_vit_tiny's tensors under torchvision's names, worked out here independently of
/// annt's mapping: q, k and v concatenated in that order into `in_proj`.
fn hf_as_torchvision(file: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    let mut fused = Vec::new();
    let mut put = |native: String, hf: &str| {
        out.insert(native, file[hf].clone());
    };
    put("class_token".into(), "vit.embeddings.cls_token");
    put(
        "encoder.pos_embedding".into(),
        "vit.embeddings.position_embeddings",
    );
    for leaf in ["weight", "bias"] {
        put(
            format!("conv_proj.{leaf}"),
            &format!("vit.embeddings.patch_embeddings.projection.{leaf}"),
        );
        put(
            format!("encoder.ln.{leaf}"),
            &format!("vit.layernorm.{leaf}"),
        );
        put(format!("heads.head.{leaf}"), &format!("classifier.{leaf}"));
        for i in 0..2 {
            let (hf, tv) = (
                format!("vit.layers.{i}"),
                format!("encoder.layers.encoder_layer_{i}"),
            );
            for (from, to) in [
                ("layernorm_before", "ln_1"),
                ("layernorm_after", "ln_2"),
                ("attention.o_proj", "self_attention.out_proj"),
                ("mlp.fc1", "mlp.0"),
                ("mlp.fc2", "mlp.3"),
            ] {
                put(format!("{tv}.{to}.{leaf}"), &format!("{hf}.{from}.{leaf}"));
            }
            let qkv: Vec<Tensor> = ["q", "k", "v"]
                .iter()
                .map(|x| file[&format!("{hf}.attention.{x}_proj.{leaf}")].clone())
                .collect();
            fused.push((
                format!("{tv}.self_attention.in_proj_{leaf}"),
                Tensor::cat(&qkv, 0).expect("cat"),
            ));
        }
    }
    out.extend(fused);
    out
}

/// hf_vit_tiny renamed to the classic Hub (transformers 4) names, as README.md lists them.
fn hf_legacy(file: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    file.iter()
        .map(|(k, t)| {
            let mut name = k.replace("vit.layers.", "vit.encoder.layer.");
            for (new, old) in [
                ("attention.q_proj", "attention.attention.query"),
                ("attention.k_proj", "attention.attention.key"),
                ("attention.v_proj", "attention.attention.value"),
                ("attention.o_proj", "attention.output.dense"),
                ("mlp.fc1", "intermediate.dense"),
                ("mlp.fc2", "output.dense"),
            ] {
                name = name.replace(new, old);
            }
            (name, t.clone())
        })
        .collect()
}

/// efficientnet_tiny renamed to timm's `efficientnet_b0` names (the inverse of the rename
/// the full-size key lists check).
fn as_timm(file: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    file.iter()
        .map(|(k, t)| {
            let top = [
                ("features.0.0.", "conv_stem."),
                ("features.0.1.", "bn1."),
                ("features.8.0.", "conv_head."),
                ("features.8.1.", "bn2."),
                ("classifier.1.", "classifier."),
            ];
            if let Some((from, to)) = top.iter().find(|(from, _)| k.starts_with(from)) {
                return (k.replacen(from, to, 1), t.clone());
            }
            // features.{s+1}.{b}.block.{module}.{leaf}
            let parts: Vec<&str> = k.splitn(5, '.').collect();
            let stage: usize = parts[1].parse().expect("stage");
            let (module, leaf) = parts[4].rsplit_once('.').expect("leaf");
            let table: &[(&str, &str)] = if stage == 1 {
                &[
                    ("0.0", "conv_dw"),
                    ("0.1", "bn1"),
                    ("1.fc1", "se.conv_reduce"),
                    ("1.fc2", "se.conv_expand"),
                    ("2.0", "conv_pw"),
                    ("2.1", "bn2"),
                ]
            } else {
                &[
                    ("0.0", "conv_pw"),
                    ("0.1", "bn1"),
                    ("1.0", "conv_dw"),
                    ("1.1", "bn2"),
                    ("2.fc1", "se.conv_reduce"),
                    ("2.fc2", "se.conv_expand"),
                    ("3.0", "conv_pwl"),
                    ("3.1", "bn3"),
                ]
            };
            let timm = table
                .iter()
                .find(|(tv, _)| *tv == module)
                .unwrap_or_else(|| panic!("{k}"))
                .1;
            (
                format!("blocks.{}.{}.{timm}.{leaf}", stage - 1, parts[2]),
                t.clone(),
            )
        })
        .collect()
}

fn vit_tiny(image: usize) -> VitConfig {
    VitConfig {
        image,
        patch: 8,
        dim: 16,
        depth: 2,
        heads: 2,
        mlp_dim: 32,
        classes: 10,
        dropout: 0.0,
    }
}

fn architectures() -> Vec<(&'static str, Architecture, bool)> {
    let mut eff = EfficientNetConfig::scaled(0.25, 0.25, 10);
    eff.dropout = 0.0;
    eff.stochastic_depth = 0.0;
    eff.bn_eps = 1e-5;
    eff.bn_momentum = 0.1;
    vec![
        (
            "resnet_basic_tiny",
            Architecture::ResNet(ResNetConfig {
                block: Block::Basic,
                blocks_per_stage: vec![1, 1],
                widths: vec![8, 16],
                stem: Stem::Cifar,
                classes: 10,
            }),
            true,
        ),
        (
            "resnet_bottleneck_tiny",
            Architecture::ResNet(ResNetConfig {
                block: Block::Bottleneck,
                blocks_per_stage: vec![1, 1],
                widths: vec![4, 8],
                stem: Stem::ImageNet,
                classes: 10,
            }),
            true,
        ),
        ("efficientnet_tiny", Architecture::EfficientNet(eff), true),
        ("vit_tiny", Architecture::Vit(vit_tiny(32)), false),
        ("hf_vit_tiny", Architecture::Vit(vit_tiny(32)), false),
    ]
}

#[test]
fn tiny_pytorch_checkpoints_load_exactly_and_reproduce_pytorch_logits() {
    for (name, arch, has_bn) in architectures() {
        let model = Model::build_arch(name, arch, Builder::new(9, &Device::Cpu)).expect("build");
        let report =
            weights::load_pretrained(&model, &fixture(&format!("{name}.safetensors"))).expect(name);
        assert_eq!(
            report.loaded,
            model.params().len(),
            "{name}: every tensor loaded"
        );
        assert!(!report.head_replaced && report.pos_embedding_resized.is_none());
        let expected_convention = if name.starts_with("hf_") {
            Convention::HuggingFace
        } else {
            Convention::Torchvision
        };
        assert_eq!(report.convention, expected_convention, "{name}");
        let file = load(&format!("{name}.safetensors"));
        let native = if expected_convention == Convention::HuggingFace {
            hf_as_torchvision(&file)
        } else {
            file
        };
        // After renaming, every value must be bit-identical.
        assert_eq!(native.len(), model.params().len() + report.ignored.len());
        for p in model.params().iter() {
            let t = &native[&p.name];
            assert_eq!(rel_err(p.var.as_tensor(), t), 0.0, "{name}: {}", p.name);
        }
        if has_bn {
            assert!(
                !report.ignored.is_empty()
                    && report
                        .ignored
                        .iter()
                        .all(|n| n.ends_with(".num_batches_tracked")),
                "{name}: {:?}",
                report.ignored
            );
        }
        let expected = load(&format!("{name}.expected.safetensors"));
        let input = &expected["input"];
        let eval = model
            .forward(input, &mut ForwardCtx::eval(DType::F32))
            .expect("eval");
        let e = rel_err(&eval, &expected["logits_eval"]);
        assert!(e < 1e-4, "{name}: eval logits differ from PyTorch's by {e}");
        let train = model
            .forward(input, &mut ForwardCtx::train(DType::F32, 0))
            .expect("train");
        // Train-mode batch norm over this fixture's batch of 2, at 1 × 1 in the last stages,
        // normalises differences of two nearly equal values: it magnifies f32 rounding
        // (a different summation order moves these logits by ~1e-4). The f64 forward below
        // is the tight check that every layer computes what PyTorch's does.
        let e = rel_err(&train, &expected["logits_train"]);
        assert!(
            e < 5e-4,
            "{name}: train-mode logits differ from PyTorch's by {e}"
        );
        if has_bn {
            let mut checked = 0;
            for (key, value) in &expected {
                if let Some(buffer) = key.strip_prefix("after_train.") {
                    let ours = model
                        .params()
                        .get(buffer)
                        .unwrap_or_else(|| panic!("{name}: {buffer}"));
                    let e = rel_err(ours.var.as_tensor(), value);
                    assert!(
                        e < 1e-4,
                        "{name}: {buffer} after one training pass differs by {e}"
                    );
                    checked += 1;
                }
            }
            assert!(checked > 0, "{name}: no running statistics compared");
        }
        // The same pass in f64 (PyTorch's figures are f32, so they carry f32 rounding):
        // last, because it updates the running statistics once more.
        let input64 = input.to_dtype(DType::F64).expect("f64 input");
        let train64 = model
            .forward(&input64, &mut ForwardCtx::train(DType::F64, 0))
            .and_then(|t| t.to_dtype(DType::F32))
            .expect("f64 train");
        let e = rel_err(&train64, &expected["logits_train"]);
        assert!(
            e < 2e-5,
            "{name}: f64 train-mode logits differ from PyTorch's by {e}"
        );
    }
}

#[test]
fn hugging_face_vit_at_another_resolution_resamples_the_position_embedding() {
    let model = Model::build_arch(
        "vit48",
        Architecture::Vit(vit_tiny(48)),
        Builder::new(1, &Device::Cpu),
    )
    .expect("build");
    let report =
        weights::load_pretrained(&model, &fixture("hf_vit_tiny.safetensors")).expect("load");
    assert_eq!(report.pos_embedding_resized, Some((4, 6)));
    let expected = load("hf_vit_tiny.expected.safetensors");
    let logits = model
        .forward(&expected["input_48"], &mut ForwardCtx::eval(DType::F32))
        .expect("forward");
    // transformers resizes the 4x4 patch grid to 6x6 with F.interpolate(mode="bicubic",
    // align_corners=False, no antialias) and keeps the class position: the same resampling
    // as annt's interpolate_pos_grid, so the logits agree to float rounding (~1e-6 measured).
    let e = rel_err(&logits, &expected["logits_eval_48"]);
    assert!(
        e < 1e-5,
        "logits at 48 px differ from Hugging Face's by {e}: its position-embedding \
         interpolation (bicubic, align_corners=False) no longer matches annt's"
    );
}

#[test]
fn classic_hub_names_and_timm_names_load_the_same_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archs = architectures();
    for (fixture_name, renamed, convention) in [
        (
            "hf_vit_tiny",
            hf_legacy as fn(&_) -> _,
            Convention::HuggingFace,
        ),
        ("efficientnet_tiny", as_timm, Convention::Timm),
    ] {
        let file = load(&format!("{fixture_name}.safetensors"));
        let path = dir
            .path()
            .join(format!("{fixture_name}.renamed.safetensors"));
        save_to(&renamed(&file), &path);
        let arch = archs
            .iter()
            .find(|a| a.0 == fixture_name)
            .expect("arch")
            .1
            .clone();
        let reference =
            Model::build_arch("ref", arch.clone(), Builder::new(1, &Device::Cpu)).expect("build");
        weights::load_pretrained(&reference, &fixture(&format!("{fixture_name}.safetensors")))
            .expect("reference");
        let model = Model::build_arch("m", arch, Builder::new(2, &Device::Cpu)).expect("build");
        let report = weights::load_pretrained(&model, &path).expect(fixture_name);
        assert_eq!(report.convention, convention, "{fixture_name}");
        assert_eq!(report.loaded, model.params().len());
        assert_eq!(values(&model), values(&reference), "{fixture_name}");
    }
}

#[test]
fn half_and_double_precision_checkpoints_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = load("resnet_basic_tiny.safetensors");
    let (_, arch, _) = architectures().remove(0);
    for dtype in [DType::F64, DType::F16, DType::BF16] {
        let cast: HashMap<String, Tensor> = file
            .iter()
            .map(|(k, t)| {
                let t = if t.dtype() == DType::F32 {
                    t.to_dtype(dtype).expect("cast")
                } else {
                    t.clone()
                };
                (k.clone(), t)
            })
            .collect();
        let path = dir.path().join(format!("{dtype:?}.safetensors"));
        save_to(&cast, &path);
        let model =
            Model::build_arch("r", arch.clone(), Builder::new(3, &Device::Cpu)).expect("build");
        weights::load_pretrained(&model, &path).expect("load");
        for p in model.params().iter() {
            let want = cast[&p.name].to_dtype(DType::F32).expect("f32");
            assert_eq!(
                rel_err(p.var.as_tensor(), &want),
                0.0,
                "{dtype:?}: {}",
                p.name
            );
        }
    }
}

/// (name, shape) of every tensor of a model built by name for 1000 classes.
fn native_entries(name: &str) -> Vec<(String, Vec<usize>)> {
    let model = Model::build_shapes_only(&ModelSpec::new(name, 1000)).expect("build");
    let mut v: Vec<(String, Vec<usize>)> = model
        .params()
        .iter()
        .map(|p| (p.name.clone(), p.var.dims().to_vec()))
        .collect();
    v.sort();
    v
}

#[test]
fn full_size_key_lists_of_torchvision_timm_and_hugging_face_map_onto_annt_models() {
    let text = std::fs::read_to_string(fixture("keys.json")).expect("keys.json");
    let refs: serde_json::Value = serde_json::from_str(&text).expect("json");
    let entries = |key: &str, list: &str| -> Vec<(String, Vec<usize>)> {
        refs[key][list]
            .as_array()
            .expect("list")
            .iter()
            .map(|e| {
                let name = e[0].as_str().expect("name").to_string();
                let shape = e[1]
                    .as_array()
                    .expect("shape")
                    .iter()
                    .map(|d| d.as_u64().expect("dim") as usize)
                    .collect();
                (name, shape)
            })
            .collect()
    };
    for (ours, theirs, list, convention) in [
        (
            "resnet18",
            "torchvision.resnet18",
            "keys",
            Convention::Torchvision,
        ),
        (
            "resnet50",
            "torchvision.resnet50",
            "keys",
            Convention::Torchvision,
        ),
        (
            "efficientnet-b0",
            "torchvision.efficientnet_b0",
            "keys",
            Convention::Torchvision,
        ),
        (
            "efficientnet-b0",
            "timm.efficientnet_b0",
            "keys",
            Convention::Timm,
        ),
        (
            "vit-b16",
            "torchvision.vit_b_16",
            "keys",
            Convention::Torchvision,
        ),
        ("vit-b16", "hf.vit_b16", "keys", Convention::HuggingFace),
        (
            "vit-b16",
            "hf.vit_b16",
            "legacy_keys",
            Convention::HuggingFace,
        ),
    ] {
        let (found, native, ignored, unknown) = weights::to_native(&entries(theirs, list));
        assert_eq!(found, convention, "{theirs} {list}");
        assert!(unknown.is_empty(), "{theirs} {list}: unmapped {unknown:?}");
        assert!(
            ignored.iter().all(|n| n.ends_with("num_batches_tracked")),
            "{ignored:?}"
        );
        assert_eq!(
            native,
            native_entries(ours),
            "{theirs} {list} vs annt's {ours}"
        );
    }
}

#[test]
fn another_class_count_replaces_the_head_and_keeps_everything_else() {
    let (_, arch, _) = architectures().remove(0);
    let Architecture::ResNet(mut cfg) = arch else {
        unreachable!()
    };
    cfg.classes = 5;
    let model = Model::build_arch(
        "r5",
        Architecture::ResNet(cfg),
        Builder::new(3, &Device::Cpu),
    )
    .expect("build");
    let fresh_fc: Vec<f32> = model
        .params()
        .get("fc.weight")
        .expect("fc")
        .var
        .as_tensor()
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("v");
    let report =
        weights::load_pretrained(&model, &fixture("resnet_basic_tiny.safetensors")).expect("load");
    assert!(report.head_replaced);
    let file = load("resnet_basic_tiny.safetensors");
    for p in model.params().iter() {
        if p.name.starts_with("fc.") {
            continue;
        }
        assert_eq!(
            rel_err(p.var.as_tensor(), &file[&p.name]),
            0.0,
            "{}",
            p.name
        );
    }
    let fc: Vec<f32> = model
        .params()
        .get("fc.weight")
        .expect("fc")
        .var
        .as_tensor()
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("v");
    assert_eq!(fc, fresh_fc, "the 5-class head is the model's own");
}

#[test]
fn a_checkpoint_that_does_not_fit_is_an_error_listing_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut file = load("resnet_basic_tiny.safetensors");
    file.remove("layer1.0.conv2.weight");
    file.insert(
        "layer9.0.conv1.weight".into(),
        Tensor::zeros((1, 1), DType::F32, &Device::Cpu).expect("t"),
    );
    file.insert(
        "bn1.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).expect("t"),
    );
    let path = dir.path().join("broken.safetensors");
    candle_core::safetensors::save(&file, &path).expect("save");
    let (_, arch, _) = architectures().remove(0);
    let model = Model::build_arch("r", arch, Builder::new(3, &Device::Cpu)).expect("build");
    let before = values(&model);
    let err = weights::load_pretrained(&model, &path)
        .expect_err("must not load")
        .to_string();
    for needle in [
        "layer1.0.conv2.weight",
        "layer9.0.conv1.weight",
        "bn1.weight",
        "broken.safetensors",
    ] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    assert!(
        matches!(
            weights::load_pretrained(&model, &path),
            Err(ModelError::WeightsMismatch { .. })
        ),
        "a mismatch is WeightsMismatch"
    );
    // Nothing was copied: the failed import leaves the model as it was.
    assert_eq!(values(&model), before, "a failed import changed the model");

    // A head whose input width differs is not "another class count".
    let mut file = load("resnet_basic_tiny.safetensors");
    file.insert(
        "fc.weight".into(),
        Tensor::zeros((10, 7), DType::F32, &Device::Cpu).expect("t"),
    );
    let path = dir.path().join("wide_head.safetensors");
    save_to(&file, &path);
    let err = weights::load_pretrained(&model, &path)
        .expect_err("wrong head width")
        .to_string();
    assert!(
        err.contains("fc.weight") && err.contains("[10, 7]"),
        "{err}"
    );

    // A position embedding that is not a class token plus a square grid cannot be resampled.
    let mut file = load("vit_tiny.safetensors");
    file.insert(
        "encoder.pos_embedding".into(),
        Tensor::zeros((1, 16, 16), DType::F32, &Device::Cpu).expect("t"),
    );
    let path = dir.path().join("odd_grid.safetensors");
    save_to(&file, &path);
    let vit = Model::build_arch(
        "v",
        Architecture::Vit(vit_tiny(32)),
        Builder::new(3, &Device::Cpu),
    )
    .expect("build");
    let err = weights::load_pretrained(&vit, &path)
        .expect_err("odd grid")
        .to_string();
    assert!(
        err.contains("encoder.pos_embedding") && err.contains("odd_grid.safetensors"),
        "{err}"
    );

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not a safetensors header").expect("write");
    let err = weights::load_pretrained(&model, &garbage).expect_err("garbage");
    assert!(
        matches!(err, ModelError::WeightsRead { .. })
            && err.to_string().contains("garbage.safetensors"),
        "{err}"
    );
    let err = weights::load_pretrained(&model, &dir.path().join("nope.safetensors"))
        .expect_err("missing");
    assert!(err.to_string().contains("nope.safetensors"), "{err}");
    let err = weights::load_pretrained(&model, dir.path()).expect_err("a directory");
    assert!(matches!(err, ModelError::WeightsRead { .. }), "{err}");
}

#[test]
fn saved_weights_load_back_identically_under_torchvision_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.safetensors");
    let a = Model::build(
        &ModelSpec {
            seed: 1,
            ..ModelSpec::new("resnet8-tiny", 10)
        },
        &Device::Cpu,
    )
    .expect("a");
    a.forward(
        &Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &Device::Cpu).expect("x"),
        &mut ForwardCtx::train(DType::F32, 0),
    )
    .expect("moves BN stats");
    std::fs::write(&path, b"old contents").expect("old file");
    weights::save(&a, &path).expect("save");
    let saved = candle_core::safetensors::load(&path, &Device::Cpu).expect("load");
    assert!(saved.contains_key("layer1.0.bn1.running_mean") && saved.contains_key("fc.weight"));
    let mut saved_names: Vec<&String> = saved.keys().collect();
    let mut native: Vec<&String> = a.params().iter().map(|p| &p.name).collect();
    saved_names.sort();
    native.sort();
    assert_eq!(
        saved_names, native,
        "exactly the model's tensors, native names"
    );
    assert!(saved.values().all(|t| t.dtype() == DType::F32));
    let b = Model::build(
        &ModelSpec {
            seed: 2,
            ..ModelSpec::new("resnet8-tiny", 10)
        },
        &Device::Cpu,
    )
    .expect("b");
    weights::load_pretrained(&b, &path).expect("load back");
    for p in a.params().iter() {
        assert_eq!(
            rel_err(
                b.params().get(&p.name).expect("same").var.as_tensor(),
                p.var.as_tensor()
            ),
            0.0,
            "{}",
            p.name
        );
    }
    // Saving again over the file replaces it, and leaves no temporary file behind.
    weights::save(&b, &path).expect("save over");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "temporary files left behind: {leftovers:?}"
    );
    // A save into a folder that does not exist is a write error naming the file.
    let err =
        weights::save(&a, &dir.path().join("no/such/dir/m.safetensors")).expect_err("no folder");
    assert!(
        matches!(err, ModelError::WeightsWrite { .. }) && err.to_string().contains("m.safetensors"),
        "{err}"
    );
}
