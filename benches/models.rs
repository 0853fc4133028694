//! Model benchmark (`cargo bench --bench models [-- NAME…]`): forward + backward images/s
//! for each model at its native resolution, batch 32, f32, training mode, and for
//! ResNet-18-CIFAR the time of the same step on annt's convolution path and on Candle's stock
//! path (goal: annt ≥ 3× faster).
//!
//! Thread count: Candle's CPU backend uses `RAYON_NUM_THREADS` (default: all cores); the
//! figures in the README were taken with `RAYON_NUM_THREADS=2` on a 2-core machine.
//! Each figure is the median step time over the timed steps, after one warm-up step that is
//! not counted. Environment: `ANNT_BENCH_STEPS` (timed steps, default 3), `ANNT_BENCH_BATCH`
//! (default 32).

use annt::models::layers::loss::cross_entropy;
use annt::models::{ForwardCtx, Kernels, Model, ModelSpec, VARIANTS};
use candle_core::{DType, Device, Tensor};
use std::time::Instant;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median seconds of one training step (forward, loss, backward) after one warm-up step.
fn step_secs(
    model: &Model,
    images: &Tensor,
    labels: &Tensor,
    kernels: Kernels,
    steps: usize,
) -> f64 {
    let mut times = Vec::new();
    for step in 0..=steps {
        let start = Instant::now();
        let mut ctx = ForwardCtx::train(DType::F32, step as u64).with_kernels(kernels);
        let logits = model.forward(images, &mut ctx).expect("forward");
        let loss = cross_entropy(&logits, labels, 0.0).expect("loss");
        let grads = loss.backward().expect("backward");
        std::hint::black_box(grads);
        if step > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    median(&mut times)
}

/// The median: the middle value of an odd count, the mean of the two middle values of an
/// even one (with 2 steps that is their mean, not the slower step).
fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    }
}

fn main() {
    // As the annt binary does: Candle's element-wise workers park at once (see the doc).
    annt::util::env::quiet_candle_workers();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let steps = env_usize("ANNT_BENCH_STEPS", 3).max(1);
    let batch = env_usize("ANNT_BENCH_BATCH", 32);
    let threads = candle_core::utils::get_num_threads();
    println!(
        "models bench: batch {batch}, f32, train mode, {threads} threads, median of {steps} steps after 1 warm-up"
    );
    println!(
        "{:<16} {:>5} {:>12} {:>10} {:>10}",
        "model", "res", "params", "s/step", "images/s"
    );
    let device = Device::Cpu;
    for variant in VARIANTS {
        if !args.is_empty() && !args.iter().any(|a| a == variant.name) {
            continue;
        }
        let spec = ModelSpec::new(variant.name, 10);
        let model = Model::build(&spec, &device).expect("build");
        let r = variant.resolution;
        let images = Tensor::randn(0f32, 1.0, (batch, 3, r, r), &device).expect("images");
        let labels = Tensor::from_vec(
            (0..batch as u32).map(|i| i % 10).collect::<Vec<_>>(),
            batch,
            &device,
        )
        .expect("labels");
        let secs = step_secs(&model, &images, &labels, Kernels::Annt, steps);
        println!(
            "{:<16} {:>5} {:>12} {:>10.3} {:>10.1}",
            variant.name,
            r,
            model.param_count(),
            secs,
            batch as f64 / secs
        );
        if variant.name == "resnet18-cifar" {
            let stock = step_secs(&model, &images, &labels, Kernels::CandleStock, steps);
            println!(
                "  resnet18-cifar step on Candle's stock conv path: {stock:.3} s ({:.1} images/s); annt is {:.2}x faster (goal >= 3x)",
                batch as f64 / stock,
                stock / secs
            );
        }
    }
}
