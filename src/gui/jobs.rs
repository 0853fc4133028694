//! Work the window hands to short-lived helper threads so a frame never waits: the library's
//! [`annt::engine::inspect`] calls (a data set's preview, CIFAR downloads, parameter counts,
//! a weights check) and native file dialogs (which may block on the desktop portal). Each
//! job answers once over a channel that the UI polls every frame.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, channel};

use annt::config::DataConfig;
use annt::data::DataError;
use annt::data::download::CifarVariant;
use annt::engine::inspect::{self, DataPreview, DownloadRequest};
use annt::engine::{EngineError, SessionOptions};
use annt::models::ModelSpec;

/// Runs `f` on a helper thread; its answer arrives on the returned channel.
pub fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Receiver<T> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

/// A data preview on its way.
pub type PreviewJob = Receiver<Result<DataPreview, EngineError>>;

/// At most this many classes get a sample image (CIFAR-100 would fill the panel).
pub const SAMPLE_CLASSES: usize = 20;

/// Opens `data` as a run would ([`inspect::preview`]) off the UI thread.
pub fn preview(data: DataConfig) -> PreviewJob {
    spawn(move || inspect::preview(&data, &SessionOptions::default(), SAMPLE_CLASSES))
}

/// How a download ended, in the window's words.
pub type DownloadResult = Result<String, String>;

/// A CIFAR download in progress: byte counters for the progress bar, and a stop flag.
pub struct Download {
    pub what: &'static str,
    pub done: Arc<AtomicU64>,
    /// 0 until the server has said how long the file is.
    pub total: Arc<AtomicU64>,
    pub stop: Arc<AtomicBool>,
    pub result: Receiver<DownloadResult>,
}

impl Download {
    /// Downloads CIFAR-10 or -100 (binary version) into annt's data folder, where runs
    /// look for it ([`inspect::download`]: MD5 verified, nothing partial left behind,
    /// `ANNT_CIFAR_MIRROR` honoured).
    pub fn start(variant: CifarVariant) -> Self {
        let what = match variant {
            CifarVariant::Cifar10 => "CIFAR-10",
            CifarVariant::Cifar100 => "CIFAR-100",
        };
        let done = Arc::new(AtomicU64::new(0));
        let total = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, t, s) = (done.clone(), total.clone(), stop.clone());
        let result = spawn(move || {
            let mut progress = |now: u64, len: Option<u64>| {
                d.store(now, Ordering::Relaxed);
                if let Some(len) = len {
                    t.store(len, Ordering::Relaxed);
                }
            };
            let stop = || s.load(Ordering::Relaxed);
            match inspect::download(&DownloadRequest::new(variant), &mut progress, &stop) {
                Ok(o) => Ok(format!(
                    "{what} ready: {} ({:.0} MB, MD5 verified)",
                    o.path.display(),
                    o.bytes as f64 / 1e6
                )),
                Err(DataError::Stopped) => {
                    Err(format!("{what} download cancelled; nothing was kept"))
                }
                Err(e) => Err(format!("{what} download failed: {e}")),
            }
        });
        Self {
            what,
            done,
            total,
            stop,
            result,
        }
    }

    /// Fraction done, when the length is known.
    pub fn fraction(&self) -> Option<f32> {
        let total = self.total.load(Ordering::Relaxed);
        (total > 0).then(|| self.done.load(Ordering::Relaxed) as f32 / total as f32)
    }
}

/// Parameter counts on their way.
pub type ParamJob = Receiver<Result<Vec<(&'static str, usize)>, annt::models::ModelError>>;

/// Trainable parameters of every model variant for `classes` outputs.
pub fn param_counts(classes: usize) -> ParamJob {
    spawn(move || inspect::param_counts(classes))
}

/// A weights check's answer: what was loaded, in words, or why the file does not fit.
pub type WeightsResult = Result<String, annt::models::ModelError>;

/// Loads `path` into the chosen model as a run would, and says what happened.
pub fn check_weights(spec: ModelSpec, path: PathBuf) -> Receiver<WeightsResult> {
    spawn(move || inspect::check_weights(&spec, &path).map(|r| r.describe(&path, &spec)))
}

/// The kinds of native dialog the window opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialog {
    SaveReport,
    OpenReport,
    OpenWeights,
    OpenData,
    OpenPreset,
    SavePreset,
    /// Where to copy the selected arm's trained weights.
    SaveWeights,
}

/// Opens a native dialog; `None` arrives when it is cancelled or when no dialog could be
/// shown (no portal, no zenity): the window's path fields remain.
///
/// The dialog is created here, on the caller's thread — the UI thread, which is the main
/// thread (macOS requires dialogs to be spawned there) — and only awaited on a helper
/// thread, so the window keeps drawing while it is open (rfd's "spawn on main, await
/// elsewhere").
pub fn dialog(kind: Dialog) -> Receiver<Option<Vec<PathBuf>>> {
    type Pending =
        std::pin::Pin<Box<dyn std::future::Future<Output = Option<Vec<rfd::FileHandle>>> + Send>>;
    // Every dialog but "Open report…" answers with one file.
    fn one(
        f: impl std::future::Future<Output = Option<rfd::FileHandle>> + Send + 'static,
    ) -> Pending {
        Box::pin(async move { f.await.map(|h| vec![h]) })
    }
    let d = rfd::AsyncFileDialog::new();
    let pending: Pending = match kind {
        Dialog::SaveReport => one(d
            .add_filter("Report", &["html", "md", "csv", "json"])
            .set_file_name("annt-report.html")
            .save_file()),
        // Several reports may be picked at once: they are overlaid.
        Dialog::OpenReport => Box::pin(d.add_filter("JSON report", &["json"]).pick_files()),
        Dialog::OpenWeights => one(d.add_filter("safetensors", &["safetensors"]).pick_file()),
        Dialog::OpenData => one(d.pick_folder()),
        Dialog::OpenPreset => one(d.add_filter("Preset", &["toml"]).pick_file()),
        Dialog::SavePreset => one(d
            .add_filter("Preset", &["toml"])
            .set_file_name("my-preset.toml")
            .save_file()),
        Dialog::SaveWeights => one(d
            .add_filter("safetensors", &["safetensors"])
            .set_file_name("trained.safetensors")
            .save_file()),
    };
    spawn(move || {
        pollster::block_on(pending).map(|fs| fs.iter().map(|f| f.path().to_path_buf()).collect())
    })
}

/// Writes a session's report (format from the extension, atomically) off the UI thread: an
/// HTML report of a long ablation is megabytes of text.
pub fn write_report(
    session: annt::bench::result::SessionResult,
    path: PathBuf,
) -> Receiver<Result<PathBuf, annt::report::ReportError>> {
    spawn(move || annt::report::write_report(&session, &path).map(|_| path))
}
