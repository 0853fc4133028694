//! The desktop window: settings on the left, live curves in the centre, the comparison
//! table at the bottom. The engine runs on a worker thread ([`worker`]); the UI only sends
//! Start/Stop and renders the events it receives, so a frame never waits on training.

//!
//! By concern: [`launch`] opens the window; [`app`] holds the app's state and draws a frame
//! (`logic` polls, `ui` draws, panels return [`action::UiAction`]s applied at the frame's
//! end); [`inbox`] takes in the engine's events and the helper jobs' answers; [`files`]
//! routes native dialogs and reads and writes presets and reports; [`jobs`] are the helper
//! threads; [`panels`] and [`results`] draw the settings and the curves and table.

mod action;
pub mod app;
mod files;
mod inbox;
mod jobs;
pub mod launch;
mod panels;
mod results;
pub mod state;
pub mod worker;

use std::time::Instant;

pub use app::AnntApp;
pub use launch::run;
pub use state::Settings;

/// A line in the window's message area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: MessageKind,
    pub text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Something that happened (a file saved, a warning from the engine).
    Info,
    /// Something that failed: shown in red.
    Error,
}

impl Message {
    pub fn info(text: impl Into<String>) -> Self {
        Self {
            kind: MessageKind::Info,
            text: text.into(),
        }
    }
    pub fn error(text: impl Into<String>) -> Self {
        Self {
            kind: MessageKind::Error,
            text: text.into(),
        }
    }
}

/// A run as the UI shows it.
#[derive(Clone, Debug, Default)]
pub struct RunView {
    pub arm: String,
    pub repeat: usize,
    pub epochs: Vec<annt::bench::result::EpochRecord>,
    pub step: u64,
    pub total_steps: u64,
    pub started: Option<Instant>,
    pub finished: bool,
    pub status: String,
    pub micro_batch: usize,
    /// The latest images/s the engine reported (0 before the first timed step).
    pub images_per_sec: f64,
    pub steps_per_epoch: u64,
    /// One point per progress event: the per-step curves.
    pub points: Vec<annt::bench::result::CurvePoint>,
    /// Which of several opened reports it is from (an index into `AnntApp::compare`); 0
    /// for a live session or a single report.
    pub source: usize,
}

/// A JSON report (by its extension): dropped or given on the command line, it is opened
/// as a report rather than as a data set.
pub fn is_report(path: &std::path::Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// One of several JSON reports opened together to be overlaid.
#[derive(Clone, Debug)]
pub struct Opened {
    /// The machine it was measured on ([`annt::report::fmt::machine_label`]), with the
    /// file's name added where two reports share a machine.
    pub label: String,
    /// The file's name.
    pub file: String,
    pub session: annt::bench::result::SessionResult,
}

#[cfg(test)]
mod tests;
