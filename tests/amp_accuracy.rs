//! Mixed precision trains as accurately as f32: a CI version over several seeds, in a
//! setting small enough for every CI run, and the longer single-seed benchmark (opt-in).
//!
//! The CI setting: ResNet-8 at 16 px on 1 000 built-in training images, Adam 3e-3 with
//! one-cycle, 4 epochs, every arm seeing the same batches; the final models of each seed are
//! scored on 4 000 further held-out images of the same distribution, so the comparison is
//! not drowned in the sampling noise of a small test split. Two things are checked, each of
//! which a broken AMP path fails:
//! - the mean accuracy over the seeds of each half precision is close to f32's (one seed's
//!   difference is as noisy as two f32 seeds: averaging over seeds is what makes a tight
//!   bound honest), and no single seed is far off;
//! - the half-precision runs really ran in half precision: their final weights differ from
//!   the f32 run's (an AMP switch that silently trained in f32 would give identical
//!   weights, since every other input is identical).

use std::sync::Arc;

use annt::accel::amp::AmpMode;
use annt::bench::plan::Arm;
use annt::config::RunConfig;
use annt::data::Dataset;
use annt::data::synthetic::{SyntheticSpec, generate};
use annt::engine::session::open_data;
use annt::engine::trainer::{RunPlace, compute_path, evaluate, train_run};
use annt::engine::{SessionOptions, StopFlag, VecSink};
use annt::train::optim::OptimizerConfig;
use candle_core::{DType, Device};

const MODES: [AmpMode; 3] = [AmpMode::Off, AmpMode::Bf16, AmpMode::Fp16];

/// ResNet-8 at 16 px with Adam 3e-3 and one-cycle on the first `images` built-in images.
fn setting(seed: u64, images: usize, epochs: usize, batch: usize) -> RunConfig {
    let mut run = RunConfig::quick_cpu();
    run.model.resolution = Some(16);
    run.data.train_limit = Some(images);
    run.data.test_limit = Some(64);
    run.train.batch_size = batch;
    run.train.epochs = epochs;
    run.train.seed = seed;
    run.train.optim.optimizer = OptimizerConfig::Adam {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 5e-4,
    };
    run.train.schedule = annt::train::schedule::ScheduleConfig::OneCycle {
        pct_start: 0.3,
        div_factor: 25.0,
        final_div_factor: 1e4,
        anneal_cos: true,
    };
    run
}

/// `test` held-out images of the built-in distribution (another seed draws other images of
/// the same ten shapes), normalised as the training split is.
fn held_out(train: &Dataset, test: usize) -> Arc<Dataset> {
    let mut set = generate(&SyntheticSpec {
        seed: 20_231_210,
        train: 10,
        test,
    });
    set.normalization = train.normalization;
    Arc::new(set)
}

/// Trains `run` and scores it on `held_out`: accuracy in percent and the final weights.
fn train_and_score(
    run: &RunConfig,
    train: &Arc<Dataset>,
    held_out: &Arc<Dataset>,
) -> (f64, Vec<f32>) {
    let arm = Arm {
        label: run.switches.label(),
        run: run.clone(),
    };
    let trained = train_run(
        &arm,
        RunPlace::single(),
        train,
        &Device::Cpu,
        &mut VecSink::default(),
        &StopFlag::new(),
        None,
    )
    .expect("train");
    let (_, confusion) = evaluate(
        &trained.model,
        held_out,
        &Device::Cpu,
        run.model.resolution,
        compute_path(run.switches.amp, &Device::Cpu),
        run,
        &StopFlag::new(),
    )
    .expect("evaluate");
    let weights = trained
        .model
        .params()
        .trainable()
        .flat_map(|p| {
            p.var
                .as_tensor()
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .expect("weights")
        })
        .collect();
    (100.0 * confusion.accuracy(), weights)
}

/// Trains every mode of [`MODES`] for each seed; `accuracy[mode][seed]` in percent. Checks
/// on the way that each half-precision run's weights differ from its seed's f32 run's.
fn accuracies(
    seeds: &[u64],
    images: usize,
    epochs: usize,
    batch: usize,
    test: usize,
) -> Vec<Vec<f64>> {
    let train = Arc::new(
        open_data(
            &setting(0, images, epochs, batch).data,
            &SessionOptions::default(),
        )
        .expect("data"),
    );
    let held_out = held_out(&train, test);
    let mut accuracy = vec![Vec::new(); MODES.len()];
    for &seed in seeds {
        let mut f32_weights = Vec::new();
        for (m, amp) in MODES.iter().enumerate() {
            let mut run = setting(seed, images, epochs, batch);
            run.switches.amp = *amp;
            let (acc, weights) = train_and_score(&run, &train, &held_out);
            accuracy[m].push(acc);
            if *amp == AmpMode::Off {
                f32_weights = weights;
            } else {
                let moved = weights
                    .iter()
                    .zip(&f32_weights)
                    .filter(|(a, b)| a != b)
                    .count();
                assert!(
                    moved > weights.len() / 2,
                    "{amp:?}, seed {seed}: only {moved} of {} weights differ from the f32 run's: it did not train in half precision",
                    weights.len()
                );
            }
        }
    }
    eprintln!(
        "held-out accuracy (%), seeds {seeds:?}: f32 {:?}, bf16 {:?}, fp16 {:?}",
        accuracy[0], accuracy[1], accuracy[2]
    );
    accuracy
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn bf16_and_fp16_train_as_accurately_as_f32_over_three_seeds() {
    let seeds = [0, 1, 2];
    let accuracy = accuracies(&seeds, 1000, 4, 50, 4000);
    let f32_mean = mean(&accuracy[0]);
    assert!(
        f32_mean > 25.0,
        "the f32 runs learned (chance is 10 %): {f32_mean:.2} %"
    );
    for (m, amp) in MODES.iter().enumerate().skip(1) {
        let half_mean = mean(&accuracy[m]);
        assert!(
            (half_mean - f32_mean).abs() <= MEAN_BOUND,
            "{amp:?}: mean {half_mean:.2} % over seeds, f32 {f32_mean:.2} %"
        );
        for (s, (half, full)) in accuracy[m].iter().zip(&accuracy[0]).enumerate() {
            assert!(
                (half - full).abs() <= SEED_BOUND,
                "{amp:?}, seed {}: {half:.2} % vs f32 {full:.2} %",
                seeds[s]
            );
        }
    }
}

/// Bounds of the CI check, in points of accuracy. Measured on the 2-core reference
/// machine (2026-12-01, `cargo test --test amp_accuracy -- --nocapture`), held-out accuracy
/// for seeds 0, 1, 2: f32 36.03 / 34.18 / 35.90 %, bf16 35.53 / 34.35 / 35.95 %, fp16
/// 35.90 / 34.05 / 36.03 %: the largest difference of one seed 0.50 points, of the means
/// 0.10. The bounds leave room for other CPUs' summation orders, not for a broken path
/// (an fp16 run without loss scaling, or lost gradients, ends near chance, 10 %).
const MEAN_BOUND: f64 = 1.0;
const SEED_BOUND: f64 = 2.5;

/// The longer benchmark: one seed, 2 000 images, 6 epochs, scored on 10 000 held-out images;
/// bf16 and fp16 end within 1 point of f32. ~5 minutes on the 2-core reference machine, so
/// opt-in: `cargo test --test amp_accuracy -- --ignored --nocapture`.
#[test]
#[ignore = "trains three longer runs (~5 min); run with --ignored"]
fn bf16_and_fp16_end_within_a_point_of_f32_on_a_longer_run() {
    let accuracy = accuracies(&[0], 2000, 6, 64, 10_000);
    let f32_acc = accuracy[0][0];
    assert!(f32_acc > 40.0, "the f32 run learned: {f32_acc:.2} %");
    for (m, amp) in MODES.iter().enumerate().skip(1) {
        let acc = accuracy[m][0];
        assert!(
            (acc - f32_acc).abs() <= 1.0,
            "{amp:?} ended at {acc:.2} %, f32 at {f32_acc:.2} %"
        );
    }
}
