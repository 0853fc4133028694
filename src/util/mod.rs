//! Small helpers shared by several domains: a version-stable RNG and atomic file writes.

pub mod atomic_write;
pub mod env;
pub mod rng;
