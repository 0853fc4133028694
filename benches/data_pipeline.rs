//! Data benchmarks (`cargo bench --bench data_pipeline`): prints measured figures and checks
//! the speed goals of the data issue on this machine.
//!
//! - Parsing the 50 000-image CIFAR-10 binary training set (5 official-size batch files,
//!   plus the 10 000-image test file) into memory: goal < 0.5 s. Files are generated in a
//!   temp folder and read once beforehand, so the figure is parsing from the page cache,
//!   not the disk.
//! - The pipeline (seeded shuffle, 4-px reflect crop + flip, batching of 128, prefetch
//!   thread) over a synthetic 50 000-image set: goal ≥ 20 000 augmented images/s.
//!
//! Each figure is the median of several repetitions after one warm-up repetition.

use annt::data::fixtures::{self, write_dir};
use annt::data::loader::{LoaderConfig, Prefetcher, Split};
use annt::data::{self, DataFormat, Dataset, ImageSet, Normalization, OpenOptions, upload};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[allow(clippy::while_let_on_iterator)] // `for` would hold `pf` borrowed across `recycle`
fn main() -> ExitCode {
    let mut ok = true;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("data_pipeline bench on {threads} hardware threads");

    // --- Parse: CIFAR-10 binary, 5 × 10 000 train + 10 000 test records.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = write_dir(
        &dir.path().join("cifar-10-batches-bin"),
        &fixtures::cifar10_binary_files(5, 10_000, 10_000, 42),
    )
    .expect("write fixture");
    let opts = OpenOptions::default();
    let mut secs = Vec::new();
    for rep in 0..6 {
        let t = Instant::now();
        let ds = data::open(&root, &opts).expect("open");
        let s = t.elapsed().as_secs_f64();
        assert_eq!((ds.train.len(), ds.test.len()), (50_000, 10_000));
        if rep > 0 {
            secs.push(s);
        }
    }
    let parse = median(secs);
    let pass = parse < 0.5;
    ok &= pass;
    println!(
        "parse CIFAR-10 binary (50 000 train + 10 000 test images): {parse:.3} s median of 5  [goal < 0.5 s: {}]",
        if pass { "PASS" } else { "FAIL" }
    );

    // Same set as the python version and as an archive (informational).
    let py = write_dir(
        &dir.path().join("cifar-10-batches-py"),
        &fixtures::cifar10_python_files(5, 10_000, 10_000, 42),
    )
    .expect("write py");
    let t = Instant::now();
    let _ = data::open(&py, &opts).expect("open py");
    println!(
        "parse CIFAR-10 python pickles (same size): {:.3} s",
        t.elapsed().as_secs_f64()
    );

    // --- Pipeline throughput.
    let (pixels, labels) = fixtures::random_images(50_000, 10, 7);
    let train = ImageSet {
        pixels,
        labels: labels.into_iter().map(u16::from).collect(),
        height: 32,
        width: 32,
    };
    let data = Arc::new(Dataset {
        name: "bench".into(),
        format: DataFormat::Builtin,
        source: None,
        classes: (0..10).map(|i| i.to_string()).collect(),
        normalization: Normalization::compute(&train),
        test: ImageSet::new(32, 32),
        train,
    });
    let cfg = LoaderConfig::train(128, 1);
    let mut rates = Vec::new();
    for epoch in 0..4 {
        let t = Instant::now();
        let mut pf = Prefetcher::new(Arc::clone(&data), Split::Train, cfg, epoch);
        let mut images = 0usize;
        let mut checksum = 0u64;
        while let Some(batch) = pf.next() {
            let batch = batch.expect("batch");
            images += batch.len;
            checksum = checksum.wrapping_add(u64::from(batch.pixel_bytes()[0]));
            pf.recycle(batch.pixels);
        }
        let rate = images as f64 / t.elapsed().as_secs_f64();
        std::hint::black_box(checksum);
        if epoch > 0 {
            rates.push(rate);
        }
    }
    let rate = median(rates);
    let pass = rate >= 20_000.0;
    ok &= pass;
    println!(
        "pipeline (shuffle + crop/flip + batch 128 + prefetch), 50 000 images: {rate:.0} images/s median of 3  [goal >= 20 000: {}]",
        if pass { "PASS" } else { "FAIL" }
    );

    // The same, plus the device step on the CPU: u8 → f32, normalise (informational).
    let t = Instant::now();
    let mut pf = Prefetcher::new(Arc::clone(&data), Split::Train, cfg, 9);
    let mut images = 0usize;
    while let Some(batch) = pf.next() {
        let batch = batch.expect("batch");
        let on_device =
            upload::to_device(&batch, &data.normalization, &candle_core::Device::Cpu, None)
                .expect("upload");
        std::hint::black_box(on_device);
        images += batch.len;
        pf.recycle(batch.pixels);
    }
    println!(
        "pipeline + normalise to f32 tensors on the CPU: {:.0} images/s",
        images as f64 / t.elapsed().as_secs_f64()
    );

    // Built-in set generation (informational).
    let t = Instant::now();
    let b = data::synthetic::generate(&data::synthetic::SyntheticSpec::default());
    println!(
        "generate built-in set ({} train + {} test images): {:.3} s",
        b.train.len(),
        b.test.len(),
        t.elapsed().as_secs_f64()
    );

    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
