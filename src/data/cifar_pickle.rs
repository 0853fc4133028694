//! CIFAR's python versions (`cifar-10-batches-py`, `cifar-100-python`): turns one batch
//! or meta file into pixels, labels and class names.
//!
//! This module owns the mapping from the pickled dict (see [`super::pickle`], which does
//! the safe unpickling) to annt's types, and every check that the dict has the CIFAR
//! shape: a `data` uint8 array of `N × 3072` and label lists of `N` ints. Keys are
//! accepted as Python 2 byte strings (the official files) or Python 3 unicode (files
//! re-pickled by Python 3). Range checks of label values against the class count are
//! the caller's, who knows the class list.

use super::DataError;
use super::pickle::{self, Pickle};
use std::path::Path;

/// Bytes of one 32×32 RGB image in CIFAR's CHW layout.
const IMAGE_BYTES: usize = 3072;

/// One CIFAR python batch.
#[derive(Debug, Clone, Default)]
pub struct PickledBatch {
    /// `rows * 3072` bytes in the file's order: per image 1024 red, 1024 green, then
    /// 1024 blue bytes (CHW).
    pub data: Vec<u8>,
    /// Number of images.
    pub rows: usize,
    /// CIFAR-10 `labels`, when present (`rows` entries).
    pub labels: Option<Vec<i64>>,
    /// CIFAR-100 `fine_labels`, when present (`rows` entries).
    pub fine_labels: Option<Vec<i64>>,
    /// CIFAR-100 `coarse_labels`, when present (`rows` entries).
    pub coarse_labels: Option<Vec<i64>>,
}

/// Class names from `batches.meta` / `meta` (each `None` when its key is absent).
#[derive(Debug, Clone, Default)]
pub struct PickledMeta {
    /// CIFAR-10 `label_names`.
    pub label_names: Option<Vec<String>>,
    /// CIFAR-100 `fine_label_names`.
    pub fine_label_names: Option<Vec<String>>,
    /// CIFAR-100 `coarse_label_names`.
    pub coarse_label_names: Option<Vec<String>>,
}

/// Unpickles `bytes` and checks the top level is a dict (both file kinds are).
fn parse_dict<'a>(bytes: &'a [u8], path: &Path) -> Result<Pickle<'a>, DataError> {
    let pickle = pickle::parse(bytes).map_err(|e| DataError::Pickle {
        path: path.to_path_buf(),
        offset: e.offset,
        reason: e.reason,
    })?;
    if !pickle.is_dict() {
        return Err(DataError::malformed(
            path,
            format!(
                "top level of the pickle is {}, not a dict",
                pickle.root().described()
            ),
        ));
    }
    Ok(pickle)
}

/// Labels under `key` (a list of ints or a 1-D integer array), checked to number `rows`.
fn labels(
    pickle: &Pickle<'_>,
    key: &str,
    rows: usize,
    path: &Path,
) -> Result<Option<Vec<i64>>, DataError> {
    let Some(value) = pickle.get(key) else {
        return Ok(None);
    };
    let labels = value
        .as_int_list()
        .map_err(|reason| DataError::malformed(path, format!("'{key}' {reason}")))?;
    if labels.len() != rows {
        return Err(DataError::malformed(
            path,
            format!("'{key}' has {} entries for {rows} images", labels.len()),
        ));
    }
    Ok(Some(labels))
}

/// Class names under `key` (a list of strings of either type).
fn names(pickle: &Pickle<'_>, key: &str, path: &Path) -> Result<Option<Vec<String>>, DataError> {
    pickle
        .get(key)
        .map(|v| v.as_str_list())
        .transpose()
        .map_err(|reason| DataError::malformed(path, format!("'{key}' {reason}")))
}

/// The top-level keys for a message: a few, each shortened (a hostile file may have
/// millions, or megabyte-long ones).
fn key_list(pickle: &Pickle<'_>) -> String {
    const SHOWN: usize = 8;
    let keys = pickle.root().keys();
    let mut shown: Vec<String> = keys
        .iter()
        .take(SHOWN)
        .filter_map(|k| k.text_bytes())
        .map(|k| String::from_utf8_lossy(&k[..k.len().min(40)]).into_owned())
        .collect();
    if keys.len() > SHOWN {
        shown.push(format!("… {} more", keys.len() - SHOWN));
    }
    shown.join(", ")
}

/// Parses a CIFAR-10 (`data_batch_N`, `test_batch`) or CIFAR-100 (`train`, `test`)
/// python batch. `path` is only used in errors.
pub fn parse_batch(bytes: &[u8], path: &Path) -> Result<PickledBatch, DataError> {
    let pickle = parse_dict(bytes, path)?;
    let data = pickle.get("data").ok_or_else(|| {
        DataError::malformed(path, format!("no 'data' key (keys: {})", key_list(&pickle)))
    })?;
    let array = data.as_array().ok_or_else(|| {
        DataError::malformed(
            path,
            format!("'data' is {}, not a numpy array", data.described()),
        )
    })?;
    if !array.dtype.is_u8() {
        return Err(DataError::malformed(
            path,
            format!("'data' has dtype '{}', expected uint8", array.dtype.descr()),
        ));
    }
    let rows = match *array.shape {
        [rows, IMAGE_BYTES] => rows,
        ref other => {
            return Err(DataError::malformed(
                path,
                format!("'data' has shape {other:?}, expected (N, {IMAGE_BYTES})"),
            ));
        }
    };
    let labels_10 = labels(&pickle, "labels", rows, path)?;
    let fine = labels(&pickle, "fine_labels", rows, path)?;
    let coarse = labels(&pickle, "coarse_labels", rows, path)?;
    Ok(PickledBatch {
        // The one copy of the pixels: the parser only pointed into `bytes`.
        data: array.data.to_vec(),
        rows,
        labels: labels_10,
        fine_labels: fine,
        coarse_labels: coarse,
    })
}

/// Parses CIFAR-10's `batches.meta` or CIFAR-100's `meta`. Missing name lists are
/// `None` (the caller falls back to the official names); present but mistyped ones
/// are errors.
pub fn parse_meta(bytes: &[u8], path: &Path) -> Result<PickledMeta, DataError> {
    let pickle = parse_dict(bytes, path)?;
    Ok(PickledMeta {
        label_names: names(&pickle, "label_names", path)?,
        fine_label_names: names(&pickle, "fine_label_names", path)?,
        coarse_label_names: names(&pickle, "coarse_label_names", path)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::fixtures::pickle::{self as fx, PickleWriter};
    use crate::data::pickle::test_vectors;

    fn path() -> &'static Path {
        Path::new("cifar-10-batches-py/data_batch_1")
    }

    fn pixels(rows: usize) -> Vec<u8> {
        (0..rows * IMAGE_BYTES)
            .map(|i| (i * 31 % 256) as u8)
            .collect()
    }

    fn malformed(result: Result<impl std::fmt::Debug, DataError>) -> String {
        match result {
            Err(DataError::Malformed { reason, .. }) => reason,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    /// `{'data': <a u1 array of the given shape>, extra…}` with labels written by `extra`.
    fn batch_with(shape: &[usize], descr: &str, extra: impl FnOnce(&mut PickleWriter)) -> Vec<u8> {
        let n: usize = shape.iter().product();
        let size = if descr == "u1" { 1 } else { 8 };
        let mut w = PickleWriter::new();
        w.proto(2).empty_dict().put().mark();
        w.str_item(b"data").ndarray(
            descr,
            if size == 1 { "|" } else { "<" },
            shape,
            &vec![7; n * size],
        );
        extra(&mut w);
        w.setitems().stop();
        w.into_bytes()
    }

    #[test]
    fn cifar10_batch_round_trip() {
        // 2500 rows: the label list is written as APPENDS batches of 1000.
        let rows = 2500;
        let labels: Vec<u8> = (0..rows).map(|i| (i * 7 % 10) as u8).collect();
        let px = pixels(rows);
        let b = parse_batch(&fx::cifar10_batch(&px, &labels), path()).expect("test value");
        assert_eq!(b.rows, rows);
        assert_eq!(b.data, px, "pixels in the file's CHW order");
        assert_eq!(
            b.labels.expect("test value"),
            labels.iter().map(|&l| i64::from(l)).collect::<Vec<_>>()
        );
        assert!(b.fine_labels.is_none() && b.coarse_labels.is_none());
    }

    #[test]
    fn cifar100_batch_round_trip() {
        let rows = 1001;
        let fine: Vec<u8> = (0..rows).map(|i| (i % 100) as u8).collect();
        let coarse: Vec<u8> = fine.iter().map(|&f| fx_coarse(f)).collect();
        let px = pixels(rows);
        let b = parse_batch(&fx::cifar100_batch(&px, &fine, &coarse), path()).expect("test value");
        assert_eq!((b.rows, b.data.len()), (rows, rows * IMAGE_BYTES));
        assert_eq!(b.data, px);
        assert_eq!(
            b.fine_labels.expect("test value"),
            fine.iter().map(|&l| i64::from(l)).collect::<Vec<_>>()
        );
        assert_eq!(
            b.coarse_labels.expect("test value"),
            coarse.iter().map(|&l| i64::from(l)).collect::<Vec<_>>()
        );
        assert!(b.labels.is_none());
    }

    fn fx_coarse(fine: u8) -> u8 {
        fine / 5
    }

    #[test]
    fn empty_batch_round_trip() {
        let b = parse_batch(&fx::cifar10_batch(&[], &[]), path()).expect("test value");
        assert_eq!((b.rows, b.data.len(), b.labels), (0, 0, Some(vec![])));
    }

    #[test]
    fn metas_round_trip() {
        let names = ["airplane", "automobile", "bird"];
        let m = parse_meta(&fx::cifar10_meta(&names), path()).expect("test value");
        assert_eq!(m.label_names.expect("test value"), names);
        assert!(m.fine_label_names.is_none() && m.coarse_label_names.is_none());
        // 1200 fine names: memo ids past 255 (LONG_BINPUT) and two APPENDS batches.
        let fine: Vec<String> = (0..1200).map(|i| format!("fine_{i}")).collect();
        let fine: Vec<&str> = fine.iter().map(String::as_str).collect();
        let m = parse_meta(
            &fx::cifar100_meta(&fine, &["aquatic_mammals", "fish"]),
            path(),
        )
        .expect("test value");
        assert_eq!(m.fine_label_names.expect("test value"), fine);
        assert_eq!(
            m.coarse_label_names.expect("test value"),
            ["aquatic_mammals", "fish"]
        );
        assert!(m.label_names.is_none());
    }

    #[test]
    fn reads_batches_pickled_by_python3() {
        for bytes in [
            test_vectors::python3_protocol2(),
            test_vectors::python3_protocol4(),
        ] {
            let b = parse_batch(&bytes, path()).expect("test value");
            assert_eq!(b.rows, 2);
            assert_eq!(b.data, test_vectors::arange_pixels());
            assert_eq!(b.labels, Some(vec![1, 2]));
        }
    }

    #[test]
    fn labels_may_be_an_integer_array() {
        let bytes = batch_with(&[2, IMAGE_BYTES], "u1", |w| {
            w.str_item(b"labels").ndarray(
                "i8",
                "<",
                &[2],
                &[3, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0],
            );
        });
        assert_eq!(
            parse_batch(&bytes, path()).expect("test value").labels,
            Some(vec![3, 4])
        );
    }

    #[test]
    fn pickle_errors_keep_offset_and_path() {
        let mut w = PickleWriter::new();
        w.proto(2).empty_dict().global("os", "system").stop();
        match parse_batch(w.as_bytes(), path()) {
            Err(e @ DataError::Pickle { offset: 3, .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("global 'os.system' is not allowed"), "{msg}");
                assert!(msg.ends_with("data_batch_1"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        let cut = fx::cifar10_batch(&pixels(1), &[1]);
        assert!(matches!(
            parse_batch(&cut[..cut.len() / 2], path()),
            Err(DataError::Pickle { .. })
        ));
        assert!(matches!(
            parse_meta(b"\x80\x02\xfe", path()),
            Err(DataError::Pickle { offset: 2, .. })
        ));
    }

    #[test]
    fn rejects_non_dicts_and_missing_data() {
        let mut w = PickleWriter::new();
        w.proto(2).empty_list().stop();
        assert!(malformed(parse_batch(w.as_bytes(), path())).contains("is a list, not a dict"));
        assert!(malformed(parse_meta(w.as_bytes(), path())).contains("not a dict"));
        let names = fx::cifar10_meta(&["cat"]);
        let reason = malformed(parse_batch(&names, path()));
        assert!(reason.starts_with("no 'data' key"), "{reason}");
        assert!(
            reason.contains("label_names"),
            "lists the keys found: {reason}"
        );
    }

    #[test]
    fn rejects_data_of_the_wrong_type_or_shape() {
        let mut w = PickleWriter::new();
        w.proto(2)
            .empty_dict()
            .put()
            .str_item(b"data")
            .int_list(&[1, 2])
            .setitem()
            .stop();
        assert!(
            malformed(parse_batch(w.as_bytes(), path()))
                .contains("'data' is a list, not a numpy array")
        );
        let wide = batch_with(&[1, IMAGE_BYTES], "i8", |_| {});
        assert!(malformed(parse_batch(&wide, path())).contains("dtype '<i8', expected uint8"));
        let flat = batch_with(&[IMAGE_BYTES], "u1", |_| {});
        assert!(malformed(parse_batch(&flat, path())).contains("shape [3072], expected (N, 3072)"));
        let narrow = batch_with(&[2, 1024], "u1", |_| {});
        assert!(malformed(parse_batch(&narrow, path())).contains("shape [2, 1024]"));
    }

    #[test]
    fn rejects_bad_labels() {
        let short = batch_with(&[2, IMAGE_BYTES], "u1", |w| {
            w.str_item(b"labels").int_list(&[1]);
        });
        assert_eq!(
            malformed(parse_batch(&short, path())),
            "'labels' has 1 entries for 2 images"
        );
        let not_int = batch_with(&[2, IMAGE_BYTES], "u1", |w| {
            w.str_item(b"fine_labels")
                .empty_list()
                .put()
                .mark()
                .int(1)
                .str_item(b"x")
                .appends();
        });
        assert_eq!(
            malformed(parse_batch(&not_int, path())),
            "'fine_labels' item 1 is a byte string, not an integer"
        );
        let not_list = batch_with(&[2, IMAGE_BYTES], "u1", |w| {
            w.str_item(b"coarse_labels").int(3);
        });
        assert!(malformed(parse_batch(&not_list, path())).contains("'coarse_labels' is an int"));
        let mut w = PickleWriter::new();
        w.proto(2)
            .empty_dict()
            .put()
            .str_item(b"label_names")
            .int_list(&[1])
            .setitem()
            .stop();
        assert_eq!(
            malformed(parse_meta(w.as_bytes(), path())),
            "'label_names' item 0 is an int, not a string"
        );
    }

    #[test]
    fn rejects_memo_amplified_name_lists() {
        // One 1 MiB name listed 100 times through the memo: a 1 MiB file that would
        // expand to 100 MiB of strings.
        let mut w = PickleWriter::new();
        w.proto(2).empty_dict().put().str_item(b"label_names");
        w.empty_list()
            .put()
            .mark()
            .string(&vec![b'n'; 1 << 20])
            .binput(200);
        for _ in 1..100 {
            w.binget(200);
        }
        w.appends().setitem().stop();
        let reason = malformed(parse_meta(w.as_bytes(), path()));
        assert!(
            reason.starts_with("'label_names' holds 104857600 bytes of text"),
            "{reason}"
        );
    }

    #[test]
    fn never_panics_on_mutated_batches() {
        let seeds = [
            fx::cifar10_batch(&pixels(1), &[4]),
            fx::cifar100_batch(&[], &[], &[]),
            fx::cifar10_meta(&["a", "b"]),
        ];
        let mut state = 0x1234_5678_u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        for i in 0..3000 {
            let mut bytes = seeds[i % seeds.len()].clone();
            let len = bytes.len();
            // The first seed is mostly pixels: aim at its first and last 200 bytes.
            let at = if i % 2 == 0 {
                next() % len.min(200)
            } else {
                len - 1 - next() % len.min(200)
            };
            bytes[at] = next() as u8;
            if let Ok(b) = parse_batch(&bytes, path()) {
                assert_eq!(b.data.len(), b.rows * IMAGE_BYTES);
            }
            let _ = parse_meta(&bytes, path());
        }
    }
}
