//! The engine: runs a benchmark plan on a data set and streams typed [`Event`]s.
//!
//! [`run_session`] is synchronous and thread-free: the CLI calls it directly, the GUI wraps
//! it in a worker thread. It never imports a front end; all it knows of one is the
//! [`EventSink`] it reports to and the [`StopFlag`] it polls after every micro-batch.

pub mod checkpoint;
pub mod event;
pub mod inspect;
pub mod journal;
pub mod selftest;
pub mod session;
pub mod speed;
pub mod trainer;

pub use event::{ChannelSink, Event, EventSink, StopFlag, VecSink};
pub use session::{SaveWeights, SessionOptions, run_session};

use crate::config::ConfigError;
use crate::data::DataError;
use crate::models::ModelError;

/// Why a run or a session could not go on.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("optimiser: {0}")]
    Optim(#[from] crate::train::optim::OptimError),
    #[error("learning-rate schedule: {0}")]
    Schedule(#[from] crate::train::schedule::ScheduleError),
    #[error("device {device}: {reason}")]
    Device { device: String, reason: String },
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl EngineError {
    /// Whether the device ran out of memory: CUDA's driver, cuBLAS and cuDNN each say so in
    /// their own words, and Candle passes their messages through as text. (Host memory
    /// exhaustion on the CPU aborts the process in Rust's allocator; it cannot be caught.)
    pub fn is_out_of_memory(&self) -> bool {
        let text = match self {
            EngineError::Tensor(e) => e.to_string(),
            EngineError::Device { reason, .. } => reason.clone(),
            _ => return false,
        };
        let t = text.to_ascii_lowercase();
        [
            "out of memory",
            "out_of_memory",
            "alloc_failed",
            "memoryallocation",
        ]
        .iter()
        .any(|needle| t.contains(needle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_is_recognised_in_the_words_of_cuda_cublas_and_cudnn() {
        // The texts cudarc's error types print (DriverError, CublasError, CudnnError).
        for text in [
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            "CublasError(CUBLAS_STATUS_ALLOC_FAILED)",
            "CudnnError(CUDNN_STATUS_ALLOC_FAILED)",
        ] {
            let e = EngineError::Tensor(candle_core::Error::Msg(text.into()));
            assert!(e.is_out_of_memory(), "{text}");
        }
        for e in [
            EngineError::Tensor(candle_core::Error::Msg("shape mismatch in matmul".into())),
            EngineError::Optim(crate::train::optim::OptimError::EmptyGroup(
                "out of memory".into(),
            )),
        ] {
            assert!(!e.is_out_of_memory(), "{e}");
        }
    }
}
