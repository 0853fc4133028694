//! What a click asks for. Panels only record [`UiAction`]s while they draw; the app applies
//! them once the frame is laid out ([`AnntApp::apply_actions`]), as egui's own demo app does:
//! drawing code then never starts threads, runs or dialogs in the middle of a layout pass,
//! and every effect of the UI is in one `match`.

use std::path::PathBuf;

use annt::config::DeviceChoice;
use annt::data::download::CifarVariant;

use super::AnntApp;
use super::jobs::{Dialog, Download};

/// One user request from a panel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UiAction {
    Start,
    Stop,
    /// The GPU could not be used: train on the CPU instead.
    StartOnCpu,
    /// After an out-of-memory failure: half the micro-batch, twice the accumulation.
    RetrySmallerMicroBatch,
    OpenDialog(Dialog),
    /// Check the weights file against the chosen model.
    CheckWeights,
    /// Load the preset at this path (the preset path field is set to it).
    LoadPreset(PathBuf),
    /// Save the settings as a preset at the preset path field.
    SavePreset,
    /// Open the JSON report at the report path field (several, separated by `;`, are
    /// overlaid).
    OpenReport,
    /// Paths dropped on the window ([`AnntApp::open_paths`]): reports, or a data set.
    OpenPaths(Vec<PathBuf>),
    /// Save the session's report at the report path field.
    SaveReport,
    Download(CifarVariant),
    /// Reopen a recorded session by its id.
    OpenSession(String),
    /// Continue a recorded session that did not finish all its runs.
    ResumeSession(String),
}

impl AnntApp {
    /// Records `action` for the end of this frame.
    pub fn act(&mut self, action: UiAction) {
        self.actions.push(action);
    }

    /// Applies the frame's actions in the order they were recorded.
    pub fn apply_actions(&mut self, ctx: &egui::Context) {
        if !self.actions.is_empty() {
            // Their effects show in the next frame: ask for it now, not at the next input.
            ctx.request_repaint();
        }
        for action in std::mem::take(&mut self.actions) {
            match action {
                UiAction::Start => self.start(ctx),
                UiAction::Stop => self.stop(),
                UiAction::StartOnCpu => {
                    self.cpu_offer = false;
                    self.settings.run_mut().device = DeviceChoice::Cpu;
                    self.start(ctx);
                }
                UiAction::RetrySmallerMicroBatch => self.retry_with_smaller_micro_batch(ctx),
                UiAction::OpenDialog(kind) => self.open_dialog(kind),
                UiAction::CheckWeights => self.check_weights(),
                UiAction::LoadPreset(path) => {
                    self.preset_path = path.display().to_string();
                    self.load_preset_from_path();
                }
                UiAction::SavePreset => self.save_preset_to_path(),
                UiAction::OpenReport => self.open_report_from_path(),
                UiAction::OpenPaths(paths) => self.open_paths(paths),
                UiAction::SaveReport => self.save_report_to_path(),
                UiAction::OpenSession(id) => self.open_session(&id),
                UiAction::ResumeSession(id) => self.resume_session(&id, ctx),
                UiAction::Download(variant) => {
                    if self.download.is_none() {
                        self.download = Some(Download::start(variant));
                    }
                }
            }
        }
    }
}
