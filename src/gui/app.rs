//! The app's state and one frame: `logic` takes in events and job answers, `ui` draws the
//! panels and then applies what they asked for ([`super::action`]).

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use annt::bench::result::{RunResult, SessionResult};

use super::worker::Worker;
use super::{Message, RunView, Settings, action, jobs, panels, results};

/// The whole app: persisted settings plus runtime state.
pub struct AnntApp {
    pub settings: Settings,
    pub worker: Option<Worker>,
    pub runs: Vec<RunView>,
    pub session: Option<SessionResult>,
    /// Reports opened together (two or more), overlaid in the curves and side by side in
    /// the tabs; the first is also `session`. Empty otherwise.
    pub compare: Vec<super::Opened>,
    /// Messages for the user (errors in red, with what to do next).
    pub messages: Vec<Message>,
    /// A data set being opened for its summary (a dropped or chosen path, or the current
    /// choice), with the path when it is a drop: a rejected drop keeps the old choice.
    pub data_check: Option<(jobs::PreviewJob, Option<String>)>,
    /// The last check's one-line summary or the reason the data was rejected.
    pub data_summary: Option<Result<String, String>>,
    /// The current data choice's preview (sample images), and what it was made for.
    pub preview: Option<annt::engine::inspect::DataPreview>,
    pub(super) preview_for: Option<annt::config::DataConfig>,
    pub(super) sample_textures: Vec<(String, egui::TextureHandle)>,
    pub download: Option<jobs::Download>,
    /// Trainable parameters per model variant, for `param_classes` outputs.
    pub param_counts: std::collections::HashMap<String, usize>,
    pub(super) param_classes: usize,
    pub(super) param_job: Option<jobs::ParamJob>,
    pub weights_check: Option<jobs::WeightsResult>,
    /// A report being written (its path, or why it could not be).
    pub(super) report_job: Option<Receiver<Result<std::path::PathBuf, annt::report::ReportError>>>,
    pub(super) weights_job: Option<Receiver<jobs::WeightsResult>>,
    /// A native file dialog that is open, and what its answer is for.
    pub(super) dialog: Option<(jobs::Dialog, Receiver<Option<Vec<std::path::PathBuf>>>)>,
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
    /// The curves' x axis.
    pub x_axis: super::results::XAxis,
    /// Exponential smoothing of the per-step loss curve, 0 (none) to 0.99 (TensorBoard's
    /// weight, debiased so the start is not pulled towards zero).
    pub smoothing: f64,
    /// The bottom panel's tab: table, verdict or confusion matrix.
    pub bottom_tab: super::results::BottomTab,
    /// The CUDA device could not be used: the window offers the CPU.
    pub cpu_offer: bool,
    /// When Stop was pressed, while the session winds down.
    pub stopping_since: Option<Instant>,
    /// The CUDA devices (listed once, at start), or why there are none.
    pub gpus: Result<Vec<annt::util::gpu::CudaDevice>, annt::util::gpu::GpuError>,
    /// UI time per frame for the built-in readout (ms, last 600 frames).
    pub frame_ms: std::collections::VecDeque<f32>,
    /// UI time of every frame drawn while the current session runs (at most
    /// [`SESSION_FRAMES`]): summarised in a message and the log when it finishes.
    pub session_frame_ms: Vec<f32>,
    pub(super) title: Option<String>,
    /// When this frame's `logic` began (the frame-time readout covers logic and drawing).
    pub(super) frame_start: Option<Instant>,
    /// Where sessions are recorded (`engine::journal`; `None`: not recorded).
    pub sessions_root: Option<std::path::PathBuf>,
    /// The recorded sessions, read off the UI thread when the Sessions menu opens.
    pub(super) sessions_list: Option<Vec<annt::engine::journal::Listed>>,
    pub(super) sessions_job: Option<Receiver<Vec<annt::engine::journal::Listed>>>,
    /// What the panels asked for during this frame (applied at its end).
    pub(super) actions: Vec<action::UiAction>,
}

/// eframe calls `logic` before every `ui` (and while the window is hidden but a repaint was
/// asked for, e.g. by the worker's wake-up): events keep flowing into the state either way.
impl eframe::App for AnntApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.logic(ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.draw(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.settings);
    }
}

impl AnntApp {
    pub fn new(mut settings: Settings) -> Self {
        let gpus = annt::util::gpu::cuda_devices();
        if let annt::config::DeviceChoice::Cuda(i) = settings.run().device
            && !gpus
                .as_ref()
                .is_ok_and(|g| g.iter().any(|d| d.ordinal == i))
        {
            // Settings saved on a machine with that GPU: this one trains on the CPU.
            settings.run_mut().device = annt::config::DeviceChoice::Cpu;
        }
        Self {
            settings,
            worker: None,
            runs: Vec::new(),
            session: None,
            compare: Vec::new(),
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
            report_job: None,
            dialog: None,
            report_path: "annt-report.html".into(),
            preset_path: "my-preset.toml".into(),
            oom_batch: None,
            finished: Vec::new(),
            live: None,
            sort: results::Sort::PLAN,
            selected_arm: None,
            x_axis: Default::default(),
            smoothing: 0.6,
            bottom_tab: Default::default(),
            cpu_offer: false,
            stopping_since: None,
            gpus,
            frame_ms: Default::default(),
            session_frame_ms: Vec::new(),
            title: None,
            actions: Vec::new(),
            sessions_root: annt::engine::journal::default_root(),
            sessions_list: None,
            sessions_job: None,
            frame_start: None,
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
            Ok(plan) => self.start_plan(plan, None, ctx),
            Err(e) => self
                .messages
                .push(Message::error(format!("cannot start: {e}"))),
        }
    }
    /// Continues the recorded session `id`: its finished runs are kept, the one that was in
    /// flight continues from its last checkpoint, the rest run.
    pub fn resume_session(&mut self, id: &str, ctx: &egui::Context) {
        if self.is_running() {
            return;
        }
        let Some(root) = self.sessions_root.clone() else {
            return;
        };
        match annt::engine::journal::open(&root, id) {
            Ok(r) => {
                let resume = annt::engine::session::Resume::from(&r);
                self.start_plan(r.plan, Some(resume), ctx);
                self.messages
                    .push(Message::info(format!("resuming session {id}")));
            }
            Err(e) => self.messages.push(Message::error(e.to_string())),
        }
    }
    /// Starts the worker on `plan` (a new session, or `resume`d), clearing the last one.
    fn start_plan(
        &mut self,
        plan: annt::bench::plan::Plan,
        resume: Option<annt::engine::session::Resume>,
        ctx: &egui::Context,
    ) {
        self.runs.clear();
        self.session_frame_ms.clear();
        self.stopping_since = None;
        self.session = None;
        self.compare.clear();
        self.messages.clear();
        self.finished.clear();
        self.live = None;
        self.oom_batch = None;
        let ctx = ctx.clone();
        let options = annt::engine::SessionOptions {
            save_weights: self
                .settings
                .keep_weights
                .then(session_weights_folder)
                .flatten(),
            // Recorded as it goes (`annt sessions list` shows it afterwards).
            journal: self.sessions_root.clone(),
            resume,
            ..Default::default()
        };
        self.worker = Some(Worker::start(
            plan,
            options,
            Box::new(move || ctx.request_repaint()),
        ));
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
    /// After an out-of-memory failure: split the micro-batch exactly (half of an even one;
    /// see [`annt::config::split_micro_batch`]) with as many times the accumulation in
    /// every arm, so each arm's effective batch is unchanged, and start again.
    pub fn retry_with_smaller_micro_batch(&mut self, ctx: &egui::Context) {
        let train = &mut self.settings.run_mut().train;
        let Some((smaller, factor)) = annt::config::split_micro_batch(train.batch_size) else {
            return;
        };
        train.batch_size = smaller;
        train.memory_split = train.memory_split.max(1) * factor;
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
    /// One frame as eframe runs it, [`Self::logic`] then [`Self::draw`] (what the kittest
    /// tests drive).
    #[cfg(test)]
    pub fn show(&mut self, ui: &mut egui::Ui) {
        self.logic(ui.ctx());
        self.draw(ui);
    }

    /// Between frames' drawing: engine events and job answers in, the title kept current.
    /// Draws nothing.
    pub fn logic(&mut self, ctx: &egui::Context) {
        self.frame_start = Some(Instant::now());
        self.poll();
        let title = format!(
            "annt — {} · {}",
            self.settings.data_label(),
            self.settings.run().model.name
        );
        if self.title.as_deref() != Some(title.as_str()) {
            ctx.send_viewport_cmd(egui::ViewportCommand::Title(title.clone()));
            self.title = Some(title);
        }
    }

    /// Draws the window; what the panels ask for is applied after the layout.
    pub fn draw(&mut self, ui: &mut egui::Ui) {
        let frame_start = self.frame_start.take().unwrap_or_else(Instant::now);
        let dropped: Vec<std::path::PathBuf> = ui.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        if !dropped.is_empty() {
            self.act(action::UiAction::OpenPaths(dropped));
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
        self.apply_actions(ui.ctx());
        if self.is_running()
            || self.data_check.is_some()
            || self.download.is_some()
            || self.dialog.is_some()
            || self.param_job.is_some()
            || self.weights_job.is_some()
            || self.report_job.is_some()
        {
            ui.ctx().request_repaint_after(Duration::from_millis(100));
        }
        // UI work per frame (draining events + layout), what must stay under 16 ms.
        self.frame_ms
            .push_back(frame_start.elapsed().as_secs_f32() * 1000.0);
        if self.frame_ms.len() > 600 {
            self.frame_ms.pop_front();
        }
        if self.is_running() && self.session_frame_ms.len() < SESSION_FRAMES {
            self.session_frame_ms
                .push(frame_start.elapsed().as_secs_f32() * 1000.0);
        }
    }
}

/// Frames a session's frame-time summary keeps (at 10 frames/s, almost 3 hours).
pub const SESSION_FRAMES: usize = 100_000;

/// p50 and p99 of frame times (ms), `None` for fewer than 10 frames.
pub fn percentiles(ms: &[f32]) -> Option<(f32, f32)> {
    if ms.len() < 10 {
        return None;
    }
    let mut v = ms.to_vec();
    v.sort_by(f32::total_cmp);
    Some((v[v.len() / 2], v[(v.len() * 99) / 100]))
}

/// A new folder for this session's trained weights: `<data dir>/annt/weights/session-<unix
/// seconds>/` (created by the engine when the first run finishes); `None` where the system
/// has no data folder.
fn session_weights_folder() -> Option<annt::engine::SaveWeights> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = annt::data::download::default_data_dir()?
        .join("weights")
        .join(format!("session-{secs}"));
    Some(annt::engine::SaveWeights::Folder(dir))
}
