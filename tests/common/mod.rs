//! Helpers shared by the integration tests.
#![allow(dead_code)]

use annt::data::{self, DataError, Dataset, OpenOptions};
use std::path::Path;

/// Opens `path` with default options.
pub fn open(path: &Path) -> Result<Dataset, DataError> {
    data::open(path, &OpenOptions::default())
}

/// Opens `path` and expects an error whose message contains every fragment and ends with
/// the name of `file` (errors name the file last).
pub fn expect_err(path: &Path, file: &Path, fragments: &[&str]) -> DataError {
    expect_err_with(path, &OpenOptions::default(), file, fragments)
}

pub fn expect_err_with(
    path: &Path,
    options: &OpenOptions,
    file: &Path,
    fragments: &[&str],
) -> DataError {
    let err = match data::open(path, options) {
        Ok(ds) => panic!(
            "expected an error for {}, got a data set of {} images",
            path.display(),
            ds.train.len()
        ),
        Err(e) => e,
    };
    let msg = err.to_string();
    for f in fragments {
        assert!(msg.contains(f), "message {msg:?} lacks {f:?}");
    }
    assert!(
        msg.ends_with(&file.display().to_string()),
        "message {msg:?} should end with the file {}",
        file.display()
    );
    err
}
