//! `annt speed`: training throughput on synthetic data, one JSON line per mode, with the
//! keys of `benches/torch_peer.py` so the two can share a table
//! (`benches/compare_torch.py` runs both).

use annt::config::DeviceChoice;
use annt::engine::speed::{SpeedConfig, SpeedMode, measure};

#[derive(Debug, clap::Args)]
pub struct SpeedArgs {
    /// Model name (see `annt models`); the peer's names are accepted too (resnet50,
    /// resnet18, efficientnet_b0, vit_b_16, vit_tiny_p4).
    #[arg(long, default_value = "resnet50-cifar")]
    model: String,
    /// Input side in pixels (default: the model's own).
    #[arg(long)]
    res: Option<usize>,
    #[arg(long, default_value_t = 10)]
    classes: usize,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 1)]
    accum: usize,
    /// Comma-separated: fp32, tf32, amp-bf16, amp-fp16.
    #[arg(long, default_value = "fp32,amp-bf16")]
    modes: String,
    /// Pageable host memory for uploads (the default is pinned, as the peer's).
    #[arg(long)]
    pageable: bool,
    /// Timed optimiser steps.
    #[arg(long, default_value_t = 50)]
    steps: u64,
    /// Untimed steps first.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

/// The peer's model names → annt's.
fn annt_name(peer: &str) -> &str {
    match peer {
        "resnet50" => "resnet50-cifar",
        "resnet18" => "resnet18-cifar",
        "efficientnet_b0" => "efficientnet-b0",
        "vit_b_16" => "vit-b16",
        "vit_tiny_p4" => "vit-ti4",
        "resnet8_tiny" => "resnet8-tiny",
        other => other,
    }
}

pub fn run(args: SpeedArgs) -> anyhow::Result<()> {
    let modes: Vec<SpeedMode> = args
        .modes
        .split(',')
        .map(|m| m.trim().parse())
        .collect::<Result<_, String>>()
        .map_err(anyhow::Error::msg)?;
    let cfg = SpeedConfig {
        model: annt_name(&args.model).to_string(),
        resolution: args.res,
        classes: args.classes,
        batch: args.batch,
        accum: args.accum,
        pinned: !args.pageable,
        steps: args.steps,
        warmup: args.warmup,
        device: args.device,
    };
    for mode in modes {
        if let Some(reason) = mode.not_applicable_on(cfg.device) {
            // Skipped, rather than an fp32 run under another name.
            eprintln!("annt speed: skipped: {reason}");
            continue;
        }
        let r = measure(&cfg, mode)?;
        super::print_out(&format!("{}\n", serde_json::to_string(&r)?))?;
    }
    Ok(())
}
