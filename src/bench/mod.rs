//! Benchmark plans (A/B, the 2³ ablation, repeats) and what a session produces: data the
//! engine consumes and fills, with no dependency on it (the throughput benchmark, which runs
//! the trainer, lives in `engine::speed`).

pub mod plan;
pub mod result;
pub mod verdict;
