//! The CIFAR binary record format: label byte(s) followed by 3072 pixel bytes (1024 red,
//! 1024 green, 1024 blue, row-major), records back to back with no header.
//!
//! The official files hold 10 000 records each, but nothing in the format says so: any
//! file whose size is a whole number of records is accepted.

use super::{DataError, ImageSet};
use std::path::Path;

/// Pixel bytes per CIFAR image (3 × 32 × 32).
pub const PIXEL_BYTES: usize = 3 * 32 * 32;

/// How a record's label bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLayout {
    /// Label bytes before the pixels: 1 for CIFAR-10, 2 (coarse, fine) for CIFAR-100.
    pub label_bytes: usize,
    /// Which of those bytes is the label to use.
    pub label_index: usize,
}

impl RecordLayout {
    pub const CIFAR10: Self = Self {
        label_bytes: 1,
        label_index: 0,
    };
    pub const CIFAR100_COARSE: Self = Self {
        label_bytes: 2,
        label_index: 0,
    };
    pub const CIFAR100_FINE: Self = Self {
        label_bytes: 2,
        label_index: 1,
    };

    /// Bytes per record.
    #[must_use]
    pub fn record_bytes(self) -> usize {
        self.label_bytes + PIXEL_BYTES
    }
}

/// Appends the records of one binary file to `out` (a 32×32 set), checking the size and
/// every label against `classes`. `path` is only used in error messages.
pub fn parse_records(
    bytes: &[u8],
    path: &Path,
    layout: RecordLayout,
    classes: usize,
    out: &mut ImageSet,
) -> Result<usize, DataError> {
    let record = layout.record_bytes();
    let len = bytes.len() as u64;
    if bytes.len() < record {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            len,
            record_bytes: record,
        });
    }
    if !bytes.len().is_multiple_of(record) {
        return Err(DataError::NotMultiple {
            path: path.to_path_buf(),
            len,
            record_bytes: record,
        });
    }
    let n = bytes.len() / record;
    // Validate all labels before growing `out`, so a bad file leaves it untouched.
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        let label = rec[layout.label_index];
        if usize::from(label) >= classes {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                record: i,
                label: i64::from(label),
                classes,
            });
        }
    }
    out.pixels.reserve(n * PIXEL_BYTES);
    out.labels.reserve(n);
    for rec in bytes.chunks_exact(record) {
        out.labels.push(u16::from(rec[layout.label_index]));
        out.pixels.extend_from_slice(&rec[layout.label_bytes..]);
    }
    Ok(n)
}

/// Class names from `batches.meta.txt` / `*_label_names.txt`: one per line, blank lines
/// (the official files end with some) and surrounding whitespace ignored.
pub fn parse_label_names(bytes: &[u8], path: &Path) -> Result<Vec<String>, DataError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        DataError::malformed(path, format!("class-name file is not UTF-8 text: {e}"))
    })?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        return Err(DataError::malformed(
            path,
            "class-name file lists no classes",
        ));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(labels: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for (i, &l) in labels.iter().enumerate() {
            v.push(l);
            v.extend(std::iter::repeat_n(i as u8, PIXEL_BYTES));
        }
        v
    }

    #[test]
    fn reads_any_whole_number_of_records() {
        let bytes = records(&[3, 7, 0]);
        let mut set = ImageSet::new(32, 32);
        let n = parse_records(
            &bytes,
            Path::new("x.bin"),
            RecordLayout::CIFAR10,
            10,
            &mut set,
        )
        .expect("parse");
        assert_eq!(n, 3);
        assert_eq!(set.labels, vec![3, 7, 0]);
        assert!(set.image(1).iter().all(|&p| p == 1));
    }

    #[test]
    fn rejects_partial_records_and_bad_labels_without_touching_output() {
        let mut set = ImageSet::new(32, 32);
        let mut bytes = records(&[1, 2]);
        bytes.pop();
        let e = parse_records(
            &bytes,
            Path::new("b.bin"),
            RecordLayout::CIFAR10,
            10,
            &mut set,
        )
        .expect_err("partial");
        assert!(
            e.to_string()
                .contains("not a multiple of the 3073-byte record"),
            "{e}"
        );
        assert!(e.to_string().ends_with("b.bin"), "{e}");
        let bytes = records(&[1, 10]);
        let e = parse_records(
            &bytes,
            Path::new("b.bin"),
            RecordLayout::CIFAR10,
            10,
            &mut set,
        )
        .expect_err("label");
        assert!(e.to_string().contains("label 10 of record 1"), "{e}");
        assert!(set.is_empty());
    }

    #[test]
    fn label_names_skip_blank_lines() {
        let names = parse_label_names(b"cat\r\ndog\n\n\n", Path::new("m.txt")).expect("names");
        assert_eq!(names, vec!["cat", "dog"]);
        assert!(parse_label_names(b"\n\n", Path::new("m.txt")).is_err());
    }
}
