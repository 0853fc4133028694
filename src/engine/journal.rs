//! Crash-safe session records: every session gets a folder holding its plan and a journal
//! of what finished, one JSON record per line, each written and `fsync`ed as it happens, so
//! a closed window, a crash, a kill or a power cut loses at most the run in flight.
//!
//! `<root>/<unix seconds>-<preset name>/plan.json` is written atomically before the first
//! run; `events.jsonl` gets a `started` record (the session's header: environment, arms,
//! order seed), one `run` record per run as it ends (its whole result, failed runs too) and
//! a `finished` record. [`open`] rebuilds the session from them — as it was when it ended, or
//! as far as it got — tolerating a torn last line (a write cut off by the crash).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bench::plan::Plan;
use crate::bench::result::{RunResult, SessionResult};

pub const PLAN_FILE: &str = "plan.json";
pub const EVENTS_FILE: &str = "events.jsonl";

/// Where sessions are recorded when nothing else is said: `ANNT_SESSIONS_DIR`, else
/// `sessions/` in annt's data folder.
pub fn default_root() -> Option<PathBuf> {
    std::env::var_os("ANNT_SESSIONS_DIR")
        .map(PathBuf::from)
        .or_else(|| crate::data::download::default_data_dir().map(|d| d.join("sessions")))
}

/// One line of `events.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "kebab-case")]
pub enum Record {
    /// The session's header (no runs yet).
    Started { session: Box<SessionResult> },
    /// A run that began training (its checkpoints, if any, are in
    /// `checkpoints/r<repeat>-<position>-<arm>/`).
    Begun {
        arm: String,
        repeat: usize,
        /// Position within its repeat (two arms may share a label).
        #[serde(default)]
        order: usize,
    },
    /// A run that ended: finished, stopped part-way or failed. A later record of the same
    /// arm and repeat (the run again, after a resume) replaces it.
    Run { result: Box<RunResult> },
    /// The session was resumed by another process (Unix seconds).
    Resumed { at: u64 },
    /// The whole session as it was reported.
    Finished { session: Box<SessionResult> },
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot write the session journal ({source}): {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read ({source}): {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no such session {id:?} in {}", root.display())]
    NoSession { root: PathBuf, id: String },
    #[error("{}: line {line} is not a journal record ({reason}); the lines before it are intact", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{}: not a plan ({reason})", path.display())]
    BadPlan { path: PathBuf, reason: String },
    #[error("{}: the journal has no session header (it was cut off before the first run)", path.display())]
    NoHeader { path: PathBuf },
}

/// An open journal, appending.
pub struct Journal {
    dir: PathBuf,
    file: std::fs::File,
}

impl Journal {
    /// A new session folder under `root` with the plan in it.
    pub fn create(root: &Path, plan: &Plan) -> Result<Self, JournalError> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let slug = crate::util::file_safe(&plan.preset.name);
        let mut dir = root.join(format!("{secs}-{slug}"));
        // Two sessions in one second get distinct folders.
        let mut n = 1;
        while dir.exists() {
            n += 1;
            dir = root.join(format!("{secs}-{slug}-{n}"));
        }
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| JournalError::Write { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(write_err(&dir))?;
        let plan_path = dir.join(PLAN_FILE);
        let text = serde_json::to_string_pretty(plan)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .map_err(write_err(&plan_path))?;
        crate::util::atomic_write::write_atomic(&plan_path, text.as_bytes())
            .map_err(|e| std::io::Error::other(e.to_string()))
            .map_err(write_err(&plan_path))?;
        let events = dir.join(EVENTS_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&events)
            .map_err(write_err(&events))?;
        Ok(Self { dir, file })
    }

    /// Opens an existing session's journal to append to it (a resumed session).
    pub fn reopen(dir: &Path) -> Result<Self, JournalError> {
        let events = dir.join(EVENTS_FILE);
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&events)
            .map_err(|source| JournalError::Write {
                path: events.clone(),
                source,
            })?;
        let mut journal = Self {
            dir: dir.to_path_buf(),
            file,
        };
        // A torn last line (the crash cut a write short) ends with a newline now, so the
        // next record starts on a line of its own and the torn one stays the only bad one.
        let text = std::fs::read(&events).map_err(|source| JournalError::Read {
            path: events.clone(),
            source,
        })?;
        if text.last().is_some_and(|&b| b != b'\n') {
            let err = |source| JournalError::Write {
                path: events.clone(),
                source,
            };
            journal.file.write_all(b"\n").map_err(err)?;
            journal.file.sync_data().map_err(err)?;
        }
        Ok(journal)
    }

    /// The session's folder (its name is the session's id).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one record and waits until it is on disk.
    pub fn append(&mut self, record: &Record) -> Result<(), JournalError> {
        let path = self.dir.join(EVENTS_FILE);
        let err = |source| JournalError::Write {
            path: path.clone(),
            source,
        };
        let mut line =
            serde_json::to_string(record).map_err(|e| err(std::io::Error::other(e.to_string())))?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(err)?;
        self.file.sync_data().map_err(err)
    }
}

/// Which run of a session: its arm, repeat and position within the repeat (two arms may
/// share a label, e.g. an A/B whose tuned switches are the baseline's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunKey {
    pub arm: String,
    pub repeat: usize,
    pub order: usize,
}

impl RunKey {
    pub fn of(r: &RunResult) -> Self {
        Self {
            arm: r.arm.clone(),
            repeat: r.repeat,
            order: r.order,
        }
    }
}

/// A session read back from its folder.
#[derive(Clone, Debug)]
pub struct Recovered {
    pub id: String,
    /// The session's folder.
    pub dir: PathBuf,
    pub plan: Plan,
    /// The session as reported when it finished, or assembled from its runs so far.
    pub session: SessionResult,
    /// Whether its `finished` record is there (false: it was interrupted).
    pub finished: bool,
    /// Lines cut off mid-write that were skipped (the last line, or one that a resumed
    /// session closed with a newline), 1-based.
    pub torn_lines: Vec<usize>,
    /// Runs that began but have no `run` record: the one in flight when it stopped.
    pub in_flight: Vec<RunKey>,
}

impl Recovered {
    /// Whether some planned run has not finished: it can be resumed.
    pub fn resumable(&self) -> bool {
        let planned = self.plan.arms().len() * self.plan.repeats.max(1);
        let done = self
            .session
            .runs
            .iter()
            .filter(|r| r.status.counts())
            .count();
        done < planned
    }

    /// A torn write was skipped.
    pub fn torn(&self) -> bool {
        !self.torn_lines.is_empty()
    }
}

/// Reads the session `id` under `root`.
pub fn open(root: &Path, id: &str) -> Result<Recovered, JournalError> {
    let dir = root.join(id);
    if id.is_empty() || id.contains(['/', '\\']) || id.contains("..") || !dir.is_dir() {
        return Err(JournalError::NoSession {
            root: root.to_path_buf(),
            id: id.to_string(),
        });
    }
    let plan_path = dir.join(PLAN_FILE);
    let text = std::fs::read_to_string(&plan_path).map_err(|source| JournalError::Read {
        path: plan_path.clone(),
        source,
    })?;
    let plan: Plan = serde_json::from_str(&text).map_err(|e| JournalError::BadPlan {
        path: plan_path.clone(),
        reason: e.to_string(),
    })?;
    let events = dir.join(EVENTS_FILE);
    let text = std::fs::read_to_string(&events).map_err(|source| JournalError::Read {
        path: events.clone(),
        source,
    })?;
    let complete_tail = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut header = None;
    let mut finished = None;
    let mut runs: Vec<RunResult> = Vec::new();
    let mut begun: Vec<RunKey> = Vec::new();
    let mut torn_lines = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let next_is_resumed = lines.get(i + 1).is_some_and(|l| {
            matches!(
                serde_json::from_str::<Record>(l),
                Ok(Record::Resumed { .. })
            )
        });
        match serde_json::from_str::<Record>(line) {
            Ok(Record::Started { session }) => header = Some(*session),
            Ok(Record::Begun { arm, repeat, order }) => begun.push(RunKey { arm, repeat, order }),
            Ok(Record::Run { result }) => {
                let key = RunKey::of(&result);
                runs.retain(|r| RunKey::of(r) != key);
                begun.retain(|b| *b != key);
                runs.push(*result);
            }
            Ok(Record::Resumed { .. }) => finished = None,
            Ok(Record::Finished { session }) => finished = Some(*session),
            // The last line, cut off before its newline: the write the crash interrupted;
            // or such a line that a resumed session closed before appending its own.
            Err(_) if (i + 1 == lines.len() && !complete_tail) || next_is_resumed => {
                torn_lines.push(i + 1)
            }
            Err(e) => {
                return Err(JournalError::BadLine {
                    path: events.clone(),
                    line: i + 1,
                    reason: e.to_string(),
                });
            }
        }
    }
    let is_finished = finished.is_some();
    let session = match finished {
        Some(s) => s,
        None => {
            let mut s = header.ok_or(JournalError::NoHeader {
                path: events.clone(),
            })?;
            runs.sort_by_key(|r| (r.repeat, r.order));
            s.runs = runs;
            s.summarize();
            s
        }
    };
    Ok(Recovered {
        id: id.to_string(),
        dir,
        plan,
        session,
        finished: is_finished,
        torn_lines,
        in_flight: begun,
    })
}

/// One line of [`list`].
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    pub id: String,
    /// When it started (UTC, from the id's leading Unix seconds), e.g. `2026-12-01 22:51`.
    pub started: String,
    pub preset: String,
    pub runs: usize,
    pub finished: bool,
    /// Some planned run has not finished (interrupted, stopped or failed): `annt bench
    /// --resume` / the window's Resume continue it.
    pub resumable: bool,
    /// Why it could not be read, when it could not.
    pub problem: Option<String>,
}

/// `2026-12-01 22:51` (UTC) from a session id's leading Unix seconds; empty if it has none.
fn started_of(id: &str) -> String {
    let secs = id.split('-').next().and_then(|s| s.parse::<u64>().ok());
    secs.map(|s| {
        let t = crate::util::env::rfc3339_utc(s);
        t.get(..16).unwrap_or(&t).replace('T', " ") + " UTC"
    })
    .unwrap_or_default()
}

/// Every session under `root`, newest first.
pub fn list(root: &Path) -> Result<Vec<Listed>, JournalError> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(JournalError::Read {
                path: root.to_path_buf(),
                source,
            });
        }
    };
    let mut ids: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(PLAN_FILE).exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort_by(|a, b| b.cmp(a));
    Ok(ids
        .into_iter()
        .map(|id| (started_of(&id), id))
        .map(|(started, id)| match open(root, &id) {
            Ok(r) => Listed {
                id,
                started,
                preset: r.plan.preset.name.clone(),
                runs: r.session.runs.len(),
                finished: r.finished,
                resumable: r.resumable(),
                problem: None,
            },
            Err(e) => Listed {
                id,
                started,
                preset: String::new(),
                runs: 0,
                finished: false,
                resumable: false,
                problem: Some(e.to_string()),
            },
        })
        .collect())
}
