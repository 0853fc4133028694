//! Reading the official `.tar.gz` archives directly, without extracting them to disk.
//!
//! Entries are decompressed into memory and grouped by folder; detection then treats each
//! folder like a folder on disk. Nothing is ever written, but an entry whose path is
//! absolute or climbs out with `..` is still rejected: such an archive is hostile or broken,
//! and the user should hear so before extracting it with another tool.

use super::source::MemSource;
use super::{DataError, MAX_FILE_BYTES};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Total decompressed bytes accepted from one archive (CIFAR-100 python is 161 MiB).
pub const MAX_ARCHIVE_BYTES: u64 = 8 << 30;

/// True when `path`'s name looks like an archive annt reads.
#[must_use]
pub fn is_archive_name(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    name.ends_with(".tar.gz") || name.ends_with(".tgz") || name.ends_with(".tar")
}

/// The regular files of an archive grouped by their folder ("" for the top level).
#[derive(Debug, Default)]
pub struct ArchiveContents {
    pub folders: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl ArchiveContents {
    /// One [`MemSource`] per folder, its root shown as `archive/inner/folder`.
    #[must_use]
    pub fn into_sources(self, archive: &Path) -> Vec<(String, MemSource)> {
        self.folders
            .into_iter()
            .map(|(folder, files)| {
                let root = if folder.is_empty() {
                    archive.to_path_buf()
                } else {
                    archive.join(&folder)
                };
                (folder, MemSource::new(root, files))
            })
            .collect()
    }
}

/// Reads an archive file (gzip-compressed or plain tar) into memory.
pub fn read_archive(path: &Path) -> Result<ArchiveContents, DataError> {
    let bytes = super::source::read_file_checked(path)?;
    read_archive_bytes(&bytes, path)
}

/// Reads archive bytes; `path` is only used in error messages.
pub fn read_archive_bytes(bytes: &[u8], path: &Path) -> Result<ArchiveContents, DataError> {
    let gz = bytes.starts_with(&[0x1f, 0x8b]);
    if gz {
        read_tar(flate2::read::GzDecoder::new(bytes), path)
    } else {
        read_tar(bytes, path)
    }
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::CorruptArchive {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn read_tar(reader: impl Read, path: &Path) -> Result<ArchiveContents, DataError> {
    let mut archive = tar::Archive::new(reader);
    let mut contents = ArchiveContents::default();
    let mut total = 0u64;
    let mut entries = 0usize;
    for entry in archive.entries().map_err(|e| corrupt(path, e))? {
        let mut entry = entry.map_err(|e| corrupt(path, e))?;
        entries += 1;
        let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let inner = safe_relative(&raw_name).ok_or_else(|| DataError::UnsafeArchiveEntry {
            path: path.to_path_buf(),
            entry: raw_name.clone(),
        })?;
        // Links are checked above like any entry, then ignored: annt reads only regular
        // files and never follows a link out of the archive.
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let size = entry.size();
        if size > MAX_FILE_BYTES || total + size > MAX_ARCHIVE_BYTES {
            return Err(DataError::Oversized {
                path: path.join(&inner),
                len: size,
                max: MAX_FILE_BYTES.min(MAX_ARCHIVE_BYTES - total),
            });
        }
        total += size;
        // `size` comes from the header and has been bounded above; reading with `take`
        // means a lying header cannot make us read past the entry.
        let mut data = Vec::with_capacity(size.min(1 << 20) as usize);
        entry
            .by_ref()
            .take(size)
            .read_to_end(&mut data)
            .map_err(|e| corrupt(path, format!("entry '{raw_name}': {e}")))?;
        if (data.len() as u64) < size {
            return Err(corrupt(path, format!("entry '{raw_name}' is truncated")));
        }
        let (folder, name) = match inner.rsplit_once('/') {
            Some((f, n)) => (f.to_owned(), n.to_owned()),
            None => (String::new(), inner.clone()),
        };
        contents
            .folders
            .entry(folder)
            .or_default()
            .insert(name, data);
    }
    if entries == 0 {
        return Err(corrupt(path, "no entries (empty or not a tar archive)"));
    }
    Ok(contents)
}

/// Normalises an entry name to `a/b/c`, or `None` when it is absolute or uses `..`.
fn safe_relative(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for comp in Path::new(name).components() {
        match comp {
            Component::Normal(p) => parts.push(p.to_str()?.to_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    if parts.is_empty() {
        // "./" itself: a harmless directory entry.
        return Some(String::new());
    }
    Some(parts.join("/"))
}

/// The path shown for an entry of an archive.
#[must_use]
pub fn entry_path(archive: &Path, inner: &str) -> PathBuf {
    archive.join(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_relative_rejects_escapes() {
        assert_eq!(safe_relative("a/./b").as_deref(), Some("a/b"));
        assert_eq!(safe_relative("./a").as_deref(), Some("a"));
        assert!(safe_relative("../etc/passwd").is_none());
        assert!(safe_relative("a/../../b").is_none());
        assert!(safe_relative("/etc/passwd").is_none());
    }
}
