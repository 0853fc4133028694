//! Auto-detection: from any path a user gives (a CIFAR folder, an official archive, an
//! image folder, or a parent folder holding one of those) to a loaded [`Dataset`].
//!
//! Rules, in order, for a folder:
//! 1. Its own files form a CIFAR layout → read it (two layouts side by side is an error).
//! 2. It has `train/` (and `test/`, `val/`…) class folders → image folder with given split.
//! 3. Its subfolders or archives hold exactly one data set → read that one. A folder and
//!    the archive it was extracted from count once (the folder is read: no decompression).
//!    Several different ones → an error listing them.
//! 4. Its subfolders hold images → a `<class>/*` tree split by the held-out fraction.

use super::archive::{self, is_archive_name};
use super::cifar;
use super::image_folder;
use super::source::{DirSource, FileSource, MemSource};
use super::{DataError, DataFormat, Dataset, OpenOptions};
use std::path::{Path, PathBuf};

/// The official archive names and the folder each one extracts to.
pub const OFFICIAL_ARCHIVES: [(&str, &str); 4] = [
    ("cifar-10-binary.tar.gz", "cifar-10-batches-bin"),
    ("cifar-10-python.tar.gz", "cifar-10-batches-py"),
    ("cifar-100-binary.tar.gz", "cifar-100-binary"),
    ("cifar-100-python.tar.gz", "cifar-100-python"),
];

/// What detection found at a path, before loading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// A CIFAR layout in a folder on disk.
    CifarDir(PathBuf, DataFormat),
    /// An archive file (its layout is found once it is read).
    Archive(PathBuf),
    /// `train/` + `test/` class folders.
    ImageSplit(PathBuf),
    /// One `<class>/*` tree.
    ImageTree(PathBuf),
}

fn mixed(path: &Path, (a, b): (DataFormat, DataFormat)) -> DataError {
    DataError::MixedFormats {
        path: path.to_path_buf(),
        first: a.label().to_owned(),
        second: b.label().to_owned(),
    }
}

/// Classifies a folder's own files; `Ok(None)` when they are not CIFAR.
fn cifar_layout_of(dir: &Path) -> Result<Option<DataFormat>, DataError> {
    let src = DirSource::new(dir)?;
    cifar::classify(&src.names()).map_err(|m| mixed(dir, m))
}

/// Finds what `path` holds without reading the data itself.
pub fn detect(path: &Path) -> Result<Detected, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if meta.is_file() {
        if is_archive_name(path) {
            return Ok(Detected::Archive(path.to_path_buf()));
        }
        return Err(DataError::NotRecognized {
            path: path.to_path_buf(),
            hint: "a file that is not a .tar.gz/.tgz/.tar archive; pass its folder instead".into(),
        });
    }
    let own = cifar_layout_of(path)?;
    let has_split = path.join("train").is_dir();
    if let Some(format) = own {
        if has_split {
            return Err(DataError::MixedFormats {
                path: path.to_path_buf(),
                first: format.label().to_owned(),
                second: "image folder (train/)".to_owned(),
            });
        }
        return Ok(Detected::CifarDir(path.to_path_buf(), format));
    }
    if has_split {
        return Ok(Detected::ImageSplit(path.to_path_buf()));
    }
    // A parent folder: look one level down for CIFAR folders and archives.
    let mut found: Vec<Detected> = Vec::new();
    for sub in image_folder::subdirs(path)? {
        if let Some(format) = cifar_layout_of(&sub)? {
            found.push(Detected::CifarDir(sub, format));
        }
    }
    let mut archives: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| DataError::io(path, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_archive_name(p))
        .collect();
    archives.sort();
    for a in archives {
        let name = a.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let extracted = OFFICIAL_ARCHIVES
            .iter()
            .find(|(arch, _)| *arch == name)
            .map(|(_, dir)| path.join(dir));
        let already = extracted.is_some_and(|d| {
            found
                .iter()
                .any(|f| matches!(f, Detected::CifarDir(p, _) if *p == d))
        });
        if !already {
            found.push(Detected::Archive(a));
        }
    }
    match found.len() {
        1 => return Ok(found.remove(0)),
        0 => {}
        _ => {
            let names: Vec<String> = found.iter().map(display_name).collect();
            return Err(DataError::Ambiguous {
                path: path.to_path_buf(),
                found: names.join(", "),
            });
        }
    }
    if image_folder::looks_like_class_tree(path) {
        return Ok(Detected::ImageTree(path.to_path_buf()));
    }
    Err(DataError::NotRecognized {
        path: path.to_path_buf(),
        hint: "expected CIFAR files (data_batch_*.bin, train.bin, data_batch_*, train/test/meta), \
               an official .tar.gz, train/<class>/ + test/<class>/ images, or <class>/ folders of images"
            .into(),
    })
}

fn display_name(d: &Detected) -> String {
    match d {
        Detected::CifarDir(p, f) => format!("{} ({})", leaf(p), f.label()),
        Detected::Archive(p) | Detected::ImageSplit(p) | Detected::ImageTree(p) => leaf(p),
    }
}

fn leaf(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Detects and loads the data set at `path`.
pub fn open_detected(path: &Path, options: &OpenOptions) -> Result<Dataset, DataError> {
    match detect(path)? {
        Detected::CifarDir(dir, format) => cifar::load(&DirSource::new(&dir)?, format, options),
        Detected::Archive(file) => open_archive(&file, options),
        Detected::ImageSplit(dir) => image_folder::open_split(&dir, options),
        Detected::ImageTree(dir) => image_folder::open_tree(&dir, options),
    }
}

/// Reads an archive and loads the one CIFAR layout it holds.
pub fn open_archive(file: &Path, options: &OpenOptions) -> Result<Dataset, DataError> {
    open_archive_contents(archive::read_archive(file)?, file, options)
}

/// Loads the one CIFAR layout held by archive bytes already in memory (`file` names them
/// in messages). The fuzz target for archives enters here.
pub fn open_archive_bytes(
    bytes: &[u8],
    file: &Path,
    options: &OpenOptions,
) -> Result<Dataset, DataError> {
    open_archive_contents(archive::read_archive_bytes(bytes, file)?, file, options)
}

fn open_archive_contents(
    contents: archive::ArchiveContents,
    file: &Path,
    options: &OpenOptions,
) -> Result<Dataset, DataError> {
    let mut found: Vec<(String, MemSource, DataFormat)> = Vec::new();
    for (folder, src) in contents.into_sources(file) {
        let layout = cifar::classify(&src.names()).map_err(|m| mixed(&src.root(), m))?;
        if let Some(format) = layout {
            found.push((folder, src, format));
        }
    }
    match found.len() {
        0 => Err(DataError::NotRecognized {
            path: file.to_path_buf(),
            hint: "the archive holds no CIFAR folder".into(),
        }),
        1 => {
            let (_, src, format) = found.remove(0);
            cifar::load(&src, format, options)
        }
        _ => Err(DataError::Ambiguous {
            path: file.to_path_buf(),
            found: found
                .iter()
                .map(|(f, _, fmt)| format!("{f} ({})", fmt.label()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}
