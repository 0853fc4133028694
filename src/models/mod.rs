//! The model zoo: ResNet-8/18/50, EfficientNet-B0 and the ViT family, written on
//! candle-core with layers whose gradients are all checked ([`layers`]), torchvision's
//! parameter names ([`params`]) and pretrained-weight import ([`weights`]).
//!
//! A model is built by name ([`VARIANTS`] lists them) for a class count, an input
//! resolution, a seed and a device. Its forward pass takes a [`ForwardCtx`] (train or
//! eval, compute dtype, kernel path) and returns f32 logits.

pub mod efficientnet;
pub mod error;
pub mod interop;
pub mod layers;
pub mod params;
pub mod resnet;
pub mod vit;
pub mod weights;

use candle_core::{DType, Device, Result as CandleResult, Tensor};

pub use error::ModelError;
pub use layers::{ForwardCtx, Kernels};
pub use params::{Builder, Param, ParamKind, ParamStore};

use efficientnet::{EfficientNet, EfficientNetConfig};
use resnet::{ResNet, ResNetConfig, Stem};
use vit::{Vit, VitConfig};

/// A network's forward pass: images `n × 3 × h × w` in the compute dtype → logits `n × k`.
pub trait Network: Send + Sync {
    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> CandleResult<Tensor>;
}

/// Model families, for grouping in the UI and for weight-name conventions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Family {
    #[serde(rename = "resnet")]
    ResNet,
    #[serde(rename = "efficientnet")]
    EfficientNet,
    #[serde(rename = "vit")]
    Vit,
}

/// One buildable model variant: everything about it, so a new variant of an existing family
/// is one entry in [`VARIANTS`] and nothing else.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Variant {
    pub name: &'static str,
    pub family: Family,
    /// Its architecture for `(classes, input resolution)`.
    #[serde(skip)]
    pub architecture: fn(usize, usize) -> Architecture,
    /// The input size the variant is designed for (and its pretrained weights were made at).
    pub resolution: usize,
    /// Whether the paper's recipe starts from ImageNet weights (`--weights FILE`).
    pub pretrained: bool,
    /// Trains at a useful speed on a laptop CPU.
    pub cpu_friendly: bool,
    pub description: &'static str,
}

/// Every model annt can build.
pub const VARIANTS: &[Variant] = &[
    Variant {
        name: "resnet8-tiny",
        architecture: |k, _| Architecture::ResNet(ResNetConfig::resnet8_tiny(k)),
        family: Family::ResNet,
        resolution: 32,
        pretrained: false,
        cpu_friendly: true,
        description: "ResNet-8, widths 16/32/64: CPU demos and tests",
    },
    Variant {
        name: "resnet18-cifar",
        architecture: |k, _| Architecture::ResNet(ResNetConfig::resnet18(Stem::Cifar, k)),
        family: Family::ResNet,
        resolution: 32,
        pretrained: false,
        cpu_friendly: false,
        description: "ResNet-18, CIFAR stem (3x3 conv, no max-pool)",
    },
    Variant {
        name: "resnet50-cifar",
        architecture: |k, _| Architecture::ResNet(ResNetConfig::resnet50(Stem::Cifar, k)),
        family: Family::ResNet,
        resolution: 32,
        pretrained: false,
        cpu_friendly: false,
        description: "ResNet-50, CIFAR stem: the paper's from-scratch model",
    },
    Variant {
        name: "resnet18",
        architecture: |k, _| Architecture::ResNet(ResNetConfig::resnet18(Stem::ImageNet, k)),
        family: Family::ResNet,
        resolution: 224,
        pretrained: true,
        cpu_friendly: false,
        description: "ResNet-18, ImageNet stem (7x7 conv + max-pool)",
    },
    Variant {
        name: "resnet50",
        architecture: |k, _| Architecture::ResNet(ResNetConfig::resnet50(Stem::ImageNet, k)),
        family: Family::ResNet,
        resolution: 224,
        pretrained: true,
        cpu_friendly: false,
        description: "ResNet-50, ImageNet stem (7x7 conv + max-pool)",
    },
    Variant {
        name: "efficientnet-b0",
        architecture: |k, _| Architecture::EfficientNet(EfficientNetConfig::b0(k)),
        family: Family::EfficientNet,
        resolution: 224,
        pretrained: true,
        cpu_friendly: false,
        description: "EfficientNet-B0: the paper's fine-tuned convnet",
    },
    Variant {
        name: "vit-b16",
        architecture: |k, res| Architecture::Vit(VitConfig::b(16, res, k)),
        family: Family::Vit,
        resolution: 224,
        pretrained: true,
        cpu_friendly: false,
        description: "ViT-B/16: the paper's fine-tuned transformer",
    },
    Variant {
        name: "vit-s16",
        architecture: |k, res| Architecture::Vit(VitConfig::s(16, res, k)),
        family: Family::Vit,
        resolution: 224,
        pretrained: true,
        cpu_friendly: false,
        description: "ViT-S/16",
    },
    Variant {
        name: "vit-ti16",
        architecture: |k, res| Architecture::Vit(VitConfig::ti(16, res, k)),
        family: Family::Vit,
        resolution: 224,
        pretrained: true,
        cpu_friendly: false,
        description: "ViT-Ti/16",
    },
    Variant {
        name: "vit-b4",
        architecture: |k, res| Architecture::Vit(VitConfig::b(4, res, k)),
        family: Family::Vit,
        resolution: 32,
        pretrained: false,
        cpu_friendly: false,
        description: "ViT-B with 4x4 patches for 32-px inputs",
    },
    Variant {
        name: "vit-s4",
        architecture: |k, res| Architecture::Vit(VitConfig::s(4, res, k)),
        family: Family::Vit,
        resolution: 32,
        pretrained: false,
        cpu_friendly: false,
        description: "ViT-S with 4x4 patches for 32-px inputs",
    },
    Variant {
        name: "vit-ti4",
        architecture: |k, res| Architecture::Vit(VitConfig::ti(4, res, k)),
        family: Family::Vit,
        resolution: 32,
        pretrained: false,
        cpu_friendly: true,
        description: "ViT-Ti with 4x4 patches for 32-px inputs",
    },
];

/// Whether a model normalises with batch norm (ResNets, EfficientNet), whose statistics
/// depend on the micro-batch, so that gradient accumulation is not the same computation as
/// one large batch. The ViTs use layer norm (per sample). False for an unknown name.
pub fn uses_batch_norm(name: &str) -> bool {
    variant(name).is_ok_and(|v| matches!(v.family, Family::ResNet | Family::EfficientNet))
}

/// Looks a variant up by name.
pub fn variant(name: &str) -> Result<&'static Variant, ModelError> {
    VARIANTS
        .iter()
        .find(|v| v.name == name)
        .ok_or_else(|| ModelError::UnknownModel {
            name: name.to_string(),
            known: VARIANTS
                .iter()
                .map(|v| v.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// What to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: String,
    pub classes: usize,
    /// Input resolution; `None` takes the variant's. Only ViTs depend on it (their position
    /// embeddings); the convnets pool globally.
    pub resolution: Option<usize>,
    /// Seeds the initial weights.
    pub seed: u64,
}

/// The architecture of a buildable model.
#[derive(Clone, Debug, PartialEq)]
pub enum Architecture {
    ResNet(ResNetConfig),
    EfficientNet(EfficientNetConfig),
    Vit(VitConfig),
}

impl ModelSpec {
    pub fn new(name: &str, classes: usize) -> Self {
        Self {
            name: name.to_string(),
            classes,
            resolution: None,
            seed: 0,
        }
    }

    /// The architecture this spec names.
    pub fn architecture(&self) -> Result<Architecture, ModelError> {
        let v = variant(&self.name)?;
        if self.classes < 2 {
            return Err(ModelError::BadConfig {
                model: self.name.clone(),
                detail: format!("{} classes (at least 2)", self.classes),
            });
        }
        let k = self.classes;
        let res = self.resolution.unwrap_or(v.resolution);
        Ok((v.architecture)(k, res))
    }
}

/// A built model: its tensors and its forward pass.
pub struct Model {
    pub name: String,
    pub architecture: Architecture,
    params: ParamStore,
    net: Box<dyn Network>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("params", &self.params.len())
            .finish()
    }
}

impl Model {
    /// Builds `spec` on `device` with f32 parameters.
    pub fn build(spec: &ModelSpec, device: &Device) -> std::result::Result<Self, ModelError> {
        Self::build_arch(
            &spec.name,
            spec.architecture()?,
            Builder::new(spec.seed, device),
        )
    }

    /// Builds an architecture with a given builder (tests use f64 parameters and scaled-down
    /// architectures).
    pub fn build_arch(
        name: &str,
        architecture: Architecture,
        mut b: Builder,
    ) -> std::result::Result<Self, ModelError> {
        let net: Box<dyn Network> = match &architecture {
            Architecture::ResNet(cfg) => Box::new(ResNet::new(&mut b, cfg)?),
            Architecture::EfficientNet(cfg) => Box::new(EfficientNet::new(&mut b, cfg)?),
            Architecture::Vit(cfg) => Box::new(Vit::new(&mut b, cfg)?),
        };
        Ok(Self {
            name: name.to_string(),
            architecture,
            params: b.finish(),
            net,
        })
    }

    /// Builds `spec` with all-zero tensors on the CPU: cheap, for counting and listing.
    pub fn build_shapes_only(spec: &ModelSpec) -> Result<Self, ModelError> {
        Self::build_arch(
            &spec.name,
            spec.architecture()?,
            Builder::new(0, &Device::Cpu).zeroed(),
        )
    }

    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// Trainable scalars, as PyTorch counts them.
    pub fn param_count(&self) -> usize {
        self.params.trainable_count()
    }

    /// Images in any float dtype (cast to `ctx.dtype` here) → logits in f32 (f64 in f64).
    pub fn forward(&self, images: &Tensor, ctx: &mut ForwardCtx) -> CandleResult<Tensor> {
        let x = images.to_dtype(ctx.dtype)?;
        let out_dtype = if ctx.dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        self.net.forward(&x, ctx)?.to_dtype(out_dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_builds_an_architecture_of_its_own_family() {
        for v in VARIANTS {
            let arch = ModelSpec::new(v.name, 10).architecture().expect(v.name);
            let family = match arch {
                Architecture::ResNet(_) => Family::ResNet,
                Architecture::EfficientNet(_) => Family::EfficientNet,
                Architecture::Vit(_) => Family::Vit,
            };
            assert_eq!(family, v.family, "{}", v.name);
        }
        let names: std::collections::HashSet<_> = VARIANTS.iter().map(|v| v.name).collect();
        assert_eq!(names.len(), VARIANTS.len(), "names are unique");
    }
}
