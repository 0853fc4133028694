//! Benchmark plans (A/B, the 2³ ablation, repeats) and what a session produces.

pub mod plan;
pub mod result;
pub mod speed;
