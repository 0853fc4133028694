//! Where an installed annt finds the files it ships beside the binary.
//!
//! | install | binary | presets |
//! |---|---|---|
//! | source checkout (`cargo run`) | `target/…/annt` | `./presets` (current directory) |
//! | `.deb` (`annt`, `annt-cuda`) | `/usr/bin/annt` | `/usr/share/annt/presets` |
//! | `make install`-style prefix | `PREFIX/bin/annt` | `PREFIX/share/annt/presets` |
//! | macOS `annt.app` | `annt.app/Contents/MacOS/annt` | `annt.app/Contents/Resources/presets` |
//! | Windows (MSI) | `…\annt\annt.exe` | `…\annt\presets` |

use std::path::{Path, PathBuf};

/// The folders holding preset files (`*.toml`), most specific first: `./presets`, then the
/// installed ones found relative to the running binary. Only existing folders are
/// returned, each once; a preset name found in several comes from the first.
pub fn presets_dirs() -> Vec<PathBuf> {
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe()
        .ok()
        .map(|e| e.canonicalize().unwrap_or(e));
    candidate_dirs(cwd.as_deref(), exe.as_deref())
        .into_iter()
        .filter(|d| d.is_dir())
        .fold(Vec::new(), |mut seen: Vec<PathBuf>, d| {
            let key = d.canonicalize().unwrap_or_else(|_| d.clone());
            if !seen
                .iter()
                .any(|s| s.canonicalize().unwrap_or_else(|_| s.clone()) == key)
            {
                seen.push(d);
            }
            seen
        })
}

/// Every place a preset folder may be, existing or not, in lookup order.
fn candidate_dirs(cwd: Option<&Path>, exe: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(cwd) = cwd {
        dirs.push(cwd.join("presets"));
    }
    if let Some(bin_dir) = exe.and_then(Path::parent) {
        // Windows and portable unpacks: beside the binary.
        dirs.push(bin_dir.join("presets"));
        if let Some(prefix) = bin_dir.parent() {
            // /usr/bin/annt → /usr/share/annt/presets (also /usr/local, ~/.local).
            dirs.push(prefix.join("share").join("annt").join("presets"));
            // annt.app/Contents/MacOS/annt → annt.app/Contents/Resources/presets.
            dirs.push(prefix.join("Resources").join("presets"));
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_layouts_are_looked_up_after_the_current_directory() {
        let dirs = candidate_dirs(Some(Path::new("/home/u")), Some(Path::new("/usr/bin/annt")));
        assert_eq!(
            dirs,
            [
                "/home/u/presets",
                "/usr/bin/presets",
                "/usr/share/annt/presets",
                "/usr/Resources/presets"
            ]
            .map(PathBuf::from)
        );
        let mac = candidate_dirs(
            None,
            Some(Path::new("/Applications/annt.app/Contents/MacOS/annt")),
        );
        assert!(mac.contains(&PathBuf::from(
            "/Applications/annt.app/Contents/Resources/presets"
        )));
    }

    #[test]
    fn only_existing_folders_are_returned() {
        assert!(presets_dirs().iter().all(|d| d.is_dir()));
    }
}
