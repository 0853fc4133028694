//! (in progress)
use super::{DataError, Dataset, OpenOptions};
use std::path::Path;

pub fn open_detected(path: &Path, _options: &OpenOptions) -> Result<Dataset, DataError> {
    Err(DataError::NotRecognized { path: path.into(), hint: "todo".into() })
}
