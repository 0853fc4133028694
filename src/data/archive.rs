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

/// Decompressed bytes accepted for one member of an archive: CIFAR's largest member
/// (CIFAR-100 python `train`) is 150 MiB and an image a few MiB, so a bigger member is a
/// decompression bomb or not a data set. Checked against the member's header before a byte
/// of it is inflated.
pub const MAX_ARCHIVE_MEMBER_BYTES: u64 = 1 << 30;

/// The caps an archive is read under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Per member, decompressed.
    pub member: u64,
    /// All members together, decompressed.
    pub total: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            member: MAX_ARCHIVE_MEMBER_BYTES,
            total: MAX_ARCHIVE_BYTES,
        }
    }
}

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
    read_archive_bytes_with(bytes, path, ArchiveLimits::default())
}

/// [`read_archive_bytes`] under given caps.
pub fn read_archive_bytes_with(
    bytes: &[u8],
    path: &Path,
    limits: ArchiveLimits,
) -> Result<ArchiveContents, DataError> {
    let gz = bytes.starts_with(&[0x1f, 0x8b]);
    if gz {
        read_tar(flate2::read::GzDecoder::new(bytes), path, limits)
    } else {
        read_tar(bytes, path, limits)
    }
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::CorruptArchive {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn read_tar(
    reader: impl Read,
    path: &Path,
    limits: ArchiveLimits,
) -> Result<ArchiveContents, DataError> {
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
        let member_cap = limits.member.min(MAX_FILE_BYTES);
        if size > member_cap {
            return Err(DataError::ArchiveMemberTooLarge {
                path: path.to_path_buf(),
                member: inner,
                size,
                limit: member_cap,
            });
        }
        if total + size > limits.total {
            return Err(DataError::ArchiveTooLarge {
                path: path.to_path_buf(),
                member: inner,
                limit: limits.total,
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

    /// A gzip'd tar of one member of `len` zero bytes (a few KiB compressed).
    fn zeros_archive(name: &str, len: u64) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_size(len);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append_data(&mut header, name, std::io::repeat(0).take(len))
            .expect("append");
        tar.into_inner().and_then(|gz| gz.finish()).expect("finish")
    }

    #[test]
    fn a_member_over_the_cap_is_refused_by_its_header_naming_member_and_limit() {
        // 64 MiB of zeros compress to ~64 KiB: a small bomb against a 1 MiB member cap.
        let bytes = zeros_archive("cls/bomb.png", 64 << 20);
        assert!(bytes.len() < 1 << 20, "{} compressed bytes", bytes.len());
        let limits = ArchiveLimits {
            member: 1 << 20,
            total: MAX_ARCHIVE_BYTES,
        };
        let e = read_archive_bytes_with(&bytes, Path::new("/data/b.tar.gz"), limits)
            .expect_err("must be refused");
        let text = e.to_string();
        assert!(
            matches!(&e, DataError::ArchiveMemberTooLarge { member, size, limit, .. }
                if member == "cls/bomb.png" && *size == 64 << 20 && *limit == 1 << 20),
            "{e:?}"
        );
        assert!(
            text.contains("cls/bomb.png") && text.contains("/data/b.tar.gz"),
            "{text}"
        );
        assert!(text.contains("1048576"), "the limit is named: {text}");
        // Refused from the header, before reading: a header that claims 64 GiB with only
        // 1 KiB behind it would be "truncated" had the member been read.
        let mut header = tar::Header::new_gnu();
        header.set_path("cls/huge.png").expect("path");
        header.set_size(64 << 30);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        let mut raw = header.as_bytes().to_vec();
        raw.extend_from_slice(&[0u8; 1024]);
        let e = read_archive_bytes(&raw, Path::new("h.tar")).expect_err("refused");
        assert!(
            matches!(&e, DataError::ArchiveMemberTooLarge { member, .. } if member == "cls/huge.png"),
            "{e:?}"
        );
        // Under the cap the same member reads in full.
        let small = zeros_archive("cls/ok.png", 1000);
        let c = read_archive_bytes_with(&small, Path::new("s.tar.gz"), limits).expect("reads");
        assert_eq!(c.folders["cls"]["ok.png"].len(), 1000);
    }

    #[test]
    fn members_over_the_total_cap_are_refused() {
        let bytes = zeros_archive("a.bin", 3000);
        let limits = ArchiveLimits {
            member: 1 << 20,
            total: 2000,
        };
        let e = read_archive_bytes_with(&bytes, Path::new("t.tar.gz"), limits)
            .expect_err("over the total");
        assert!(
            matches!(&e, DataError::ArchiveTooLarge { limit: 2000, member, .. } if member == "a.bin"),
            "{e:?}"
        );
    }

    #[test]
    fn safe_relative_rejects_escapes() {
        assert_eq!(safe_relative("a/./b").as_deref(), Some("a/b"));
        assert_eq!(safe_relative("./a").as_deref(), Some("a"));
        assert!(safe_relative("../etc/passwd").is_none());
        assert!(safe_relative("a/../../b").is_none());
        assert!(safe_relative("/etc/passwd").is_none());
    }
}
