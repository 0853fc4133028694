//! Every supported layout, written by the tests themselves in the official formats, read
//! back through auto-detection.

mod common;

use annt::data::fixtures::{self, write_dir};
use annt::data::stats::NormalizationSource;
use annt::data::{self, Cifar100Labels, DataFormat, OpenOptions};
use common::open;
use std::path::Path;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Pixels and labels of the records in `files` named `names`, concatenated (CIFAR-10).
fn expected10(files: &[(String, Vec<u8>)], names: &[&str]) -> (Vec<u8>, Vec<u16>) {
    let mut px = Vec::new();
    let mut labels = Vec::new();
    for n in names {
        let bytes = &files.iter().find(|(f, _)| f == n).expect("file").1;
        for rec in bytes.chunks_exact(3073) {
            labels.push(u16::from(rec[0]));
            px.extend_from_slice(&rec[1..]);
        }
    }
    (px, labels)
}

#[test]
fn cifar10_binary_folder_with_any_record_count() {
    let dir = tmp();
    let files = fixtures::cifar10_binary_files(3, 7, 5, 1);
    let root = write_dir(&dir.path().join("cifar-10-batches-bin"), &files).expect("write");
    let ds = open(&root).expect("open");
    assert_eq!(ds.format, DataFormat::Cifar10Binary);
    assert_eq!(ds.classes.len(), 10);
    assert_eq!(ds.classes[0], "airplane");
    assert_eq!((ds.train.len(), ds.test.len()), (21, 5));
    let (px, labels) = expected10(
        &files,
        &["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin"],
    );
    assert_eq!(ds.train.pixels, px);
    assert_eq!(ds.train.labels, labels);
    let (px, labels) = expected10(&files, &["test_batch.bin"]);
    assert_eq!(ds.test.pixels, px);
    assert_eq!(ds.test.labels, labels);
    assert_eq!(ds.normalization.source, NormalizationSource::Published);
}

#[test]
fn cifar10_binary_without_meta_uses_official_names_and_custom_names_are_read() {
    let dir = tmp();
    let mut files = fixtures::cifar10_binary_files(1, 3, 2, 2);
    files.retain(|(n, _)| n != "batches.meta.txt");
    let root = write_dir(dir.path(), &files).expect("write");
    assert_eq!(open(&root).expect("open").classes[9], "truck");
    let names: String = (0..10).map(|i| format!("class{i}\n")).collect();
    std::fs::write(root.join("batches.meta.txt"), names).expect("meta");
    assert_eq!(open(&root).expect("open").classes[3], "class3");
}

#[test]
fn cifar100_binary_fine_and_coarse() {
    let dir = tmp();
    let files = fixtures::cifar100_binary_files(9, 4, 3);
    let root = write_dir(&dir.path().join("cifar-100-binary"), &files).expect("write");
    let fine = open(&root).expect("fine");
    assert_eq!(fine.format, DataFormat::Cifar100Binary);
    assert_eq!(fine.classes.len(), 100);
    assert_eq!((fine.train.len(), fine.test.len()), (9, 4));
    let opts = OpenOptions {
        cifar100_labels: Cifar100Labels::Coarse,
        ..OpenOptions::default()
    };
    let coarse = data::open(&root, &opts).expect("coarse");
    assert_eq!(coarse.classes.len(), 20);
    assert_eq!(coarse.train.pixels, fine.train.pixels);
    for (&f, &c) in fine.train.labels.iter().zip(&coarse.train.labels) {
        assert_eq!(u16::from(fixtures::coarse_of(f as u8)), c);
    }
    // Records are coarse byte, fine byte, pixels.
    let raw = &files[0].1;
    assert_eq!(u16::from(raw[1]), fine.train.labels[0]);
    assert_eq!(&raw[2..3074], fine.train.image(0));
    assert_eq!(fine.normalization, annt::data::Normalization::CIFAR100);
}

#[test]
fn a_parent_folder_holding_one_data_set_is_enough() {
    let dir = tmp();
    write_dir(
        &dir.path().join("cifar-10-batches-bin"),
        &fixtures::cifar10_binary_files(1, 4, 2, 4),
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "hello").expect("notes");
    let ds = open(dir.path()).expect("open parent");
    assert_eq!(ds.format, DataFormat::Cifar10Binary);
    assert_eq!(ds.train.len(), 4);
}

#[test]
fn binary_archives_read_directly_equal_their_folders() {
    let dir = tmp();
    let files = fixtures::cifar10_binary_files(2, 5, 3, 5);
    let folder = write_dir(&dir.path().join("x/cifar-10-batches-bin"), &files).expect("write");
    let archive = dir.path().join("cifar-10-binary.tar.gz");
    std::fs::write(
        &archive,
        fixtures::tar_gz("cifar-10-batches-bin", &files).expect("tar"),
    )
    .expect("w");
    let from_dir = open(&folder).expect("dir");
    let from_archive = open(&archive).expect("archive");
    assert_eq!(from_archive.train.pixels, from_dir.train.pixels);
    assert_eq!(from_archive.test.labels, from_dir.test.labels);
    assert!(from_archive.source.expect("source").starts_with(&archive));

    let files100 = fixtures::cifar100_binary_files(6, 2, 6);
    let a100 = dir.path().join("cifar-100-binary.tar.gz");
    std::fs::write(
        &a100,
        fixtures::tar_gz("cifar-100-binary", &files100).expect("tar"),
    )
    .expect("w");
    let ds = open(&a100).expect("archive 100");
    assert_eq!((ds.format, ds.train.len()), (DataFormat::Cifar100Binary, 6));
}

#[test]
fn parent_with_an_archive_and_its_extracted_folder_reads_the_folder() {
    let dir = tmp();
    let files = fixtures::cifar10_binary_files(1, 4, 2, 7);
    write_dir(&dir.path().join("cifar-10-batches-bin"), &files).expect("write");
    // The archive's content differs, so we can tell which one was read.
    let other = fixtures::cifar10_binary_files(1, 9, 2, 8);
    std::fs::write(
        dir.path().join("cifar-10-binary.tar.gz"),
        fixtures::tar_gz("cifar-10-batches-bin", &other).expect("tar"),
    )
    .expect("w");
    assert_eq!(open(dir.path()).expect("open").train.len(), 4);
    // Only the archive: it is read.
    std::fs::remove_dir_all(dir.path().join("cifar-10-batches-bin")).expect("rm");
    assert_eq!(open(dir.path()).expect("open").train.len(), 9);
}

fn write_images(root: &Path, split: &str, class: &str, n: usize, base: [u8; 3]) {
    let exts = ["png", "jpg", "bmp"];
    for i in 0..n {
        let ext = exts[i % exts.len()];
        let (w, h) = (24 + 9 * i as u32, 40 - 3 * i as u32);
        let grey = i % 2 == 1;
        let p = root.join(split).join(class).join(format!("img{i}.{ext}"));
        fixtures::write_image(&p, w, h, base, grey).expect("image");
    }
}

#[test]
fn image_folder_with_train_and_test_splits() {
    let dir = tmp();
    let root = dir.path().join("shapes");
    write_images(&root, "train", "circle", 4, [200, 10, 10]);
    write_images(&root, "train", "square", 3, [10, 200, 10]);
    write_images(&root, "test", "circle", 2, [200, 10, 10]);
    write_images(&root, "test", "square", 1, [10, 200, 10]);
    std::fs::write(root.join("train/circle/.DS_Store"), b"junk").expect("hidden");
    std::fs::write(root.join("train/circle/readme.txt"), b"not an image").expect("txt");
    let ds = open(&root).expect("open");
    assert_eq!(ds.format, DataFormat::ImageFolder);
    assert_eq!(ds.classes, vec!["circle", "square"]);
    assert_eq!((ds.train.len(), ds.test.len()), (7, 3));
    assert_eq!(ds.train.class_counts(2), vec![4, 3]);
    assert_eq!((ds.train.height, ds.train.width), (32, 32));
    assert_eq!(ds.normalization.source, NormalizationSource::Computed);
    // A grey image became 3 equal channels.
    let grey = ds.train.image(1);
    assert_eq!(&grey[..1024], &grey[1024..2048]);
    assert_eq!(&grey[..1024], &grey[2048..]);
    // Other working resolutions.
    let opts = OpenOptions {
        resolution: 48,
        ..OpenOptions::default()
    };
    let big = data::open(&root, &opts).expect("48px");
    assert_eq!(
        (big.train.height, big.train.image_bytes()),
        (48, 3 * 48 * 48)
    );
}

#[test]
fn class_tree_is_split_by_a_seeded_held_out_fraction() {
    let dir = tmp();
    let root = dir.path().join("tree");
    write_images(&root, "", "a", 10, [50, 50, 50]);
    write_images(&root, "", "b", 5, [150, 50, 50]);
    let opts = |seed| OpenOptions {
        holdout_fraction: 0.2,
        seed,
        ..OpenOptions::default()
    };
    let ds = data::open(&root, &opts(1)).expect("open");
    assert_eq!(ds.test.class_counts(2), vec![2, 1]);
    assert_eq!(ds.train.class_counts(2), vec![8, 4]);
    let again = data::open(&root, &opts(1)).expect("again");
    assert_eq!(again.test.pixels, ds.test.pixels, "same seed, same split");
    let other = (2..12)
        .map(|s| data::open(&root, &opts(s)).expect("other"))
        .any(|d| d.test.pixels != ds.test.pixels);
    assert!(other, "some other seed picks other test images");
}

#[test]
fn builtin_opens_without_files() {
    let ds = data::open(Path::new("builtin"), &OpenOptions::default()).expect("builtin");
    assert_eq!(ds.format, DataFormat::Builtin);
    assert!(ds.source.is_none());
}

#[test]
fn cifar10_python_folder_and_archive() {
    let dir = tmp();
    let files = fixtures::cifar10_python_files(2, 1500, 4, 11);
    let root = write_dir(&dir.path().join("cifar-10-batches-py"), &files).expect("write");
    let ds = open(&root).expect("open");
    assert_eq!(ds.format, DataFormat::Cifar10Python);
    assert_eq!((ds.train.len(), ds.test.len()), (3000, 4));
    assert_eq!(ds.classes[1], "automobile");
    // Same images as the binary writer makes from the same seeds.
    let (px, labels) = fixtures::random_images(1500, 10, 11);
    assert_eq!(&ds.train.pixels[..px.len()], px.as_slice());
    let want: Vec<u16> = labels.iter().map(|&l| u16::from(l)).collect();
    assert_eq!(&ds.train.labels[..1500], want.as_slice());

    let archive = dir.path().join("cifar-10-python.tar.gz");
    std::fs::write(
        &archive,
        fixtures::tar_gz("cifar-10-batches-py", &files).expect("tar"),
    )
    .expect("w");
    let from_archive = open(&archive).expect("archive");
    assert_eq!(from_archive.train.pixels, ds.train.pixels);
    assert_eq!(from_archive.test.labels, ds.test.labels);
}

#[test]
fn cifar100_python_fine_and_coarse_folder_and_archive() {
    let dir = tmp();
    let files = fixtures::cifar100_python_files(12, 5, 12);
    let root = write_dir(&dir.path().join("cifar-100-python"), &files).expect("write");
    let fine = open(&root).expect("fine");
    assert_eq!(fine.format, DataFormat::Cifar100Python);
    assert_eq!(
        (fine.classes.len(), fine.train.len(), fine.test.len()),
        (100, 12, 5)
    );
    let opts = OpenOptions {
        cifar100_labels: Cifar100Labels::Coarse,
        ..OpenOptions::default()
    };
    let coarse = data::open(&root, &opts).expect("coarse");
    assert_eq!(coarse.classes.len(), 20);
    assert_eq!(coarse.classes[0], "aquatic_mammals");
    for (&f, &c) in fine.train.labels.iter().zip(&coarse.train.labels) {
        assert_eq!(u16::from(fixtures::coarse_of(f as u8)), c);
    }
    let archive = dir.path().join("cifar-100-python.tar.gz");
    std::fs::write(
        &archive,
        fixtures::tar_gz("cifar-100-python", &files).expect("tar"),
    )
    .expect("w");
    let a = data::open(&archive, &opts).expect("archive");
    assert_eq!(a.train.labels, coarse.train.labels);
    assert_eq!(a.train.pixels, fine.train.pixels);
}
