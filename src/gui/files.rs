//! Paths and files: where a native dialog's answer goes, presets and reports read and
//! written (atomically; a report off the UI thread), a data path or weights file checked.

use super::{AnntApp, Message, Opened, RunView, jobs};

impl AnntApp {
    pub(super) fn dialog_answer(&mut self, kind: jobs::Dialog, paths: Vec<std::path::PathBuf>) {
        use jobs::Dialog;
        // "Open report…" may answer with several files; every other dialog with one.
        let Some(path) = paths.first().cloned() else {
            return;
        };
        match kind {
            Dialog::SaveReport => {
                self.report_path = path.display().to_string();
                self.save_report_to_path();
            }
            Dialog::OpenReport => {
                if paths.len() == 1 {
                    self.report_path = path.display().to_string();
                }
                self.open_reports(&paths);
            }
            Dialog::OpenWeights => {
                self.settings.run_mut().model.weights = Some(path);
                self.check_weights();
            }
            Dialog::OpenData => self.choose_data_path(path),
            Dialog::OpenPreset => {
                self.preset_path = path.display().to_string();
                self.load_preset_from_path();
            }
            Dialog::SavePreset => {
                self.preset_path = path.display().to_string();
                self.save_preset_to_path();
            }
            Dialog::SaveWeights => self.save_selected_weights(&path),
        }
    }
    /// Opens a native dialog unless one is already open.
    pub fn open_dialog(&mut self, kind: jobs::Dialog) {
        if self.dialog.is_none() {
            self.dialog = Some((kind, jobs::dialog(kind)));
        }
    }
    /// Checks the chosen weights file against the chosen model, off the UI thread.
    pub fn check_weights(&mut self) {
        let model = &self.settings.run().model;
        let Some(path) = model.weights.clone().filter(|w| !w.as_os_str().is_empty()) else {
            self.weights_check = None;
            return;
        };
        let spec = annt::models::ModelSpec {
            name: model.name.clone(),
            classes: self
                .preview
                .as_ref()
                .map_or(10, |p| p.summary.classes.len()),
            resolution: model.resolution,
            seed: 0,
        };
        self.weights_check = None;
        self.weights_job = Some(jobs::check_weights(spec, path));
    }
    /// Loads the preset at `preset_path` into the settings.
    pub fn load_preset_from_path(&mut self) {
        let path = std::path::PathBuf::from(self.preset_path.trim());
        match annt::config::Preset::load(&path) {
            Ok(p) => {
                self.settings.apply_preset(&p);
                self.messages
                    .push(Message::info(format!("preset loaded: {}", path.display())));
            }
            Err(e) => self.messages.push(Message::error(e.to_string())),
        }
    }
    /// Saves the current settings as a preset file at `preset_path` (atomically).
    pub fn save_preset_to_path(&mut self) {
        let path = std::path::PathBuf::from(self.preset_path.trim());
        let result = self
            .settings
            .plan()
            .map_err(|e| e.to_string())
            .and_then(|plan| {
                let mut preset = plan.preset;
                if let Some(stem) = path.file_stem() {
                    preset.name = stem.to_string_lossy().into_owned();
                }
                let text = preset.to_toml().map_err(|e| e.to_string())?;
                annt::util::atomic_write::write_atomic(&path, text.as_bytes())
                    .map_err(|e| format!("{}: {e}", path.display()))
            });
        match result {
            Ok(()) => self
                .messages
                .push(Message::info(format!("preset saved: {}", path.display()))),
            Err(e) => self
                .messages
                .push(Message::error(format!("cannot save the preset: {e}"))),
        }
    }
    /// Loads the JSON report at `report_path` into the plots and the table; several paths
    /// separated by `;` are overlaid (a path that itself contains `;` and exists is one).
    pub fn open_report_from_path(&mut self) {
        let text = self.report_path.trim();
        let paths: Vec<std::path::PathBuf> = if std::path::Path::new(text).exists() {
            vec![text.into()]
        } else {
            text.split(';')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from)
                .collect()
        };
        self.open_reports(&paths);
    }

    /// Paths dropped on the window or given on the command line: JSON reports are opened
    /// (several overlaid); anything else is a data set, the first path.
    pub fn open_paths(&mut self, paths: Vec<std::path::PathBuf>) {
        if !paths.is_empty() && paths.iter().all(|p| super::is_report(p)) {
            self.open_reports(&paths);
        } else if let Some(path) = paths.into_iter().next() {
            self.choose_data_path(path);
        }
    }

    /// Opens JSON reports: one is shown as if it had just run; two or more are overlaid,
    /// each labelled with the machine it was measured on. A file that cannot be read is
    /// named in an error and the others are still opened.
    pub fn open_reports(&mut self, paths: &[std::path::PathBuf]) {
        let mut opened: Vec<Opened> = Vec::new();
        for path in paths {
            match annt::report::read_json(path) {
                Ok(s) => opened.push(Opened {
                    label: annt::report::fmt::machine_label(&s),
                    file: path.file_name().map_or_else(
                        || path.display().to_string(),
                        |n| n.to_string_lossy().into_owned(),
                    ),
                    session: s,
                }),
                Err(e) => self.messages.push(Message::error(format!(
                    "{e} (give the path of a .json report)"
                ))),
            }
        }
        if paths.is_empty() {
            self.messages
                .push(Message::error("give the path of a .json report"));
        }
        match opened.len() {
            0 => {}
            1 => {
                let o = opened.remove(0);
                self.show_session(o.session, &o.file);
                self.messages
                    .push(Message::info(format!("report opened: {}", o.file)));
            }
            n => {
                // Two reports of one machine: the file names tell them apart.
                for i in 0..n {
                    if opened
                        .iter()
                        .enumerate()
                        .any(|(j, o)| j != i && o.label == opened[i].label)
                    {
                        opened[i].label = format!("{} ({})", opened[i].label, opened[i].file);
                    }
                }
                self.show_session(opened[0].session.clone(), &opened[0].file);
                self.runs = opened
                    .iter()
                    .enumerate()
                    .flat_map(|(i, o)| {
                        run_views(&o.session, &o.file)
                            .into_iter()
                            .map(move |mut v| {
                                v.source = i;
                                v
                            })
                    })
                    .collect();
                self.messages.push(Message::info(format!(
                    "{n} reports overlaid: {}",
                    opened
                        .iter()
                        .map(|o| format!("{} ({})", o.label, o.file))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
                self.compare = opened;
            }
        }
    }

    /// Puts a finished (or recovered) session in the curves and the table, as if it had just
    /// run; `source` says where it came from.
    fn show_session(&mut self, s: annt::bench::result::SessionResult, source: &str) {
        self.compare.clear();
        self.runs = run_views(&s, source);
        self.finished = s.runs.clone();
        self.session = Some(s);
    }

    /// Reopens the recorded session `id` (`engine::journal`): finished, or as far as it got.
    pub fn open_session(&mut self, id: &str) {
        let Some(root) = self.sessions_root.clone() else {
            self.messages
                .push(Message::error("sessions are not recorded on this system"));
            return;
        };
        match annt::engine::journal::open(&root, id) {
            Ok(r) => {
                let runs = r.session.runs.len();
                self.show_session(r.session, &format!("session {id}"));
                self.messages.push(Message::info(if r.finished {
                    format!("session {id} reopened")
                } else {
                    format!("session {id} reopened: interrupted after {runs} run(s)")
                }));
            }
            Err(e) => self.messages.push(Message::error(e.to_string())),
        }
    }
    /// Validates a dropped or chosen data path off the UI thread; it becomes the data
    /// choice only if it opens.
    pub fn choose_data_path(&mut self, path: std::path::PathBuf) {
        self.data_summary = None;
        let mut data = self.settings.data_config();
        data.source = annt::config::DataSource::Path(path.clone());
        self.data_check = Some((jobs::preview(data), Some(path.display().to_string())));
    }
    /// Writes the session report to `report_path` (format from the extension, atomically)
    /// on a helper thread; the message comes when it is done.
    pub fn save_report_to_path(&mut self) {
        let Some(session) = &self.session else {
            self.messages
                .push(Message::error("no finished session to save yet"));
            return;
        };
        if self.report_job.is_some() {
            self.messages
                .push(Message::info("a report is still being written"));
            return;
        }
        let path = std::path::PathBuf::from(self.report_path.trim());
        self.report_job = Some(jobs::write_report(session.clone(), path));
    }

    /// The trained weights of the selected arm's last finished run, if they were kept.
    pub fn selected_weights(&self) -> Option<std::path::PathBuf> {
        let session = self.session.as_ref().or(self.live.as_ref())?;
        let arm = self
            .selected_arm
            .clone()
            .or_else(|| session.runs.first().map(|r| r.arm.clone()))?;
        session
            .runs
            .iter()
            .rev()
            .find(|r| r.arm == arm)
            .and_then(|r| r.weights_file.clone())
    }

    /// Copies the selected arm's kept weights to `to` (atomically: nothing half-written is
    /// left under that name).
    pub fn save_selected_weights(&mut self, to: &std::path::Path) {
        let Some(from) = self.selected_weights() else {
            self.messages.push(Message::error(
                "no trained weights were kept for this arm (turn on \"Keep each run's trained weights\" before Start)",
            ));
            return;
        };
        let result = std::fs::read(&from)
            .map_err(|e| format!("{}: {e}", from.display()))
            .and_then(|bytes| {
                annt::util::atomic_write::write_atomic(to, &bytes)
                    .map_err(|e| format!("{}: {e}", to.display()))
            });
        self.messages.push(match result {
            Ok(()) => Message::info(format!("trained weights saved: {}", to.display())),
            Err(e) => Message::error(format!("cannot save the weights: {e}")),
        });
    }
}

/// A recorded session's runs as the curves show them.
fn run_views(s: &annt::bench::result::SessionResult, source: &str) -> Vec<RunView> {
    s.runs
        .iter()
        .map(|r| RunView {
            arm: r.arm.clone(),
            repeat: r.repeat,
            epochs: r.epochs.clone(),
            step: r.optimizer_steps,
            total_steps: r.optimizer_steps,
            started: None,
            finished: true,
            status: format!("{} (from {source})", annt::report::fmt::status(r.status)),
            micro_batch: r.micro_batch,
            images_per_sec: r.timing.images_per_sec,
            steps_per_epoch: r.optimizer_steps_per_epoch,
            points: r.curve.clone(),
            source: 0,
        })
        .collect()
}
