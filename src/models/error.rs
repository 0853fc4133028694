//! `ModelError`: what can go wrong building, running, loading or saving a model.

use std::path::PathBuf;

/// An error from the model zoo.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model {name:?}; known models: {known}")]
    UnknownModel { name: String, known: String },
    #[error("{model} cannot take {detail}")]
    BadConfig { model: String, detail: String },
    #[error("cannot read weights ({reason}): {}", path.display())]
    WeightsRead { path: PathBuf, reason: String },
    #[error("weights do not fit {model}: {detail}: {}", path.display())]
    WeightsMismatch {
        model: String,
        detail: String,
        path: PathBuf,
    },
    #[error("cannot write weights ({reason}): {}", path.display())]
    WeightsWrite { path: PathBuf, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}
