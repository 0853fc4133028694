//! annt measures what three training accelerations — gradient accumulation, automatic mixed
//! precision and pinned memory — really buy when training image classifiers with Candle.
//!
//! This library holds everything but the front ends: data sets and the batching pipeline
//! ([`data`]), the model zoo with its layers and weight import ([`models`]), and small
//! shared utilities ([`util`]). It never imports a GUI toolkit; the
//! `annt` binary's CLI (and later its window) are thin layers over it.

pub mod accel;
pub mod bench;
pub mod config;
pub mod data;
pub mod engine;
pub mod models;
pub mod report;
pub mod train;
pub mod util;
