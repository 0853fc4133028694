//! The window's log file, for launches without a terminal (a desktop entry, Finder, the
//! Start menu) where nobody reads stderr.
//!
//! Where: `$XDG_STATE_HOME/annt/annt.log` (`~/.local/state/annt/annt.log`) on Linux; where
//! the system has no state directory (macOS, Windows) the local data directory
//! (`~/Library/Application Support/annt/annt.log`, `%LOCALAPPDATA%\annt\annt.log`).
//! `ANNT_LOG` overrides the path; `ANNT_LOG=off` turns the file off.
//!
//! What: one line per start (version, arguments), errors, panics (with where they happened,
//! from any thread, also those the window catches and shows) and the exit. The file is
//! appended to; when it has grown past [`MAX_BYTES`] at start it is moved to `annt.log.1`
//! (replacing the previous one), so at most two files of about that size are kept.
//!
//! Logging never fails the program: when the file cannot be opened, messages go to stderr
//! only.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Size past which the log is rotated at the next start.
pub const MAX_BYTES: u64 = 1 << 20;

static FILE: OnceLock<Mutex<Option<File>>> = OnceLock::new();

/// The log file's path (`None` when turned off or no user directory is known).
pub fn log_path() -> Option<PathBuf> {
    match std::env::var_os("ANNT_LOG") {
        Some(v) if v == "off" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => dirs::state_dir()
            .or_else(dirs::data_local_dir)
            .map(|d| d.join("annt").join("annt.log")),
    }
}

/// Opens (and, when large, rotates) the log file, installs the panic hook and writes the
/// start line. Call once, early; later calls only log the start line again.
pub fn init() {
    init_at(log_path());
}

fn init_at(path: Option<PathBuf>) {
    FILE.get_or_init(|| {
        let file = path.and_then(|p| open(&p).ok());
        if file.is_some() {
            install_panic_hook();
        }
        Mutex::new(file)
    });
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    info(&format!(
        "start: annt {} ({}{}), pid {}, arguments {:?}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        if cfg!(feature = "cuda") { ", CUDA" } else { "" },
        std::process::id(),
        args
    ));
}

fn open(path: &std::path::Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_BYTES) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        // A failed rotation only means the file keeps growing; it is still written.
        let _ = std::fs::rename(path, PathBuf::from(old));
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// Logs an informational line (file only).
pub fn info(msg: &str) {
    write_line("INFO", msg, true);
}

/// Logs an error (file only: the caller also prints it to stderr or shows it).
pub fn error(msg: &str) {
    write_line("ERROR", msg, true);
}

/// `wait`: block until other threads have written their line; the panic hook does not wait
/// (the panicking thread may be the one holding the lock).
fn write_line(level: &str, msg: &str, wait: bool) {
    let Some(lock) = FILE.get() else { return };
    let mut guard = if wait {
        // A panic while the lock was held must not silence later lines.
        lock.lock().unwrap_or_else(|p| p.into_inner())
    } else {
        // Give other threads up to ~0.2 s to finish their line, then drop this one rather
        // than deadlock.
        let mut tries = 0;
        loop {
            match lock.try_lock() {
                Ok(g) => break g,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) if tries < 200 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(std::sync::TryLockError::WouldBlock) => return,
            }
        }
    };
    if let Some(f) = guard.as_mut() {
        let line = format!("{} {level} {msg}\n", timestamp(SystemTime::now()));
        // Best effort: a full disk must not turn into a second error.
        let _ = f.write_all(line.as_bytes()).and_then(|()| f.flush());
    }
}

/// Logs every panic, then runs the previous hook (which prints to stderr as before).
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-text panic payload)".into());
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_else(|| "unknown location".into());
        let msg = format!("panic in thread '{name}' at {location}: {payload}");
        write_line("PANIC", &msg, false);
        previous(info);
    }));
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) for a time after 1970.
pub fn timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_date(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil_date(days: u64) -> (u64, u64, u64) {
    // Count from 0000-03-01 so that the leap day is the last day of a "year"; eras are the
    // 400-year cycles (146 097 days) after which the calendar repeats.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year
    let mp = (5 * doy + 2) / 153; // March = 0
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = era * 400 + yoe + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The only test that initialises the (process-wide) log.
    #[test]
    fn start_errors_and_panics_from_other_threads_are_logged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/annt.log");
        init_at(Some(path.clone()));
        error("something failed");
        let worker = std::thread::Builder::new()
            .name("worker".into())
            .spawn(|| panic!("boom {}", 42))
            .expect("spawn");
        assert!(worker.join().is_err());
        let text = std::fs::read_to_string(&path).expect("log");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains(" INFO start: annt "), "{text}");
        assert!(lines[1].ends_with(" ERROR something failed"), "{text}");
        assert!(
            lines[2].contains(" PANIC panic in thread 'worker' at src/app_log.rs:"),
            "{text}"
        );
        assert!(lines[2].ends_with(": boom 42"), "{text}");
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |s| timestamp(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(1_798_761_600), "2027-01-01T00:00:00Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
    }
}
