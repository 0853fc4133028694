//! Writes small, valid seed inputs for the cargo-fuzz targets into `fuzz/corpus/<target>/`
//! (or the folder given as the first argument), so fuzzing starts from real structure:
//! `cargo run --example fuzz_seeds`.

use annt::data::fixtures::{self, pickle};
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("fuzz/corpus"), PathBuf::from);
    let write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)
    };
    let (px, labels) = fixtures::random_images(2, 10, 1);
    write(
        "cifar_binary",
        "two_records",
        &fixtures::cifar10_records(&px, &labels),
    )?;
    let coarse: Vec<u8> = labels.iter().map(|&l| fixtures::coarse_of(l)).collect();
    write(
        "cifar_binary",
        "two_records_100",
        &fixtures::cifar100_records(&px, &labels, &coarse),
    )?;
    write("cifar_binary", "names", b"cat\ndog\n\n")?;

    write("pickle", "batch10", &pickle::cifar10_batch(&px, &labels))?;
    write(
        "pickle",
        "batch100",
        &pickle::cifar100_batch(&px, &labels, &coarse),
    )?;
    write("pickle", "meta10", &pickle::cifar10_meta(&["a", "b"]))?;
    write(
        "pickle",
        "meta100",
        &pickle::cifar100_meta(&["a", "b"], &["c"]),
    )?;

    let small = fixtures::cifar10_binary_files(1, 1, 1, 2);
    write(
        "archive",
        "binary10",
        &fixtures::tar_gz("cifar-10-batches-bin", &small)?,
    )?;
    let py = fixtures::cifar10_python_files(1, 1, 1, 3);
    write(
        "archive",
        "python10",
        &fixtures::tar_gz("cifar-10-batches-py", &py)?,
    )?;

    let tmp = std::env::temp_dir().join("annt-fuzz-seeds");
    for (name, grey) in [
        ("rgb.png", false),
        ("grey.jpg", true),
        ("rgb.bmp", false),
        ("rgb.gif", false),
    ] {
        let p = tmp.join(name);
        fixtures::write_image(&p, 7, 5, [10, 20, 30], grey)?;
        write("image_entry", name, &std::fs::read(&p)?)?;
    }
    println!("seeds written under {}", root.display());
    Ok(())
}
