//! The desktop window: settings on the left, live curves in the centre, the comparison
//! table at the bottom. The engine runs on a worker thread ([`worker`]); the UI only sends
//! Start/Stop and renders the events it receives, so a frame never waits on training.

mod panels;
mod results;
pub mod state;
pub mod worker;

use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use annt::bench::result::SessionResult;
use annt::engine::Event;
pub use state::Settings;
use worker::{Worker, WorkerMsg};

/// Opens the window (the `annt` binary with no arguments).
pub fn run() -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size([1280.0, 820.0])
            .with_title("annt"),
        ..Default::default()
    };
    eframe::run_native(
        "annt",
        options,
        Box::new(|cc| {
            let settings = cc
                .storage
                .and_then(|s| eframe::get_value::<Settings>(s, eframe::APP_KEY))
                .unwrap_or_default();
            Ok(Box::new(AnntApp::new(settings)))
        }),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot open the window ({e}); the command line works without one: `annt --help`"
        )
    })
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
}

/// The whole app: persisted settings plus runtime state.
pub struct AnntApp {
    pub settings: Settings,
    pub worker: Option<Worker>,
    pub runs: Vec<RunView>,
    pub session: Option<SessionResult>,
    /// Messages for the user (errors in red, with what to do next).
    pub messages: Vec<(bool, String)>,
    /// A dropped or chosen data path being validated, and its result.
    pub data_check: Option<Receiver<Result<String, String>>>,
    pub data_summary: Option<Result<String, String>>,
    pub report_path: String,
    pub save_result: Option<Receiver<Option<std::path::PathBuf>>>,
    /// UI time per frame for the built-in readout (ms, last 600 frames).
    pub frame_ms: std::collections::VecDeque<f32>,
    title: Option<String>,
}

impl AnntApp {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            worker: None,
            runs: Vec::new(),
            session: None,
            messages: Vec::new(),
            data_check: None,
            data_summary: None,
            report_path: "annt-report.html".into(),
            save_result: None,
            frame_ms: Default::default(),
            title: None,
        }
    }

    pub fn is_running(&self) -> bool {
        self.worker.as_ref().is_some_and(|w| !w.finished)
    }

    /// Starts a session with the current settings.
    pub fn start(&mut self, ctx: &egui::Context) {
        if self.is_running() {
            return;
        }
        match self.settings.plan() {
            Ok(plan) => {
                self.runs.clear();
                self.session = None;
                self.messages.clear();
                let ctx = ctx.clone();
                self.worker = Some(Worker::start(plan, Box::new(move || ctx.request_repaint())));
            }
            Err(e) => self.messages.push((true, format!("cannot start: {e}"))),
        }
    }

    pub fn stop(&mut self) {
        if let Some(w) = &self.worker {
            w.stop.stop();
        }
    }

    /// Drains worker events for at most 8 ms, then polls background checks.
    pub fn poll(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(8);
        let mut msgs = Vec::new();
        if let Some(w) = &self.worker {
            while Instant::now() < deadline {
                match w.rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
        }
        for m in msgs {
            self.apply(m);
        }
        if let Some(rx) = &self.data_check
            && let Ok(result) = rx.try_recv()
        {
            if let Err(e) = &result {
                self.messages.push((true, e.clone()));
            }
            self.data_summary = Some(result);
            self.data_check = None;
        }
        if let Some(rx) = &self.save_result
            && let Ok(choice) = rx.try_recv()
        {
            self.save_result = None;
            if let Some(path) = choice {
                self.report_path = path.display().to_string();
                self.save_report_to_path();
            }
        }
    }

    fn run_mut(&mut self, arm: &str, repeat: usize) -> Option<&mut RunView> {
        self.runs
            .iter_mut()
            .find(|r| r.arm == arm && r.repeat == repeat)
    }

    fn apply(&mut self, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Event(Event::RunStarted {
                arm,
                repeat,
                total_steps,
                ..
            }) => self.runs.push(RunView {
                arm,
                repeat,
                total_steps,
                started: Some(Instant::now()),
                status: "running".into(),
                ..RunView::default()
            }),
            WorkerMsg::Event(Event::Progress {
                arm, repeat, step, ..
            }) => {
                if let Some(r) = self.run_mut(&arm, repeat) {
                    r.step = step;
                }
            }
            WorkerMsg::Event(Event::EpochFinished {
                arm,
                repeat,
                record,
            }) => {
                if let Some(r) = self.run_mut(&arm, repeat) {
                    r.step = record.optimizer_steps;
                    r.epochs.push(record);
                }
            }
            WorkerMsg::Event(Event::RunFinished { result }) => {
                if let Some(r) = self.run_mut(&result.arm, result.repeat) {
                    r.finished = true;
                    r.status = format!("{:?}", result.status).to_lowercase();
                }
            }
            WorkerMsg::Event(Event::Warning { message }) => self.messages.push((false, message)),
            WorkerMsg::Event(Event::RunFailed { arm, error, .. }) => {
                self.messages.push((true, format!("{arm} failed: {error}")))
            }
            WorkerMsg::Event(Event::SessionFinished { result }) => self.session = Some(*result),
            WorkerMsg::Event(Event::SessionStarted { .. }) => {}
            WorkerMsg::Failed(e) => self.messages.push((true, e)),
            WorkerMsg::Done => {
                if let Some(w) = &mut self.worker {
                    w.finished = true;
                }
            }
        }
    }

    /// Validates a dropped or chosen data path off the UI thread.
    pub fn choose_data_path(&mut self, path: std::path::PathBuf) {
        self.settings.data = state::DataChoice::Path(path.display().to_string());
        self.data_summary = None;
        let (tx, rx) = channel();
        let options = self.settings.open_options();
        std::thread::spawn(move || {
            let result = annt::data::open(&path, &options)
                .map(|d| {
                    let s = d.summary();
                    format!(
                        "{}: {} classes, {} train / {} test images",
                        d.name,
                        s.classes.len(),
                        s.train,
                        s.test
                    )
                })
                .map_err(|e| format!("{e}"));
            let _ = tx.send(result);
        });
        self.data_check = Some(rx);
    }

    /// Writes the session report to `report_path` (format from the extension), atomically.
    pub fn save_report_to_path(&mut self) {
        let Some(session) = &self.session else {
            self.messages
                .push((true, "no finished session to save yet".into()));
            return;
        };
        let path = std::path::PathBuf::from(self.report_path.trim());
        match annt::report::write_report(session, &path) {
            Ok(_) => self
                .messages
                .push((false, format!("report saved: {}", path.display()))),
            Err(e) => self
                .messages
                .push((true, format!("{e} — choose another path or extension"))),
        }
    }

    /// The native save dialog, on a helper thread (it may wait on the desktop portal).
    pub fn open_save_dialog(&mut self) {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let file = pollster::block_on(
                rfd::AsyncFileDialog::new()
                    .add_filter("Report", &["html", "md", "csv", "json"])
                    .set_file_name("annt-report.html")
                    .save_file(),
            );
            let _ = tx.send(file.map(|f| f.path().to_path_buf()));
        });
        self.save_result = Some(rx);
    }

    /// Everything the window draws, in one `Ui` (also what the kittest tests drive).
    pub fn show(&mut self, ui: &mut egui::Ui) {
        let frame_start = Instant::now();
        self.poll();
        let dropped: Vec<std::path::PathBuf> = ui.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        if let Some(path) = dropped.into_iter().next() {
            self.choose_data_path(path);
        }
        egui::Panel::left("settings")
            .default_size(330.0)
            .resizable(true)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| panels::settings_ui(self, ui));
            });
        egui::Panel::bottom("table")
            .default_size(260.0)
            .resizable(true)
            .show(ui, |ui| results::table_ui(self, ui));
        egui::CentralPanel::default().show(ui, |ui| results::curves_ui(self, ui));
        if self.is_running() || self.data_check.is_some() {
            ui.ctx().request_repaint_after(Duration::from_millis(100));
        }
        // UI work per frame (draining events + layout), what must stay under 16 ms.
        self.frame_ms
            .push_back(frame_start.elapsed().as_secs_f32() * 1000.0);
        if self.frame_ms.len() > 600 {
            self.frame_ms.pop_front();
        }
    }
}

impl eframe::App for AnntApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let title = format!(
            "annt — {} · {}",
            self.settings.data.label(),
            self.settings.model
        );
        if self.title.as_deref() != Some(title.as_str()) {
            ui.ctx()
                .send_viewport_cmd(egui::ViewportCommand::Title(title.clone()));
            self.title = Some(title);
        }
        self.show(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.settings);
    }
}

#[cfg(test)]
mod tests;
