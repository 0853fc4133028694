//! (in progress: helper)
use super::DataError;
use std::path::Path;

/// One CIFAR python batch.
#[derive(Debug, Clone, Default)]
pub struct PickledBatch {
    /// `rows * 3072` bytes (CHW per image).
    pub data: Vec<u8>,
    pub rows: usize,
    pub labels: Option<Vec<i64>>,
    pub fine_labels: Option<Vec<i64>>,
    pub coarse_labels: Option<Vec<i64>>,
}

/// Class names from `batches.meta` / `meta`.
#[derive(Debug, Clone, Default)]
pub struct PickledMeta {
    pub label_names: Option<Vec<String>>,
    pub fine_label_names: Option<Vec<String>>,
    pub coarse_label_names: Option<Vec<String>>,
}

pub fn parse_batch(_bytes: &[u8], path: &Path) -> Result<PickledBatch, DataError> {
    Err(DataError::malformed(path, "todo"))
}

pub fn parse_meta(_bytes: &[u8], path: &Path) -> Result<PickledMeta, DataError> {
    Err(DataError::malformed(path, "todo"))
}
