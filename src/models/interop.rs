//! candle-nn's idioms for annt's models and optimiser, so a Candle user can reuse them: a
//! model's tensors load from a `candle_nn::VarBuilder` (e.g. `from_mmaped_safetensors`) and
//! appear in a `candle_nn::VarMap` under their torchvision names (so `VarMap::save` writes
//! a checkpoint annt and PyTorch read), and annt's optimiser implements
//! `candle_nn::Optimizer` (see `train::optim`).
//!
//! annt keeps its own layers where candle-nn's drop gradients or lack what the benchmark
//! needs (see `models::layers`); this module is the bridge, not a second implementation.

use candle_nn::{VarBuilder, VarMap};

use super::{Model, ModelError};

impl Model {
    /// Copies every tensor (parameters and batch-norm buffers) from `vb` by its torchvision
    /// name, cast to the model's f32; a missing or misshapen tensor is an error naming it.
    pub fn load_var_builder(&self, vb: &VarBuilder) -> Result<usize, ModelError> {
        let mut loaded = 0;
        for p in self.params().iter() {
            let t = vb
                .get(p.var.shape(), &p.name)
                .map_err(|e| ModelError::Internal(format!("{}: {e}", p.name)))?;
            p.var
                .set(&t.to_dtype(p.var.dtype())?.to_device(p.var.device())?)
                .map_err(|e| ModelError::Internal(format!("{}: {e}", p.name)))?;
            loaded += 1;
        }
        Ok(loaded)
    }

    /// The model's own variables in a `VarMap` (shared, not copied: training the model
    /// changes what the map holds, and `VarMap::load` changes the model).
    pub fn var_map(&self) -> VarMap {
        let map = VarMap::new();
        if let Ok(mut data) = map.data().lock() {
            for p in self.params().iter() {
                data.insert(p.name.clone(), p.var.clone());
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::super::{Model, ModelSpec};

    #[test]
    fn a_var_map_saved_by_candle_nn_loads_back_through_a_var_builder() {
        let spec = ModelSpec {
            seed: 3,
            ..ModelSpec::new("resnet8-tiny", 10)
        };
        let a = Model::build(&spec, &Device::Cpu).expect("a");
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("r8.safetensors");
        a.var_map().save(&path).expect("save");
        let b = Model::build(&ModelSpec { seed: 4, ..spec }, &Device::Cpu).expect("b");
        // The buffered reader: `from_mmaped_safetensors` is `unsafe` (the file must not
        // change while mapped), and the crate denies unsafe code outside its kernels.
        let bytes = std::fs::read(&path).expect("read");
        let vb = candle_nn::VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
            .expect("vb");
        let n = b.load_var_builder(&vb).expect("load");
        assert_eq!(n, a.params().len());
        for (p, q) in a.params().iter().zip(b.params().iter()) {
            let d: f32 = (p.var.as_tensor() - q.var.as_tensor())
                .and_then(|t| t.abs())
                .and_then(|t| t.max_all())
                .and_then(|t| t.to_scalar())
                .expect("diff");
            assert_eq!(d, 0.0, "{}", p.name);
        }
    }
}
