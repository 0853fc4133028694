//! `DataError`: every way a data set on disk (or on the wire) can be wrong.
//!
//! Each variant names the file it is about; the path comes last in the message so that a
//! user reading `annt data inspect` output sees what was wrong first and where second.

use std::path::PathBuf;

/// An error while finding, reading, parsing, downloading or preparing a data set.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read ({source}): {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write ({source}): {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("truncated: {len} bytes is less than one {record_bytes}-byte record: {}", path.display())]
    Truncated {
        path: PathBuf,
        len: u64,
        record_bytes: usize,
    },
    #[error(
        "size {len} bytes is not a multiple of the {record_bytes}-byte record (the last record has only {} bytes; truncated or not this format?): {}",
        len % *record_bytes as u64,
        path.display()
    )]
    NotMultiple {
        path: PathBuf,
        len: u64,
        record_bytes: usize,
    },
    #[error("oversized: {len} bytes is more than the {max} bytes annt accepts for one data file: {}", path.display())]
    Oversized { path: PathBuf, len: u64, max: u64 },
    #[error(
        "archive member '{member}' would inflate to {size} bytes, over the {limit} bytes annt accepts for one member (a decompression bomb, or not a data set); refused before reading it: {}",
        path.display()
    )]
    ArchiveMemberTooLarge {
        path: PathBuf,
        member: String,
        size: u64,
        limit: u64,
    },
    #[error(
        "archive inflates to more than the {limit} bytes annt reads from one archive (reached at member '{member}'); extract it and open the folder: {}",
        path.display()
    )]
    ArchiveTooLarge {
        path: PathBuf,
        member: String,
        limit: u64,
    },
    #[error("label {label} of record {record} is outside the {classes} classes: {}", path.display())]
    LabelOutOfRange {
        path: PathBuf,
        record: usize,
        label: i64,
        classes: usize,
    },
    #[error("missing {split} split: expected {expected}: {}", path.display())]
    MissingSplit {
        path: PathBuf,
        split: &'static str,
        expected: String,
    },
    #[error("two data formats mixed in one folder ({first} and {second}); keep only one: {}", path.display())]
    MixedFormats {
        path: PathBuf,
        first: String,
        second: String,
    },
    #[error("several data sets found ({found}); pass one of them: {}", path.display())]
    Ambiguous { path: PathBuf, found: String },
    #[error("no data set recognised ({hint}): {}", path.display())]
    NotRecognized { path: PathBuf, hint: String },
    #[error("class folder holds no images: {}", path.display())]
    EmptyClass { path: PathBuf },
    #[error("image cannot be decoded ({reason}): {}", path.display())]
    CorruptImage { path: PathBuf, reason: String },
    #[error("pickle rejected at byte {offset}: {reason}: {}", path.display())]
    Pickle {
        path: PathBuf,
        offset: usize,
        reason: String,
    },
    #[error("unexpected content ({reason}): {}", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("archive entry '{entry}' would escape the extraction folder (absolute path or '..'): {}", path.display())]
    UnsafeArchiveEntry { path: PathBuf, entry: String },
    #[error("corrupt archive ({reason}): {}", path.display())]
    CorruptArchive { path: PathBuf, reason: String },
    #[error("download failed ({reason}): {url}")]
    Download { url: String, reason: String },
    #[error("MD5 mismatch: got {actual}, expected {expected}: {}", path.display())]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("stopped")]
    Stopped,
    #[error("no user data folder is known on this system; name a folder (--dir)")]
    NoDataFolder,
    /// A helper thread (image decoder, batch loader) died; a bug, not bad data.
    #[error("internal error: {0}")]
    Worker(String),
    #[error("tensor upload failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl DataError {
    /// Shorthand for an I/O error while reading `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for content that does not have the expected structure.
    pub fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Malformed {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
