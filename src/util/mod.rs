//! Small helpers shared by several domains: a version-stable RNG and atomic file writes, the
//! environment a result was measured in and the CUDA devices present.

pub mod atomic_write;
pub mod env;
pub mod gpu;
pub mod rng;
