//! Pretrained weights: import safetensors checkpoints under their original names
//! (torchvision, timm, Hugging Face) and save trained weights under torchvision's.
//!
//! Import renames every key to annt's native (torchvision) name, concatenates Hugging Face's
//! separate query/key/value projections into PyTorch's `in_proj`, drops bookkeeping tensors
//! (`num_batches_tracked`, HF's unused pooler), and then requires an exact match: every model
//! tensor present with its shape. Two differences are expected and handled: a classification
//! head for another class count (the model's fresh head is kept) and a ViT position
//! embedding for another resolution (resampled, see [`super::vit::interpolate_pos_grid`]).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::Model;
use super::error::ModelError;
use super::params::ParamKind;
use super::vit::interpolate_pos_grid;

/// The naming convention a checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Convention {
    Torchvision,
    Timm,
    HuggingFace,
}

impl Convention {
    /// The name users know it by.
    pub fn label(self) -> &'static str {
        match self {
            Convention::Torchvision => "torchvision",
            Convention::Timm => "timm",
            Convention::HuggingFace => "Hugging Face",
        }
    }
}

/// What an import did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImportReport {
    pub convention: Convention,
    /// Tensors copied into the model.
    pub loaded: usize,
    /// The checkpoint's head was for another class count; the model's fresh head is kept.
    pub head_replaced: bool,
    /// Position-embedding grid resampled from → to (ViT at another resolution).
    pub pos_embedding_resized: Option<(usize, usize)>,
    /// Checkpoint tensors deliberately not used.
    pub ignored: Vec<String>,
}

impl ImportReport {
    /// One line for a user: "file: N tensors loaded into model (convention names); …".
    pub fn describe(&self, path: &Path, spec: &super::ModelSpec) -> String {
        let mut text = format!(
            "{}: {} tensors loaded into {} ({} names)",
            path.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            self.loaded,
            spec.name,
            self.convention.label()
        );
        if self.head_replaced {
            text.push_str(&format!("; head replaced for {} classes", spec.classes));
        }
        if let Some((from, to)) = self.pos_embedding_resized {
            text.push_str(&format!("; position grid resampled from {from} to {to}"));
        }
        text
    }
}

fn detect(names: &[&str]) -> Convention {
    if names.iter().any(|n| n.starts_with("vit.")) {
        Convention::HuggingFace
    } else if names
        .iter()
        .any(|n| *n == "conv_stem.weight" || n.starts_with("blocks."))
    {
        Convention::Timm
    } else {
        Convention::Torchvision
    }
}

fn ignorable(name: &str) -> bool {
    name.ends_with("num_batches_tracked") || name.starts_with("vit.pooler.")
}

/// Where a checkpoint key goes: a native name, or one third of a native `in_proj` tensor
/// (HF's separate q/k/v), or nowhere.
#[derive(Clone, Debug, PartialEq)]
enum Target {
    Native(String),
    /// (native name, part 0..3 for q, k, v)
    QkvPart(String, usize),
    Unknown,
}

fn timm_target(name: &str) -> Target {
    let top = |n: &str| Target::Native(n.to_string());
    match name.split_once('.') {
        Some(("conv_stem", rest)) => return top(&format!("features.0.0.{rest}")),
        Some(("bn1", rest)) => return top(&format!("features.0.1.{rest}")),
        Some(("conv_head", rest)) => return top(&format!("features.8.0.{rest}")),
        Some(("bn2", rest)) => return top(&format!("features.8.1.{rest}")),
        Some(("classifier", rest)) => return top(&format!("classifier.1.{rest}")),
        _ => {}
    }
    let parts: Vec<&str> = name.splitn(4, '.').collect();
    let [b, stage, block, rest] = parts.as_slice() else {
        return Target::Unknown;
    };
    let (Ok(stage), true) = (stage.parse::<usize>(), *b == "blocks") else {
        return Target::Unknown;
    };
    let Some((module, leaf)) = rest.rsplit_once('.') else {
        return Target::Unknown;
    };
    // timm's first stage is a depthwise-separable block (no expansion conv).
    let mapped = if stage == 0 {
        match module {
            "conv_dw" => "0.0",
            "bn1" => "0.1",
            "se.conv_reduce" => "1.fc1",
            "se.conv_expand" => "1.fc2",
            "conv_pw" => "2.0",
            "bn2" => "2.1",
            _ => return Target::Unknown,
        }
    } else {
        match module {
            "conv_pw" => "0.0",
            "bn1" => "0.1",
            "conv_dw" => "1.0",
            "bn2" => "1.1",
            "se.conv_reduce" => "2.fc1",
            "se.conv_expand" => "2.fc2",
            "conv_pwl" => "3.0",
            "bn3" => "3.1",
            _ => return Target::Unknown,
        }
    };
    Target::Native(format!(
        "features.{}.{block}.block.{mapped}.{leaf}",
        stage + 1
    ))
}

fn hf_target(name: &str) -> Target {
    let native = |n: String| Target::Native(n);
    match name {
        "vit.embeddings.cls_token" => return native("class_token".into()),
        "vit.embeddings.position_embeddings" => return native("encoder.pos_embedding".into()),
        _ => {}
    }
    if let Some(leaf) = name.strip_prefix("vit.embeddings.patch_embeddings.projection.") {
        return native(format!("conv_proj.{leaf}"));
    }
    if let Some(leaf) = name.strip_prefix("vit.layernorm.") {
        return native(format!("encoder.ln.{leaf}"));
    }
    if let Some(leaf) = name.strip_prefix("classifier.") {
        return native(format!("heads.head.{leaf}"));
    }
    // Classic Hub names `vit.encoder.layer.N.…` and transformers-5 names `vit.layers.N.…`.
    let rest = name
        .strip_prefix("vit.encoder.layer.")
        .or_else(|| name.strip_prefix("vit.layers."));
    let Some(rest) = rest else {
        return Target::Unknown;
    };
    let Some((index, rest)) = rest.split_once('.') else {
        return Target::Unknown;
    };
    let Ok(i) = index.parse::<usize>() else {
        return Target::Unknown;
    };
    let Some((module, leaf)) = rest.rsplit_once('.') else {
        return Target::Unknown;
    };
    let layer = format!("encoder.layers.encoder_layer_{i}");
    let in_proj = format!("{layer}.self_attention.in_proj_{leaf}");
    match module {
        "attention.attention.query" | "attention.q_proj" => Target::QkvPart(in_proj, 0),
        "attention.attention.key" | "attention.k_proj" => Target::QkvPart(in_proj, 1),
        "attention.attention.value" | "attention.v_proj" => Target::QkvPart(in_proj, 2),
        "attention.output.dense" | "attention.o_proj" => {
            native(format!("{layer}.self_attention.out_proj.{leaf}"))
        }
        "layernorm_before" => native(format!("{layer}.ln_1.{leaf}")),
        "layernorm_after" => native(format!("{layer}.ln_2.{leaf}")),
        "intermediate.dense" | "mlp.fc1" => native(format!("{layer}.mlp.0.{leaf}")),
        "output.dense" | "mlp.fc2" => native(format!("{layer}.mlp.3.{leaf}")),
        _ => Target::Unknown,
    }
}

fn target(convention: Convention, name: &str) -> Target {
    match convention {
        Convention::Torchvision => Target::Native(name.to_string()),
        Convention::Timm => timm_target(name),
        Convention::HuggingFace => hf_target(name),
    }
}

/// Renames checkpoint entries `(name, shape)` to native names and shapes (q/k/v merged along
/// the first dimension). Returns the convention, the native entries (sorted by name), the
/// ignored names, and the names no rule knows (unexpected).
#[allow(clippy::type_complexity)]
pub fn to_native(
    entries: &[(String, Vec<usize>)],
) -> (
    Convention,
    Vec<(String, Vec<usize>)>,
    Vec<String>,
    Vec<String>,
) {
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    let convention = detect(&names);
    let mut native: HashMap<String, Vec<usize>> = HashMap::new();
    let (mut ignored, mut unknown) = (Vec::new(), Vec::new());
    for (name, shape) in entries {
        if ignorable(name) {
            ignored.push(name.clone());
            continue;
        }
        match target(convention, name) {
            Target::Native(n) => {
                native.insert(n, shape.clone());
            }
            Target::QkvPart(n, _) => {
                let entry = native.entry(n).or_insert_with(|| {
                    let mut s = shape.clone();
                    if let Some(first) = s.first_mut() {
                        *first = 0;
                    }
                    s
                });
                if let Some(first) = entry.first_mut() {
                    *first += shape.first().copied().unwrap_or(0);
                }
            }
            Target::Unknown => unknown.push(name.clone()),
        }
    }
    let mut native: Vec<(String, Vec<usize>)> = native.into_iter().collect();
    native.sort();
    (convention, native, ignored, unknown)
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut s = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// Loads a safetensors checkpoint into `model` (see the module docs for what must match).
pub fn load_pretrained(model: &Model, path: &Path) -> Result<ImportReport, ModelError> {
    let read_err = |reason: String| ModelError::WeightsRead {
        path: path.to_path_buf(),
        reason,
    };
    if !path.exists() {
        return Err(read_err("no such file".into()));
    }
    if !path.is_file() {
        return Err(read_err("not a file".into()));
    }
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| read_err(format!("not a safetensors file: {e}")))?;
    let entries: Vec<(String, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();
    let (convention, _, mut ignored, unknown) = to_native(&entries);
    ignored.sort();

    // Native tensors, with q/k/v concatenated in order.
    let mut native: HashMap<String, Tensor> = HashMap::new();
    let mut qkv: HashMap<String, [Option<Tensor>; 3]> = HashMap::new();
    for (name, t) in &tensors {
        if ignorable(name) {
            continue;
        }
        let t = t.to_dtype(DType::F32)?;
        match target(convention, name) {
            Target::Native(n) => {
                native.insert(n, t);
            }
            Target::QkvPart(n, part) => qkv.entry(n).or_default()[part] = Some(t),
            Target::Unknown => {}
        }
    }
    let mut problems = Vec::new();
    for (name, parts) in qkv {
        match parts {
            [Some(q), Some(k), Some(v)]
                if q.dims() == k.dims() && q.dims() == v.dims() && q.rank() >= 1 =>
            {
                native.insert(name, Tensor::cat(&[q, k, v], 0)?);
            }
            [Some(q), Some(k), Some(v)] => problems.push(format!(
                "{name}: query {:?}, key {:?} and value {:?} differ in shape",
                q.dims(),
                k.dims(),
                v.dims()
            )),
            _ => problems.push(format!(
                "{name} needs query, key and value; some are missing"
            )),
        }
    }

    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut head_replaced = false;
    let mut pos_resized = None;
    let mut to_copy: Vec<(&super::params::Param, Tensor)> = Vec::new();
    for p in model.params().iter() {
        let Some(t) = native.remove(&p.name) else {
            missing.push(p.name.clone());
            continue;
        };
        let want = p.var.dims();
        if t.dims() == want {
            to_copy.push((p, t));
        } else if p.kind == ParamKind::Head
            && t.rank() == want.len()
            && t.dims().get(1..) == want.get(1..)
        {
            // Only the class count (the first dimension) differs: keep the fresh head.
            head_replaced = true;
        } else if p.name == "encoder.pos_embedding"
            && t.rank() == 3
            && want.len() == 3
            && t.dim(2)? == want[2]
        {
            match resize_pos_embedding(&t, want[1]) {
                Ok((resized, grids)) => {
                    pos_resized = Some(grids);
                    to_copy.push((p, resized));
                }
                Err(reason) => mismatched.push(format!("{}: {reason}", p.name)),
            }
        } else {
            mismatched.push(format!(
                "{} is {:?} in the file, {:?} in the model",
                p.name,
                t.dims(),
                want
            ));
        }
    }
    let mut unexpected: Vec<String> = native.into_keys().chain(unknown).collect();
    unexpected.sort();
    if !missing.is_empty() {
        problems.push(format!("missing {}: {}", missing.len(), list(&missing)));
    }
    if !unexpected.is_empty() {
        problems.push(format!(
            "unexpected {}: {}",
            unexpected.len(),
            list(&unexpected)
        ));
    }
    if !mismatched.is_empty() {
        problems.push(format!(
            "wrong shape {}: {}",
            mismatched.len(),
            list(&mismatched)
        ));
    }
    if !problems.is_empty() {
        return Err(ModelError::WeightsMismatch {
            model: model.name.clone(),
            detail: format!("{:?} names; {}", convention, problems.join("; ")),
            path: path.to_path_buf(),
        });
    }
    let loaded = to_copy.len();
    for (p, t) in to_copy {
        p.var
            .set(&t.to_dtype(p.var.dtype())?.to_device(p.var.device())?)?;
    }
    Ok(ImportReport {
        convention,
        loaded,
        head_replaced,
        pos_embedding_resized: pos_resized,
        ignored,
    })
}

fn grid_of(positions: usize) -> Option<usize> {
    let g = (positions as f64).sqrt().round() as usize;
    (g > 0 && g * g == positions).then_some(g)
}

/// `[1, 1 + g², d]` → `[1, 1 + h², d]`: the class-token row is kept, the grid resampled
/// (bicubic, half-pixel centres: what Hugging Face's `interpolate_pos_encoding` does).
/// Returns the tensor and the grid sides (g, h).
fn resize_pos_embedding(t: &Tensor, want_len: usize) -> Result<(Tensor, (usize, usize)), String> {
    let (batch, len, d) = t.dims3().map_err(|e| e.to_string())?;
    let squares = (
        len.checked_sub(1).and_then(grid_of),
        want_len.checked_sub(1).and_then(grid_of),
    );
    let (1, (Some(from), Some(to))) = (batch, squares) else {
        return Err(format!(
            "{:?} in the file cannot be resampled to {want_len} positions (class token + square grid)",
            t.dims()
        ));
    };
    let values: Vec<f32> = t
        .flatten_all()
        .and_then(|v| v.to_vec1())
        .map_err(|e| e.to_string())?;
    let (cls, grid) = values.split_at(d);
    let mut out = cls.to_vec();
    out.extend(interpolate_pos_grid(grid, from, to, d));
    let t = Tensor::from_vec(out, (1, want_len, d), &Device::Cpu).map_err(|e| e.to_string())?;
    Ok((t, (from, to)))
}

/// Saves every parameter and buffer under its native name, in f32, atomically (a temporary
/// file in the same folder renamed over the target).
pub fn save(model: &Model, path: &Path) -> Result<(), ModelError> {
    let write_err = |reason: String| ModelError::WeightsWrite {
        path: path.to_path_buf(),
        reason,
    };
    let tensors: HashMap<String, Tensor> = model
        .params()
        .iter()
        .map(|p| {
            Ok((
                p.name.clone(),
                p.var
                    .as_tensor()
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?,
            ))
        })
        .collect::<Result<_, candle_core::Error>>()?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Dropped (and deleted) on any error before the rename.
    let tmp = tempfile::Builder::new()
        .prefix(".annt-partial-")
        .tempfile_in(dir)
        .map_err(|e| write_err(e.to_string()))?;
    candle_core::safetensors::save(&tensors, tmp.path()).map_err(|e| write_err(e.to_string()))?;
    // candle wrote through its own handle; flush the data to disk before the rename.
    tmp.as_file()
        .sync_all()
        .map_err(|e| write_err(e.to_string()))?;
    tmp.persist(path)
        .map_err(|e| write_err(e.error.to_string()))?;
    Ok(())
}
