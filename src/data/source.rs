//! Where the files of a data set come from: a folder on disk or the entries of an archive.
//!
//! The CIFAR readers only ever ask for "the file named X in this data set"; this module
//! answers that for folders and archives alike, so every format is read from a folder and
//! from its `.tar.gz` by the same code, and every error names the real file (for archives,
//! `archive.tar.gz/inner/name`).

use super::{DataError, MAX_FILE_BYTES};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A flat set of named files (one folder level).
pub trait FileSource {
    /// File names (no directories), sorted.
    fn names(&self) -> Vec<String>;
    /// The bytes of one file.
    fn read(&self, name: &str) -> Result<Cow<'_, [u8]>, DataError>;
    /// The path to show the user for `name`.
    fn path_of(&self, name: &str) -> PathBuf;
    /// The path of the folder (or archive folder) itself.
    fn root(&self) -> PathBuf;

    /// True when a file of that name exists.
    fn has(&self, name: &str) -> bool {
        self.names().iter().any(|n| n == name)
    }
}

/// The regular files directly inside a folder.
#[derive(Debug, Clone)]
pub struct DirSource {
    root: PathBuf,
    names: Vec<String>,
}

impl DirSource {
    /// Lists the files (anything but folders) directly inside `root`.
    pub fn new(root: &Path) -> Result<Self, DataError> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(root).map_err(|e| DataError::io(root, e))? {
            let entry = entry.map_err(|e| DataError::io(root, e))?;
            // Everything that is not a folder is listed, dangling links included: a data
            // file that cannot be read must be reported, not silently skipped.
            if !entry.path().is_dir()
                && let Some(name) = entry.file_name().to_str()
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(Self {
            root: root.to_path_buf(),
            names,
        })
    }
}

impl FileSource for DirSource {
    fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn read(&self, name: &str) -> Result<Cow<'_, [u8]>, DataError> {
        let path = self.root.join(name);
        read_file_checked(&path).map(Cow::Owned)
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn root(&self) -> PathBuf {
        self.root.clone()
    }
}

/// Reads a whole file, refusing one larger than [`MAX_FILE_BYTES`] before allocating.
pub fn read_file_checked(path: &Path) -> Result<Vec<u8>, DataError> {
    let len = std::fs::metadata(path)
        .map_err(|e| DataError::io(path, e))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(DataError::Oversized {
            path: path.to_path_buf(),
            len,
            max: MAX_FILE_BYTES,
        });
    }
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

/// The files of one folder inside an archive, already decompressed into memory.
#[derive(Debug, Clone)]
pub struct MemSource {
    root: PathBuf,
    files: BTreeMap<String, Vec<u8>>,
}

impl MemSource {
    /// `root` is the path shown to the user (archive path joined with the inner folder).
    #[must_use]
    pub fn new(root: PathBuf, files: BTreeMap<String, Vec<u8>>) -> Self {
        Self { root, files }
    }
}

impl FileSource for MemSource {
    fn names(&self) -> Vec<String> {
        self.files.keys().cloned().collect()
    }

    fn read(&self, name: &str) -> Result<Cow<'_, [u8]>, DataError> {
        self.files
            .get(name)
            .map(|b| Cow::Borrowed(b.as_slice()))
            .ok_or_else(|| {
                DataError::io(
                    self.path_of(name),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )
            })
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn root(&self) -> PathBuf {
        self.root.clone()
    }
}
