//! The desktop window: settings on the left, live curves in the centre, the comparison
//! table at the bottom. The engine runs on a worker thread ([`worker`]); the UI only sends
//! Start/Stop and renders the events it receives, so a frame never waits on training.

mod jobs;
mod panels;
mod results;
pub mod state;
pub mod worker;

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use annt::bench::result::{RunResult, SessionResult};
use annt::engine::Event;
pub use state::Settings;
use worker::{Worker, WorkerMsg};

/// Opens the window (the `annt` binary with no arguments). `initial_path`, a data-set
/// folder or archive from the command line (`Exec=annt %F`), is chosen and validated as a
/// drop would be.
pub fn run(initial_path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let mut viewport = egui::ViewportBuilder::default()
        .with_inner_size([1280.0, 820.0])
        .with_title("annt")
        // Matches the desktop entry's name (annt.desktop), so docks show its icon.
        .with_app_id("annt");
    // The app icon (assets/icons/annt-256.png, rendered from assets/icon.svg), built in.
    let png = include_bytes!("../../assets/icons/annt-256.png");
    match image::load_from_memory_with_format(png, image::ImageFormat::Png) {
        Ok(icon) => {
            let rgba = icon.to_rgba8();
            viewport = viewport.with_icon(egui::IconData {
                width: rgba.width(),
                height: rgba.height(),
                rgba: rgba.into_raw(),
            });
        }
        Err(e) => eprintln!("warning: window icon: {e}"),
    }
    let options = eframe::NativeOptions {
        viewport,
        ..Default::default()
    };
    eframe::run_native(
        "annt",
        options,
        Box::new(move |cc| {
            let settings = cc
                .storage
                .and_then(|s| eframe::get_value::<Settings>(s, eframe::APP_KEY))
                .unwrap_or_default();
            let mut app = AnntApp::new(settings);
            if let Some(path) = initial_path {
                app.choose_data_path(path);
            }
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot open the window ({e}); the command line works without one: `annt --help`"
        )
    })
}

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
}

/// The whole app: persisted settings plus runtime state.
pub struct AnntApp {
    pub settings: Settings,
    pub worker: Option<Worker>,
    pub runs: Vec<RunView>,
    pub session: Option<SessionResult>,
    /// Messages for the user (errors in red, with what to do next).
    pub messages: Vec<Message>,
    /// A data set being opened for its summary (a dropped or chosen path, or the current
    /// choice), with the path when it is a drop: a rejected drop keeps the old choice.
    pub data_check: Option<(jobs::PreviewJob, Option<String>)>,
    /// The last check's one-line summary or the reason the data was rejected.
    pub data_summary: Option<Result<String, String>>,
    /// The current data choice's preview (sample images), and what it was made for.
    pub preview: Option<annt::engine::inspect::DataPreview>,
    preview_for: Option<(state::DataChoice, bool)>,
    sample_textures: Vec<(String, egui::TextureHandle)>,
    pub download: Option<jobs::Download>,
    /// Trainable parameters per model variant, for `param_classes` outputs.
    pub param_counts: std::collections::HashMap<String, usize>,
    param_classes: usize,
    param_job: Option<jobs::ParamJob>,
    pub weights_check: Option<Result<String, String>>,
    weights_job: Option<Receiver<Result<String, String>>>,
    /// A native file dialog that is open, and what its answer is for.
    dialog: Option<(jobs::Dialog, Receiver<Option<std::path::PathBuf>>)>,
    pub report_path: String,
    pub preset_path: String,
    /// The last run failed for want of device memory at this micro-batch: the window
    /// offers a retry with half of it and twice the accumulation.
    pub oom_batch: Option<usize>,
    /// Runs finished so far in this session: the table fills from them live.
    pub finished: Vec<RunResult>,
    pub live: Option<SessionResult>,
    /// Table sort: column and descending.
    pub sort: results::Sort,
    /// The arm whose confusion matrix is shown.
    pub selected_arm: Option<String>,
    /// Curves against wall time instead of epochs.
    pub x_wall_time: bool,
    /// The CUDA device could not be used: the window offers the CPU.
    pub cpu_offer: bool,
    /// When Stop was pressed, while the session winds down.
    pub stopping_since: Option<Instant>,
    /// The CUDA devices (listed once, at start), or why there are none.
    pub gpus: Result<Vec<annt::util::gpu::CudaDevice>, String>,
    /// UI time per frame for the built-in readout (ms, last 600 frames).
    pub frame_ms: std::collections::VecDeque<f32>,
    title: Option<String>,
}

impl AnntApp {
    pub fn new(mut settings: Settings) -> Self {
        let gpus = annt::util::gpu::cuda_devices();
        if let annt::config::DeviceChoice::Cuda(i) = settings.device
            && !gpus
                .as_ref()
                .is_ok_and(|g| g.iter().any(|d| d.ordinal == i))
        {
            // Settings saved on a machine with that GPU: this one trains on the CPU.
            settings.device = annt::config::DeviceChoice::Cpu;
        }
        Self {
            settings,
            worker: None,
            runs: Vec::new(),
            session: None,
            messages: Vec::new(),
            data_check: None,
            data_summary: None,
            preview: None,
            preview_for: None,
            sample_textures: Vec::new(),
            download: None,
            param_counts: Default::default(),
            param_classes: 0,
            param_job: None,
            weights_check: None,
            weights_job: None,
            dialog: None,
            report_path: "annt-report.html".into(),
            preset_path: "my-preset.toml".into(),
            oom_batch: None,
            finished: Vec::new(),
            live: None,
            sort: results::Sort::PLAN,
            selected_arm: None,
            x_wall_time: false,
            cpu_offer: false,
            stopping_since: None,
            gpus,
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
                self.stopping_since = None;
                self.session = None;
                self.messages.clear();
                self.finished.clear();
                self.live = None;
                self.oom_batch = None;
                let ctx = ctx.clone();
                self.worker = Some(Worker::start(plan, Box::new(move || ctx.request_repaint())));
            }
            Err(e) => self
                .messages
                .push(Message::error(format!("cannot start: {e}"))),
        }
    }

    pub fn stop(&mut self) {
        if let Some(w) = &self.worker
            && !w.finished
        {
            w.stop.stop();
            self.stopping_since.get_or_insert_with(Instant::now);
        }
    }

    /// While a stop is pending: what the window says at once — the engine finishes the
    /// micro-batch it is on (it checks after every one), and about how long that takes at
    /// the run's own measured speed.
    pub fn stopping_message(&self) -> Option<String> {
        self.stopping_since?;
        if !self.is_running() {
            return None;
        }
        let run = self.runs.iter().rev().find(|r| !r.finished);
        let eta = run
            .filter(|r| r.images_per_sec > 0.0 && r.micro_batch > 0)
            .map(|r| r.micro_batch as f64 / r.images_per_sec);
        Some(match eta {
            Some(secs) => format!(
                "Stopping: finishing the current micro-batch (at most about {secs:.1} s at this run's speed). Finished runs are kept."
            ),
            None => "Stopping: finishing the current micro-batch. Finished runs are kept.".into(),
        })
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
        self.poll_jobs();
    }

    /// Answers from helper threads: data checks, downloads, counts, dialogs.
    fn poll_jobs(&mut self) {
        if let Some((rx, dropped)) = &self.data_check
            && let Ok(result) = rx.try_recv()
        {
            let dropped = dropped.clone();
            self.data_check = None;
            match result {
                Ok(p) => {
                    if let Some(path) = dropped {
                        self.settings.data = state::DataChoice::Path(path);
                        self.settings.base = None;
                    }
                    self.preview_for =
                        Some((self.settings.data.clone(), self.settings.coarse_labels));
                    self.data_summary = Some(Ok(p.headline()));
                    self.sample_textures.clear();
                    self.preview = Some(p);
                }
                Err(e) => {
                    let e = e.to_string();
                    if dropped.is_some() {
                        self.messages.push(Message::error(e.clone()));
                    } else {
                        self.preview_for =
                            Some((self.settings.data.clone(), self.settings.coarse_labels));
                        self.preview = None;
                        self.sample_textures.clear();
                    }
                    self.data_summary = Some(Err(e));
                }
            }
        }
        if let Some(d) = &self.download
            && let Ok(result) = d.result.try_recv()
        {
            self.download = None;
            match result {
                Ok(m) => {
                    self.messages.push(Message::info(m));
                    // Opens the new copy if it is the current choice.
                    self.preview_for = None;
                }
                Err(e) => self.messages.push(Message::error(e)),
            }
        }
        if let Some(rx) = &self.param_job
            && let Ok(counts) = rx.try_recv()
        {
            self.param_job = None;
            match counts {
                Ok(counts) => {
                    self.param_counts = counts
                        .into_iter()
                        .map(|(n, c)| (n.to_string(), c))
                        .collect();
                }
                Err(e) => self
                    .messages
                    .push(Message::error(format!("parameter counts: {e}"))),
            }
        }
        if let Some(rx) = &self.weights_job
            && let Ok(r) = rx.try_recv()
        {
            self.weights_job = None;
            self.weights_check = Some(r);
        }
        if let Some((kind, rx)) = &self.dialog
            && let Ok(choice) = rx.try_recv()
        {
            let kind = *kind;
            self.dialog = None;
            if let Some(path) = choice {
                self.dialog_answer(kind, path);
            }
        }
        // Keep the preview and the parameter counts in step with the settings.
        let current = (self.settings.data.clone(), self.settings.coarse_labels);
        if self.data_check.is_none() && self.preview_for.as_ref() != Some(&current) {
            self.check_current_data();
        }
        let classes = self
            .preview
            .as_ref()
            .map_or(10, |p| p.summary.classes.len());
        if self.param_job.is_none() && self.param_classes != classes {
            self.param_classes = classes;
            self.param_job = Some(jobs::param_counts(classes));
        }
    }

    fn check_current_data(&mut self) {
        self.preview_for = Some((self.settings.data.clone(), self.settings.coarse_labels));
        let data = self.settings.data_config();
        self.data_check = Some((jobs::preview(data), None));
    }

    fn dialog_answer(&mut self, kind: jobs::Dialog, path: std::path::PathBuf) {
        use jobs::Dialog;
        match kind {
            Dialog::SaveReport => {
                self.report_path = path.display().to_string();
                self.save_report_to_path();
            }
            Dialog::OpenReport => {
                self.report_path = path.display().to_string();
                self.open_report_from_path();
            }
            Dialog::OpenWeights => {
                self.settings.weights = Some(path.display().to_string());
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
        let Some(path) = self
            .settings
            .weights
            .clone()
            .filter(|w| !w.trim().is_empty())
        else {
            self.weights_check = None;
            return;
        };
        let spec = annt::models::ModelSpec {
            name: self.settings.model.clone(),
            classes: self
                .preview
                .as_ref()
                .map_or(10, |p| p.summary.classes.len()),
            resolution: (self.settings.resolution > 0).then_some(self.settings.resolution),
            seed: 0,
        };
        self.weights_check = None;
        self.weights_job = Some(jobs::check_weights(spec, path.trim().into()));
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
        let result = self.settings.plan().and_then(|plan| {
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

    /// Loads a JSON report at `report_path` into the plots and the table.
    pub fn open_report_from_path(&mut self) {
        let path = std::path::PathBuf::from(self.report_path.trim());
        match annt::report::read_json(&path) {
            Ok(s) => {
                self.runs = s
                    .runs
                    .iter()
                    .map(|r| RunView {
                        arm: r.arm.clone(),
                        repeat: r.repeat,
                        epochs: r.epochs.clone(),
                        step: r.optimizer_steps,
                        total_steps: r.optimizer_steps,
                        started: None,
                        finished: true,
                        status: format!(
                            "{} (from {})",
                            annt::report::fmt::status(r.status),
                            path.display()
                        ),
                        micro_batch: r.micro_batch,
                        images_per_sec: r.timing.images_per_sec,
                    })
                    .collect();
                self.finished = s.runs.clone();
                self.session = Some(s);
                self.messages
                    .push(Message::info(format!("report opened: {}", path.display())));
            }
            Err(e) => self.messages.push(Message::error(format!(
                "{e} (give the path of a .json report)"
            ))),
        }
    }

    /// After an out-of-memory failure: split the micro-batch exactly (half of an even one;
    /// see [`annt::config::split_micro_batch`]) with as many times the accumulation in
    /// every arm, so each arm's effective batch is unchanged, and start again.
    pub fn retry_with_smaller_micro_batch(&mut self, ctx: &egui::Context) {
        let Some((smaller, factor)) = annt::config::split_micro_batch(self.settings.batch) else {
            return;
        };
        self.settings.batch = smaller;
        self.settings.memory_split = self.settings.memory_split.max(1) * factor;
        self.oom_batch = None;
        self.start(ctx);
    }

    /// Textures of the preview's samples, made on first use (on the UI thread).
    pub fn sample_textures(&mut self, ctx: &egui::Context) -> &[(String, egui::TextureHandle)] {
        if self.sample_textures.is_empty()
            && let Some(p) = &self.preview
        {
            self.sample_textures = p
                .samples
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let img = egui::ColorImage::from_rgb([s.width, s.height], &s.rgb);
                    let tex =
                        ctx.load_texture(format!("sample-{i}"), img, egui::TextureOptions::NEAREST);
                    (s.class.clone(), tex)
                })
                .collect();
        }
        &self.sample_textures
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
                micro_batch,
                ..
            }) => self.runs.push(RunView {
                arm,
                repeat,
                total_steps,
                micro_batch,
                started: Some(Instant::now()),
                status: "running".into(),
                ..RunView::default()
            }),
            WorkerMsg::Event(Event::Progress {
                arm,
                repeat,
                step,
                images_per_sec,
                ..
            }) => {
                if let Some(r) = self.run_mut(&arm, repeat) {
                    r.step = step;
                    r.images_per_sec = images_per_sec;
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
                    r.status = annt::report::fmt::status(result.status).to_string();
                }
                self.finished.push(*result);
                let mut live = SessionResult {
                    runs: self.finished.clone(),
                    ..SessionResult::default()
                };
                live.summarize();
                self.live = Some(live);
            }
            WorkerMsg::Event(Event::Warning { message }) => {
                self.messages.push(Message::info(message))
            }
            WorkerMsg::Event(Event::RunFailed {
                arm,
                error,
                out_of_memory,
                micro_batch,
                ..
            }) => {
                if out_of_memory {
                    self.oom_batch = Some(micro_batch);
                }
                if let Some(r) = self.runs.iter_mut().rev().find(|r| r.arm == arm) {
                    r.finished = true;
                    r.status = "failed".into();
                }
                self.messages
                    .push(Message::error(format!("{arm} failed: {error}")))
            }
            WorkerMsg::Event(Event::SessionFinished { result }) => self.session = Some(*result),
            WorkerMsg::Event(Event::SessionStarted { .. }) => {}
            WorkerMsg::Failed(e) => {
                if e.is_device() {
                    self.cpu_offer = true;
                }
                self.messages.push(Message::error(e.to_string()))
            }
            WorkerMsg::Done => {
                if let Some(w) = &mut self.worker {
                    w.finished = true;
                }
            }
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

    /// Writes the session report to `report_path` (format from the extension), atomically.
    pub fn save_report_to_path(&mut self) {
        let Some(session) = &self.session else {
            self.messages
                .push(Message::error("no finished session to save yet"));
            return;
        };
        let path = std::path::PathBuf::from(self.report_path.trim());
        match annt::report::write_report(session, &path) {
            Ok(_) => self
                .messages
                .push(Message::info(format!("report saved: {}", path.display()))),
            Err(e) => self.messages.push(Message::error(format!(
                "{e} — choose another path or extension"
            ))),
        }
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
        // Room for the table and the confusion matrix once there is something to show.
        let has_rows = self.session.is_some() || self.live.is_some();
        egui::Panel::bottom("table")
            .default_size(300.0)
            .min_size(if has_rows { 300.0 } else { 60.0 })
            .resizable(true)
            .show(ui, |ui| results::table_ui(self, ui));
        egui::CentralPanel::default().show(ui, |ui| results::curves_ui(self, ui));
        if self.is_running()
            || self.data_check.is_some()
            || self.download.is_some()
            || self.dialog.is_some()
            || self.param_job.is_some()
            || self.weights_job.is_some()
        {
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
