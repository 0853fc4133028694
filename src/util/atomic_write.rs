//! Writing files so that a reader never sees half of one.
//!
//! Everything annt saves (downloads, reports, presets, exported data) is written to a
//! temporary file in the destination's own directory and renamed over the final name only
//! once it is complete and flushed: a crash, a full disk or a stopped run leaves either
//! the old file or the new one, never a torn one.

use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` atomically (temp file in the same directory + fsync + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Like [`write_atomic`], with a closure that streams the content.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".annt-partial-")
        .tempfile_in(dir)?;
    fill(tmp.as_file_mut())?;
    tmp.as_file_mut().flush()?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_old_file_and_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("report.json");
        write_atomic(&p, b"old").expect("first write");
        let err = write_atomic_with(&p, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&p).expect("read"), b"old");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "temp file left behind: {names:?}");
    }
}
