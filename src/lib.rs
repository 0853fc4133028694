//! annt measures what three training accelerations — gradient accumulation, automatic mixed
//! precision and pinned memory — really buy when training image classifiers with Candle.
//!
//! This library is everything but the front ends; the `annt` binary's eframe window
//! (`src/gui/`, feature `gui`) and its headless CLI (`src/cli/`) are thin layers over it and
//! drive training through one typed event stream ([`engine::event::Event`]) from a worker
//! thread. It never imports a GUI toolkit. The crate, by domain (`ARCHITECTURE.md` has the
//! data flow and where to add a model, an op, a switch or a report format):
//!
//! - [`config`]: a run's whole description (`RunConfig`, TOML presets, the three switches,
//!   the device).
//! - [`data`]: CIFAR-10/100 (binary, pickle, archives), image folders, the built-in set; the
//!   seeded loader with augmentation and a prefetch thread; upload to the device.
//! - [`models`]: ResNet, EfficientNet and ViT built from [`models::layers`], whose heavy
//!   ops pick their kernels in one place (`models::layers::kernels`: annt's CPU kernels,
//!   the CPU's bf16 units, cuDNN and annt's CUDA kernels, or Candle's ops); parameters and
//!   weight import.
//! - [`accel`]: mixed precision (modes, loss scaler, finite check) and pinned staging.
//! - [`train`]: optimisers, schedules, metrics, step timing and memory peaks.
//! - [`engine`]: one arm's training loop ([`engine::trainer`]), a session of arms
//!   ([`engine::session`]), events and the stop flag, the PyTorch-comparable speed workload
//!   ([`engine::speed`]), the GPU self-test, the crash-safe session record
//!   ([`engine::journal`]), and [`engine::inspect`]: what the front ends ask besides a run (a
//!   data set's preview, parameter counts, a weights check, a download).
//! - [`mod@bench`]: plans (A/B, ablation, arm order) and results with their definitions —
//!   data the engine consumes and fills, depending on no engine code.
//! - [`report`]: JSON (schema-versioned, readable back), CSV, Markdown and HTML reports.
//! - [`util`]: GPU queries, the environment a result records, RNG, atomic file writes.

pub mod accel;
pub mod bench;
pub mod config;
pub mod data;
pub mod engine;
pub mod models;
pub mod report;
pub mod train;
pub mod util;
