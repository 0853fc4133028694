//! Named parameters and buffers of a model, in torchvision's naming, and their initialisers.
//!
//! Every tensor a model owns lives here under its PyTorch state-dict name
//! (`layer1.0.bn1.running_mean`), in f32 — the master copy that mixed precision casts from.
//! A [`Builder`] creates them in construction order with a seeded generator, so the same
//! seed gives bit-identical initial weights on any machine (the benchmark's arms depend on
//! it). Trainable tensors and buffers (batch-norm running statistics) are kept apart: only
//! the former receive gradients, and the optimiser's parameter groups read [`ParamKind`].

use candle_core::{DType, Device, Tensor, Var};

use crate::util::rng::Rng;

use super::error::ModelError;

/// What a tensor is, for optimiser groups (no weight decay on norms and biases) and for
/// telling parameters from buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParamKind {
    /// Convolution and linear weights, embeddings, class tokens: decayed.
    Weight,
    /// Biases of convolutions and linear layers: not decayed.
    Bias,
    /// Scale and shift of batch and layer norms: not decayed.
    Norm,
    /// The classification head (weight and bias), which is replaced to fit the class count
    /// and often gets its own learning rate.
    Head,
    /// Not trained: batch-norm running mean and variance.
    Buffer,
}

impl ParamKind {
    pub fn is_trainable(self) -> bool {
        self != ParamKind::Buffer
    }
}

/// One named tensor of a model.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub var: Var,
    pub kind: ParamKind,
}

/// `t` as a new value for `var` (restoring saved state): the same shape, else a sentence
/// naming `what` and both shapes; converted to the variable's dtype and device.
pub fn value_for(var: &Var, t: &Tensor, what: &str) -> Result<Tensor, String> {
    if t.dims() != var.dims() {
        return Err(format!(
            "{what} has shape {:?}, the parameter {:?}",
            t.dims(),
            var.dims()
        ));
    }
    t.to_dtype(var.dtype())
        .and_then(|t| t.to_device(var.device()))
        .map_err(|e| e.to_string())
}

/// All tensors of a model in construction order.
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    params: Vec<Param>,
}

impl ParamStore {
    /// A store of given tensors (e.g. variables from outside annt for its optimiser).
    pub fn from_params(params: Vec<Param>) -> Self {
        Self { params }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.params.iter()
    }
    /// Tensors that receive gradients.
    pub fn trainable(&self) -> impl Iterator<Item = &Param> {
        self.params.iter().filter(|p| p.kind.is_trainable())
    }
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }
    /// Number of trainable scalars (what PyTorch's `sum(p.numel() for p in m.parameters())`
    /// counts: buffers excluded).
    pub fn trainable_count(&self) -> usize {
        self.trainable().map(|p| p.var.elem_count()).sum()
    }
    pub fn len(&self) -> usize {
        self.params.len()
    }
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
    fn push(&mut self, param: Param) -> Result<(), ModelError> {
        if self.get(&param.name).is_some() {
            return Err(ModelError::Internal(format!(
                "parameter {} created twice",
                param.name
            )));
        }
        self.params.push(param);
        Ok(())
    }
}

/// How a weight is initialised (PyTorch's defaults for each layer, or what torchvision's
/// model constructors override them with).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// `N(0, std²)`.
    Normal(f32),
    /// `N(0, std²)` truncated at ±2 std (timm/torchvision ViT).
    TruncNormal(f32),
    /// `U(−bound, bound)`.
    Uniform(f32),
}

/// Creates a model's tensors with seeded initial values.
pub struct Builder {
    store: ParamStore,
    rng: Rng,
    device: Device,
    dtype: DType,
    zeroed: bool,
}

impl Builder {
    pub fn new(seed: u64, device: &Device) -> Self {
        Self {
            store: ParamStore::default(),
            rng: Rng::new(seed),
            device: device.clone(),
            dtype: DType::F32,
            zeroed: false,
        }
    }
    /// Fills every tensor with zeros instead of drawing initial values: for counting
    /// parameters and listing shapes (`annt models`) without paying for 86 M random draws.
    pub fn zeroed(mut self) -> Self {
        self.zeroed = true;
        self
    }
    /// Stores parameters in `dtype` instead of f32 (f64 for the gradient checks).
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn finish(self) -> ParamStore {
        self.store
    }

    /// Creates the f32 tensor `name` of `shape`.
    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        init: Init,
        kind: ParamKind,
    ) -> Result<Var, ModelError> {
        let len: usize = shape.iter().product();
        let rng = &mut self.rng;
        let init = if self.zeroed { Init::Zeros } else { init };
        let values: Vec<f32> = match init {
            Init::Zeros => vec![0.0; len],
            Init::Ones => vec![1.0; len],
            Init::Normal(std) => (0..len).map(|_| rng.normal() * std).collect(),
            Init::TruncNormal(std) => (0..len)
                .map(|_| {
                    loop {
                        let v = rng.normal();
                        if v.abs() <= 2.0 {
                            break v * std;
                        }
                    }
                })
                .collect(),
            Init::Uniform(bound) => (0..len).map(|_| rng.uniform(-bound, bound)).collect(),
        };
        let tensor = Tensor::from_vec(values, shape, &self.device)?.to_dtype(self.dtype)?;
        let var = Var::from_tensor(&tensor)?;
        self.store.push(Param {
            name: name.to_string(),
            var: var.clone(),
            kind,
        })?;
        Ok(var)
    }
}

/// Joins a module path and a tensor name the way PyTorch's state dict does.
pub fn join(prefix: &str, name: impl std::fmt::Display) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
