//! Training: optimisers with parameter groups, learning-rate schedules, metrics and timing.
//! The epoch loop that uses them lives in [`crate::engine`].

pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod timing;
