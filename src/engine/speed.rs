//! Training throughput on synthetic data: the workload of `benches/torch_peer.py`
//! (annt's PyTorch yardstick), run through annt's own trainer so the two can be compared on
//! the same machine in the same session.
//!
//! The workload, as the peer's: a pool of 8 batches of random u8 images at the model's
//! resolution (uploaded as u8 and normalised on the device), random labels, SGD with
//! Nesterov momentum 0.9, lr 0.01, weight decay 5e-4, cross-entropy, `warmup` steps
//! excluded, then `steps` optimiser steps timed by annt's step timer (the host clock on the
//! CPU; CUDA events on the training stream on a GPU, so no step waits for the device). No
//! augmentation. The modes are the peer's: `fp32`, `tf32`
//! (f32 with TF32 matrix products, CUDA only), `amp-bf16`, `amp-fp16` (with the loss
//! scaler).

use std::sync::Arc;

use serde::Serialize;

use super::session::open_device;
use super::trainer::train_run;
use super::{EngineError, StopFlag, VecSink};
use crate::accel::amp::AmpMode;
use crate::bench::plan::Arm;
use crate::config::{DeviceChoice, RunConfig, Switches};
use crate::data::{DataFormat, Dataset, ImageSet, Normalization};
use crate::train::optim::OptimizerConfig;
use crate::util::rng::Rng;

/// The peer's precision modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum SpeedMode {
    #[serde(rename = "fp32")]
    Fp32,
    #[serde(rename = "tf32")]
    Tf32,
    #[serde(rename = "amp-bf16")]
    Bf16,
    #[serde(rename = "amp-fp16")]
    Fp16,
}

impl std::str::FromStr for SpeedMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(SpeedMode::Fp32),
            "tf32" => Ok(SpeedMode::Tf32),
            "amp-bf16" | "bf16" => Ok(SpeedMode::Bf16),
            "amp-fp16" | "fp16" => Ok(SpeedMode::Fp16),
            _ => Err(format!("mode {s:?}: use fp32, tf32, amp-bf16 or amp-fp16")),
        }
    }
}

impl SpeedMode {
    /// Why this mode cannot be measured on `device`, if it cannot: TF32 is a GPU
    /// matrix-unit mode, and on the CPU it would time fp32 again under another name.
    pub fn not_applicable_on(self, device: DeviceChoice) -> Option<&'static str> {
        (self == SpeedMode::Tf32 && device == DeviceChoice::Cpu)
            .then_some("tf32 does not apply on the CPU (it is a GPU matrix-unit mode: it would measure fp32 again)")
    }

    fn amp(self) -> AmpMode {
        match self {
            SpeedMode::Fp32 | SpeedMode::Tf32 => AmpMode::Off,
            SpeedMode::Bf16 => AmpMode::Bf16,
            SpeedMode::Fp16 => AmpMode::Fp16,
        }
    }
}

/// One throughput measurement's settings.
#[derive(Clone, Debug)]
pub struct SpeedConfig {
    /// An annt model name (`annt models`).
    pub model: String,
    /// Input side in pixels (None: the model's own).
    pub resolution: Option<usize>,
    pub classes: usize,
    pub batch: usize,
    pub accum: usize,
    pub pinned: bool,
    pub steps: u64,
    pub warmup: u64,
    pub device: DeviceChoice,
}

/// One line of output, with the peer's keys (so one table can hold both).
#[derive(Clone, Debug, Serialize)]
pub struct SpeedResult {
    pub peer: &'static str,
    pub annt: &'static str,
    pub device: String,
    pub model: String,
    pub res: usize,
    pub batch: usize,
    pub accum: usize,
    pub mode: SpeedMode,
    pub pinned: bool,
    pub steps: u64,
    pub images_per_s: f64,
    pub ms_per_step: f64,
    pub params: usize,
    /// Peak device memory in MiB on CUDA (the peer's key, which it fills with
    /// `torch.cuda.max_memory_allocated`); absent on the CPU, which has no device memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_mem_mib: Option<f64>,
    /// This measurement's own peak resident host memory in MiB (the whole process: the
    /// pool of batches, the model, gradients and optimiser state); not comparable with the
    /// peer's `peak_mem_mib`.
    pub peak_host_mib: Option<f64>,
    /// Mean milliseconds per step in each phase (data wait, host-to-device, forward,
    /// backward, optimiser): where the time goes.
    pub phase_ms: Vec<(String, f64)>,
}

/// Batches in the pool, as the peer's `n_pool`.
const POOL_BATCHES: usize = 8;

/// Random u8 images and labels: `POOL_BATCHES` batches' worth for training, one image
/// for the (untimed) evaluation that closes each pass over the pool.
fn pool(cfg: &SpeedConfig, res: usize) -> Dataset {
    let mut rng = Rng::new(0);
    let mut set = |n: usize| {
        let mut s = ImageSet::new(res, res);
        s.pixels = (0..n * 3 * res * res)
            .map(|_| (rng.next_u64() & 0xff) as u8)
            .collect();
        s.labels = (0..n)
            .map(|_| (rng.next_u64() % cfg.classes as u64) as u16)
            .collect();
        s
    };
    let train = set(POOL_BATCHES * cfg.batch);
    let test = set(1);
    Dataset {
        name: "random u8 pool".into(),
        format: DataFormat::Random,
        source: None,
        classes: (0..cfg.classes).map(|c| format!("class {c}")).collect(),
        train,
        test,
        normalization: Normalization::CIFAR10,
    }
}

/// Trains `cfg.warmup + cfg.steps` optimiser steps in `mode` and reports the timed part.
pub fn measure(cfg: &SpeedConfig, mode: SpeedMode) -> Result<SpeedResult, EngineError> {
    if let Some(reason) = mode.not_applicable_on(cfg.device) {
        return Err(EngineError::Device {
            device: cfg.device.to_string(),
            reason: reason.into(),
        });
    }
    let variant = crate::models::variant(&cfg.model)?;
    let res = cfg.resolution.unwrap_or(variant.resolution);
    let device = open_device(cfg.device)?;
    let data = Arc::new(pool(cfg, res));
    let mut run = RunConfig::quick_cpu();
    run.model.name = cfg.model.clone();
    run.model.resolution = Some(res);
    run.device = cfg.device;
    run.data.augment = false;
    run.tf32 = mode == SpeedMode::Tf32;
    run.train.batch_size = cfg.batch;
    run.train.eval_batch_size = 1;
    run.train.timing_warmup_steps = cfg.warmup;
    let total = cfg.warmup + cfg.steps;
    let per_epoch = (POOL_BATCHES / cfg.accum.max(1)).max(1) as u64;
    run.train.epochs = total.div_ceil(per_epoch) as usize;
    run.train.max_images = Some(total * (cfg.batch * cfg.accum.max(1)) as u64);
    // The peer's optimiser: plain SGD + Nesterov at a constant 0.01.
    run.train.schedule = crate::train::schedule::ScheduleConfig::Constant;
    run.train.optim.optimizer = OptimizerConfig::Sgd {
        lr: 0.01,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
    };
    // torch.optim.SGD decays every parameter.
    run.train.optim.no_decay_on_norm_and_bias = false;
    run.switches = Switches {
        grad_accum_steps: cfg.accum.max(1),
        amp: mode.amp(),
        pinned_memory: cfg.pinned,
    };
    let arm = Arm {
        label: format!("{mode:?}"),
        run,
    };
    let trained = train_run(
        &arm,
        super::trainer::RunPlace::single(),
        &data,
        &device,
        &mut VecSink::default(),
        &StopFlag::new(),
        None,
    )?;
    let r = trained.result;
    let to_mib = |b: u64| (b as f64 / 1048576.0 * 10.0).round() / 10.0;
    Ok(SpeedResult {
        peer: "annt",
        annt: env!("CARGO_PKG_VERSION"),
        device: match cfg.device {
            DeviceChoice::Cpu => "cpu".into(),
            DeviceChoice::Cuda(i) => {
                crate::util::gpu::cuda_device(i).map_or_else(|| format!("cuda:{i}"), |g| g.name)
            }
        },
        model: cfg.model.clone(),
        res,
        batch: cfg.batch,
        accum: cfg.accum.max(1),
        mode,
        pinned: cfg.pinned && r.pinned_memory_applicable,
        steps: r.timing.measured_steps,
        images_per_s: (r.timing.images_per_sec * 10.0).round() / 10.0,
        ms_per_step: (r.timing.ms_per_step * 1000.0).round() / 1000.0,
        params: trained.model.param_count(),
        peak_mem_mib: r.peak_device_bytes.map(to_mib),
        peak_host_mib: r.peak_host_bytes.map(to_mib),
        phase_ms: r
            .timing
            .phase_ms_per_step
            .iter()
            .map(|(p, ms)| (format!("{p:?}"), (ms * 1000.0).round() / 1000.0))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_measurement_times_only_the_steps_after_warm_up() {
        let cfg = SpeedConfig {
            model: "resnet8-tiny".into(),
            resolution: None,
            classes: 10,
            batch: 8,
            accum: 1,
            pinned: false,
            steps: 3,
            warmup: 2,
            device: DeviceChoice::Cpu,
        };
        let r = measure(&cfg, SpeedMode::Bf16).expect("measure");
        assert_eq!(r.steps, 3, "warm-up steps are not counted");
        assert_eq!(r.res, 32);
        assert!(r.images_per_s > 0.0 && r.ms_per_step > 0.0);
        // The phases are timed inside the steps: they cannot add up to more than a step,
        // and forward and backward, which every step runs, take part of it.
        let phases: f64 = r.phase_ms.iter().map(|p| p.1).sum();
        assert!(
            phases <= r.ms_per_step * 1.001 + 0.01,
            "{phases} > {}",
            r.ms_per_step
        );
        for name in ["Forward", "Backward"] {
            let ms = r.phase_ms.iter().find(|p| p.0 == name).expect("phase").1;
            assert!(ms > 0.0, "{name}: {ms}");
        }
        assert!(!r.pinned, "no pinned memory on the CPU");
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["mode"], "amp-bf16");
        assert_eq!(json["peer"], "annt");
        assert!(
            json.get("peak_mem_mib").is_none(),
            "the peer's key means device memory: not written on the CPU"
        );
        assert!(json["peak_host_mib"].as_f64().is_some_and(|m| m > 1.0));
        let tf32 = measure(&cfg, SpeedMode::Tf32)
            .map(|_| ())
            .expect_err("tf32 on the CPU");
        assert!(tf32.to_string().contains("does not apply"), "{tf32}");
    }
}
