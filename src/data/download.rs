//! Downloading the official CIFAR archives: where they live, what their MD5 is, and
//! getting one onto disk verified and whole.
//!
//! This module owns the network side of `annt data download`: the list of official
//! archives ([`official`]), pointing them at a mirror ([`with_mirror`]), the default place
//! to keep them ([`default_data_dir`]) and the [`download`] itself. The CLI owns the
//! progress bar and Ctrl-C handling and reaches in through the two callbacks.
//!
//! A download streams into a `.annt-partial-*` temporary file in the destination folder
//! while its MD5 is computed, and is renamed to the final name only once every byte has
//! arrived, the digest matches and the data is on disk. Whatever goes wrong (HTTP error,
//! dropped connection, short body, wrong bytes, the user stopping it) the temporary file
//! is removed and nothing is written under the final name. An existing file whose MD5 is
//! wrong is left untouched until its replacement has been verified: the rename replaces it
//! atomically, and if the new download fails the old file stays where it was (still wrong,
//! so the next run tries again).

use super::DataError;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where Alex Krizhevsky's page serves the four archives.
pub const OFFICIAL_BASE_URL: &str = "https://www.cs.toronto.edu/~kriz/";

/// How long connecting (and, separately, resolving the host name) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one read of the socket may wait for data. This is an idle timeout, not a
/// limit on the whole transfer: a 170 MB archive on a slow line may take many minutes,
/// but a server that stops sending for this long is not coming back.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes read from the socket (and written to disk) per step; also how often `stop` is
/// polled and `progress` called.
const CHUNK_BYTES: usize = 64 * 1024;

/// Which CIFAR data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CifarVariant {
    /// 10 classes, 50 000 + 10 000 images.
    Cifar10,
    /// 100 fine / 20 coarse classes, 50 000 + 10 000 images.
    Cifar100,
}

/// Which of the two official layouts of a CIFAR archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArchiveFormat {
    /// Fixed-size binary records (`*-binary.tar.gz`).
    Binary,
    /// Python 2 pickles (`*-python.tar.gz`).
    Python,
}

/// One file to fetch: where from, what it must hash to, and what to call it on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadSpec {
    /// Full URL of the file.
    pub url: String,
    /// Expected MD5 as 32 hex digits (compared case-insensitively).
    pub md5: String,
    /// Name of the file inside the destination folder (no directories).
    pub file_name: String,
}

/// The official archive of `variant` in `format`, with its published MD5.
#[must_use]
pub fn official(variant: CifarVariant, format: ArchiveFormat) -> DownloadSpec {
    let (file_name, md5) = match (variant, format) {
        (CifarVariant::Cifar10, ArchiveFormat::Binary) => {
            ("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")
        }
        (CifarVariant::Cifar10, ArchiveFormat::Python) => {
            ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")
        }
        (CifarVariant::Cifar100, ArchiveFormat::Binary) => (
            "cifar-100-binary.tar.gz",
            "03b5dce01913d631647c71ecec9e9cb8",
        ),
        (CifarVariant::Cifar100, ArchiveFormat::Python) => (
            "cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
        ),
    };
    DownloadSpec {
        url: format!("{OFFICIAL_BASE_URL}{file_name}"),
        md5: md5.to_owned(),
        file_name: file_name.to_owned(),
    }
}

/// The same file fetched from `base_url` instead: the URL becomes `base_url` (with or
/// without a trailing slash) followed by the file name; the name and MD5 are kept, so a
/// mirror serving different bytes is caught.
#[must_use]
pub fn with_mirror(spec: DownloadSpec, base_url: &str) -> DownloadSpec {
    let base = base_url.trim_end_matches('/');
    DownloadSpec {
        url: format!("{base}/{}", spec.file_name),
        ..spec
    }
}

/// `annt` under the user's data directory (e.g. `~/.local/share/annt` on Linux), where
/// downloads go when no `--dir` is given; `None` when the platform has no such directory.
#[must_use]
pub fn default_data_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("annt"))
}

/// What [`download`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DownloadStatus {
    /// The file was not there and has been downloaded.
    Downloaded,
    /// The file was already there with the right MD5; nothing was fetched.
    AlreadyPresent,
    /// A file with the wrong MD5 was there and has been replaced by a verified download.
    ReplacedCorrupt,
}

/// Result of a successful [`download`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadOutcome {
    /// The verified file (`dir/file_name`).
    pub path: PathBuf,
    pub status: DownloadStatus,
    /// Size of that file in bytes.
    pub bytes: u64,
}

/// Makes sure `dir/<spec.file_name>` exists with the MD5 of `spec`, downloading it from
/// `spec.url` when it is missing or wrong. `dir` is created if needed.
///
/// `progress(done, total)` is called once the response headers are in (with `done` 0) and
/// after every chunk; `total` is the `Content-Length` when the server sent one. It is
/// called for every chunk, so a caller drawing a bar should throttle. `stop()` is polled
/// before the request and between chunks; when it returns true the download ends with
/// [`DataError::Stopped`].
///
/// On any error no file is left under the final name unless one was there before (a
/// corrupt file is only replaced by a verified one), and no partial file is left in `dir`.
///
/// # Errors
///
/// [`DataError::Download`] for a connection failure, timeout, non-2xx status or a body
/// shorter than announced; [`DataError::Checksum`] when the bytes received do not have the
/// expected MD5; [`DataError::Stopped`] when `stop()` asked to; [`DataError::Write`] or
/// [`DataError::Io`] when `dir` or the files in it cannot be written or read.
pub fn download(
    spec: &DownloadSpec,
    dir: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
    stop: &dyn Fn() -> bool,
) -> Result<DownloadOutcome, DataError> {
    std::fs::create_dir_all(dir).map_err(|source| DataError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(&spec.file_name);

    let status = match existing_md5(&path)? {
        None => DownloadStatus::Downloaded,
        Some((md5, bytes)) if md5.eq_ignore_ascii_case(&spec.md5) => {
            return Ok(DownloadOutcome {
                path,
                status: DownloadStatus::AlreadyPresent,
                bytes,
            });
        }
        Some(_) => DownloadStatus::ReplacedCorrupt,
    };

    if stop() {
        return Err(DataError::Stopped);
    }
    let bytes = fetch_verified(spec, dir, &path, progress, stop)?;
    Ok(DownloadOutcome {
        path,
        status,
        bytes,
    })
}

/// MD5 and size of the file at `path`, or `None` when there is no such file.
fn existing_md5(path: &Path) -> Result<Option<(String, u64)>, DataError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DataError::io(path, e)),
    };
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut bytes = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DataError::io(path, e)),
        };
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(Some((hex(&hasher.finalize()), bytes)))
}

/// Streams `spec.url` into a temporary file in `dir`, verifies length and MD5, and renames
/// it to `path`. Returns the number of bytes written. The temporary file is a
/// `NamedTempFile`, so every early return deletes it.
fn fetch_verified(
    spec: &DownloadSpec,
    dir: &Path,
    path: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
    stop: &dyn Fn() -> bool,
) -> Result<u64, DataError> {
    let failed = |reason: String| DataError::Download {
        url: spec.url.clone(),
        reason,
    };

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        // Statuses are turned into our own message below, with the reason phrase.
        .http_status_as_error(false)
        // ureq gunzips any body sent with `Content-Encoding: gzip`; the archive is
        // already gzip, and its MD5 is of the compressed bytes, so ask for them as is.
        .accept_encoding("identity")
        .build()
        .into();
    let mut response = agent
        .get(&spec.url)
        .call()
        .map_err(|e| failed(e.to_string()))?;
    let http_status = response.status();
    if !http_status.is_success() {
        return Err(failed(
            format!(
                "HTTP status {} {}",
                http_status.as_u16(),
                http_status.canonical_reason().unwrap_or("")
            )
            .trim_end()
            .to_owned(),
        ));
    }
    let total = response.body().content_length();

    let mut tmp = tempfile::Builder::new()
        .prefix(".annt-partial-")
        .tempfile_in(dir)
        .map_err(|source| DataError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    let write_err = |source: io::Error| DataError::Write {
        path: path.to_path_buf(),
        source,
    };

    let mut reader = response.body_mut().as_reader();
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut done = 0u64;
    progress(0, total);
    loop {
        if stop() {
            return Err(DataError::Stopped);
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let of = total.map(|t| format!(" of {t}")).unwrap_or_default();
                return Err(failed(format!("after {done}{of} bytes: {e}")));
            }
        };
        let chunk = &buf[..n];
        tmp.as_file_mut().write_all(chunk).map_err(write_err)?;
        hasher.update(chunk);
        done += n as u64;
        progress(done, total);
    }
    drop(reader);

    // ureq already fails a read when the connection closes before Content-Length bytes;
    // this is the belt to that pair of braces, since a truncated archive must never be
    // mistaken for a whole one.
    if let Some(total) = total
        && done != total
    {
        return Err(failed(format!(
            "body has {done} bytes but Content-Length announced {total}"
        )));
    }
    let actual = hex(&hasher.finalize());
    if !actual.eq_ignore_ascii_case(&spec.md5) {
        return Err(DataError::Checksum {
            path: path.to_path_buf(),
            expected: spec.md5.clone(),
            actual,
        });
    }

    // Data on disk before the name points at it, so a crash never leaves a torn file
    // under the final name.
    tmp.as_file_mut().flush().map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    Ok(done)
}

/// Lower-case hex of a digest.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}
