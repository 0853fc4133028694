//! Every bad input gets a typed error that says what is wrong and names the file, never a
//! panic and never a silently wrong data set.

mod common;

use annt::data::fixtures::{self, write_dir};
use annt::data::{DataError, MAX_FILE_BYTES, OpenOptions};
use common::{expect_err, expect_err_with};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn cifar10_dir(dir: &std::path::Path) -> std::path::PathBuf {
    write_dir(
        &dir.join("cifar-10-batches-bin"),
        &fixtures::cifar10_binary_files(2, 3, 2, 1),
    )
    .expect("write")
}

#[test]
fn truncated_file_shorter_than_a_record() {
    let dir = tmp();
    let root = cifar10_dir(dir.path());
    let f = root.join("data_batch_2.bin");
    std::fs::write(&f, vec![1u8; 100]).expect("w");
    let e = expect_err(&root, &f, &["truncated", "100 bytes", "3073-byte record"]);
    assert!(matches!(e, DataError::Truncated { .. }));
    std::fs::write(&f, b"").expect("w");
    expect_err(&root, &f, &["truncated", "0 bytes"]);
}

#[test]
fn size_not_a_multiple_of_the_record() {
    let dir = tmp();
    let root = cifar10_dir(dir.path());
    let f = root.join("test_batch.bin");
    let mut bytes = std::fs::read(&f).expect("r");
    bytes.truncate(bytes.len() - 10);
    std::fs::write(&f, bytes).expect("w");
    let e = expect_err(
        &root,
        &f,
        &["not a multiple of the 3073-byte record", "3063 bytes"],
    );
    assert!(matches!(e, DataError::NotMultiple { .. }));
}

#[test]
fn oversized_file_is_refused_before_reading() {
    let dir = tmp();
    let root = cifar10_dir(dir.path());
    let f = root.join("data_batch_1.bin");
    // A sparse file: no disk space used, but its size is over the limit.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .expect("open");
    file.set_len(MAX_FILE_BYTES + 3073).expect("set_len");
    drop(file);
    let e = expect_err(&root, &f, &["oversized"]);
    assert!(matches!(e, DataError::Oversized { .. }));
}

#[test]
fn label_outside_the_class_count() {
    let dir = tmp();
    let root = cifar10_dir(dir.path());
    let f = root.join("data_batch_1.bin");
    let mut bytes = std::fs::read(&f).expect("r");
    bytes[3073] = 10; // label of record 1
    std::fs::write(&f, bytes).expect("w");
    let e = expect_err(&root, &f, &["label 10 of record 1", "10 classes"]);
    assert!(matches!(e, DataError::LabelOutOfRange { .. }));
    // CIFAR-100 coarse labels beyond 20.
    let root100 = write_dir(
        &dir.path().join("c100"),
        &fixtures::cifar100_binary_files(3, 2, 2),
    )
    .expect("w");
    let f = root100.join("test.bin");
    let mut bytes = std::fs::read(&f).expect("r");
    bytes[0] = 20;
    std::fs::write(&f, bytes).expect("w");
    let opts = OpenOptions {
        cifar100_labels: annt::data::Cifar100Labels::Coarse,
        ..OpenOptions::default()
    };
    expect_err_with(&root100, &opts, &f, &["label 20 of record 0", "20 classes"]);
}

#[test]
fn missing_test_split() {
    let dir = tmp();
    let root = cifar10_dir(dir.path());
    std::fs::remove_file(root.join("test_batch.bin")).expect("rm");
    let e = expect_err(&root, &root, &["missing test split", "test_batch.bin"]);
    assert!(matches!(e, DataError::MissingSplit { .. }));
    let root100 = write_dir(
        &dir.path().join("c100"),
        &fixtures::cifar100_binary_files(3, 2, 2),
    )
    .expect("w");
    std::fs::remove_file(root100.join("test.bin")).expect("rm");
    expect_err(&root100, &root100, &["missing test split", "test.bin"]);
    // An image folder with train/ but no test/.
    let img = dir.path().join("imgs");
    fixtures::write_image(&img.join("train/cat/a.png"), 8, 8, [1, 2, 3], false).expect("img");
    expect_err(&img, &img, &["missing test split", "test/<class>/"]);
}

#[test]
fn two_formats_mixed_in_one_folder() {
    let dir = tmp();
    let root = cifar10_dir(dir.path());
    std::fs::write(root.join("data_batch_1"), b"python version").expect("w");
    let e = expect_err(
        &root,
        &root,
        &[
            "two data formats mixed",
            "CIFAR-10 binary",
            "CIFAR-10 python",
        ],
    );
    assert!(matches!(e, DataError::MixedFormats { .. }));
}

#[test]
fn several_data_sets_in_a_parent_folder() {
    let dir = tmp();
    cifar10_dir(dir.path());
    write_dir(
        &dir.path().join("cifar-100-binary"),
        &fixtures::cifar100_binary_files(3, 2, 2),
    )
    .expect("w");
    let e = expect_err(
        dir.path(),
        dir.path(),
        &[
            "several data sets",
            "cifar-10-batches-bin",
            "cifar-100-binary",
        ],
    );
    assert!(matches!(e, DataError::Ambiguous { .. }));
}

#[test]
fn unreadable_file() {
    // Tests run as root in CI, where permission bits do not stop reads; a dangling link is
    // unreadable for everyone.
    let dir = tmp();
    let root = cifar10_dir(dir.path());
    let f = root.join("test_batch.bin");
    std::fs::remove_file(&f).expect("rm");
    std::os::unix::fs::symlink(dir.path().join("gone.bin"), &f).expect("symlink");
    let e = expect_err(&root, &f, &["cannot read"]);
    assert!(matches!(e, DataError::Io { .. }));
}

#[test]
fn empty_class_folder() {
    let dir = tmp();
    let root = dir.path().join("tree");
    fixtures::write_image(&root.join("cat/a.png"), 8, 8, [1, 2, 3], false).expect("img");
    fixtures::write_image(&root.join("cat/b.png"), 8, 8, [1, 2, 3], false).expect("img");
    std::fs::create_dir_all(root.join("dog")).expect("dog");
    std::fs::write(root.join("dog/notes.txt"), "no images here").expect("txt");
    let e = expect_err(&root, &root.join("dog"), &["class folder holds no images"]);
    assert!(matches!(e, DataError::EmptyClass { .. }));
}

#[test]
fn corrupt_image() {
    let dir = tmp();
    let root = dir.path().join("tree");
    fixtures::write_image(&root.join("cat/a.png"), 8, 8, [1, 2, 3], false).expect("img");
    fixtures::write_image(&root.join("dog/a.png"), 8, 8, [1, 2, 3], false).expect("img");
    let bad = root.join("dog/broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 this is not really a jpeg").expect("w");
    let e = expect_err(&root, &bad, &["image cannot be decoded"]);
    assert!(matches!(e, DataError::CorruptImage { .. }));
    // A PNG cut in half.
    std::fs::remove_file(&bad).expect("rm");
    let good = std::fs::read(root.join("cat/a.png")).expect("r");
    let half = root.join("dog/half.png");
    std::fs::write(&half, &good[..good.len() / 2]).expect("w");
    expect_err(&root, &half, &["image cannot be decoded"]);
}

#[test]
fn archive_with_path_traversal_entries() {
    let dir = tmp();
    let files = fixtures::cifar10_binary_files(1, 2, 2, 3);
    for evil in [
        "../evil.bin",
        "cifar-10-batches-bin/../../evil.bin",
        "/etc/evil.bin",
    ] {
        let mut entries: Vec<(String, &[u8])> = files
            .iter()
            .map(|(n, b)| (format!("cifar-10-batches-bin/{n}"), b.as_slice()))
            .collect();
        entries.push((evil.to_owned(), b"x"));
        let archive = dir.path().join("cifar-10-binary.tar.gz");
        std::fs::write(&archive, fixtures::tar_gz_raw(&entries).expect("tar")).expect("w");
        let e = expect_err(&archive, &archive, &["would escape", evil]);
        assert!(matches!(e, DataError::UnsafeArchiveEntry { .. }));
        assert!(!dir.path().join("evil.bin").exists());
    }
}

#[test]
fn corrupt_or_truncated_archive() {
    let dir = tmp();
    let files = fixtures::cifar10_binary_files(1, 20, 2, 3);
    let bytes = fixtures::tar_gz("cifar-10-batches-bin", &files).expect("tar");
    let archive = dir.path().join("cifar-10-binary.tar.gz");
    std::fs::write(&archive, &bytes[..bytes.len() / 2]).expect("w");
    let e = expect_err(&archive, &archive, &["corrupt archive"]);
    assert!(matches!(e, DataError::CorruptArchive { .. }));
    std::fs::write(&archive, b"\x1f\x8bnot gzip at all").expect("w");
    expect_err(&archive, &archive, &["corrupt archive"]);
}

#[test]
fn archive_without_cifar_content_and_unknown_folders() {
    let dir = tmp();
    let archive = dir.path().join("photos.tar.gz");
    let files = vec![("readme.txt".to_owned(), b"hi".to_vec())];
    std::fs::write(&archive, fixtures::tar_gz("stuff", &files).expect("tar")).expect("w");
    expect_err(
        &archive,
        &archive,
        &["no data set recognised", "no CIFAR folder"],
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    expect_err(&empty, &empty, &["no data set recognised"]);
    let missing = dir.path().join("nope");
    expect_err(&missing, &missing, &["cannot read"]);
    let file = dir.path().join("data_batch_1.bin");
    std::fs::write(&file, [0u8; 3073]).expect("w");
    expect_err(&file, &file, &["pass its folder"]);
}

#[test]
fn pickle_with_a_forbidden_global_or_unknown_opcode() {
    use annt::data::fixtures::pickle::PickleWriter;
    let dir = tmp();
    let root = write_dir(
        &dir.path().join("cifar-10-batches-py"),
        &fixtures::cifar10_python_files(1, 3, 2, 1),
    )
    .expect("write");
    let f = root.join("data_batch_1");
    // The classic exploit shape: os.system("...") through GLOBAL + REDUCE.
    let mut w = PickleWriter::new();
    w.proto(2);
    w.global("os", "system");
    w.short_binstring(b"touch /tmp/annt-pwned");
    w.tuple1();
    w.reduce();
    w.stop();
    std::fs::write(&f, w.into_bytes()).expect("w");
    let e = expect_err(
        &root,
        &f,
        &["pickle rejected", "global 'os.system' is not allowed"],
    );
    assert!(matches!(e, DataError::Pickle { .. }));
    assert!(!std::path::Path::new("/tmp/annt-pwned").exists());
    // An opcode these files never use (0x63 'c' is GLOBAL; 0x69 'i' is INST).
    std::fs::write(&f, b"\x80\x02i__builtin__\neval\n.").expect("w");
    expect_err(&root, &f, &["pickle rejected", "opcode"]);
    // Cut short.
    let good = fixtures::pickle::cifar10_batch(&[0u8; 3072], &[1]);
    std::fs::write(&f, &good[..good.len() / 2]).expect("w");
    expect_err(&root, &f, &["pickle rejected"]);
}

#[test]
fn pickle_with_wrong_structure_or_labels() {
    let dir = tmp();
    let root = write_dir(
        &dir.path().join("cifar-10-batches-py"),
        &fixtures::cifar10_python_files(1, 3, 2, 1),
    )
    .expect("write");
    let f = root.join("test_batch");
    std::fs::write(
        &f,
        fixtures::pickle::cifar10_batch(&[0u8; 3072 * 2], &[1, 12]),
    )
    .expect("w");
    expect_err(&root, &f, &["label 12 of record 1", "10 classes"]);
    std::fs::write(&f, fixtures::pickle::cifar10_meta(&["a"])).expect("w");
    let e = expect_err(&root, &f, &["data"]);
    assert!(matches!(e, DataError::Malformed { .. }));
}

#[test]
fn a_single_class_folder_is_refused_not_trained_on() {
    // `data/flowers/<class>/*` passed as `data`: `flowers` would be the only "class".
    let dir = tmp();
    fixtures::write_image(
        &dir.path().join("flowers/rose/a.png"),
        8,
        8,
        [1, 2, 3],
        false,
    )
    .expect("img");
    fixtures::write_image(
        &dir.path().join("flowers/tulip/b.png"),
        8,
        8,
        [9, 2, 3],
        false,
    )
    .expect("img");
    expect_err(
        dir.path(),
        dir.path(),
        &["only one class folder ('flowers')", "at least two"],
    );
    // The right folder works once a test split can be held out.
    let flowers = dir.path().join("flowers");
    expect_err(
        &flowers,
        &flowers,
        &["missing test split", "two or more images"],
    );
    fixtures::write_image(&flowers.join("rose/c.png"), 8, 8, [1, 2, 3], false).expect("img");
    let ok = common::open(&flowers).expect("flowers");
    assert_eq!((ok.train.len(), ok.test.len()), (2, 1));
    assert_eq!(ok.classes, vec!["rose", "tulip"]);
}
