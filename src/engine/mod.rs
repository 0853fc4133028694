//! The engine: runs a benchmark plan on a data set and streams typed [`Event`]s.
//!
//! [`run_session`] is synchronous and thread-free: the CLI calls it directly, the GUI wraps
//! it in a worker thread. It never imports a front end; all it knows of one is the
//! [`EventSink`] it reports to and the [`StopFlag`] it polls after every micro-batch.

pub mod event;
pub mod session;
pub mod trainer;

pub use event::{ChannelSink, Event, EventSink, StopFlag, VecSink};
pub use session::{SessionOptions, run_session};

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
    Optim(String),
    #[error("device {device}: {reason}")]
    Device { device: String, reason: String },
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("the training thread stopped unexpectedly: {0}")]
    Worker(String),
}
