//! The three accelerations annt measures. Gradient accumulation lives in the training loop
//! (it changes how many micro-batches make one optimiser step); mixed precision needs a
//! loss scaler and a finite check ([`amp`]).

pub mod amp;
pub mod pinned;
