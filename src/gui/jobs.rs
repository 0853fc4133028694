//! Work the window hands to short-lived helper threads so a frame never waits: opening a
//! data set for its summary and sample images, downloading CIFAR, counting parameters,
//! checking a weights file, and native file dialogs (which may block on the desktop portal).
//! Each job answers once over a channel that the UI polls every frame.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, channel};

use annt::config::DataConfig;
use annt::data::download::{self as dl, ArchiveFormat, CifarVariant};
use annt::engine::SessionOptions;
use annt::models::{Model, ModelSpec, VARIANTS};

/// Runs `f` on a helper thread; its answer arrives on the returned channel.
pub fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Receiver<T> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

/// One training image per class, for the grid in the Data section.
#[derive(Clone, Debug)]
pub struct Sample {
    pub class: String,
    pub rgb: Vec<u8>,
    pub width: usize,
    pub height: usize,
}

/// What the Data section shows of a data set.
#[derive(Clone, Debug)]
pub struct DataPreview {
    /// "name (format): N classes, a train / b test images, h×w".
    pub summary: String,
    pub classes: usize,
    pub samples: Vec<Sample>,
}

/// A data preview on its way.
pub type PreviewJob = Receiver<Result<DataPreview, String>>;

/// At most this many classes get a sample image (CIFAR-100 would fill the panel).
pub const SAMPLE_CLASSES: usize = 20;

/// Opens `data` as a run would (same lookup of downloaded CIFAR copies) and summarises it.
pub fn preview(data: DataConfig) -> PreviewJob {
    spawn(move || {
        let d = annt::engine::session::open_data(&data, &SessionOptions::default())
            .map_err(|e| e.to_string())?;
        let s = d.summary();
        let set = &d.train;
        let mut samples = Vec::new();
        for (class, name) in d.classes.iter().enumerate().take(SAMPLE_CLASSES) {
            if let Some(i) = set.labels.iter().position(|&l| l as usize == class) {
                // Stored planar (CHW, as the model reads it); egui wants RGBRGB….
                let planar = set.image(i);
                let plane = set.width * set.height;
                let rgb = (0..plane)
                    .flat_map(|p| (0..3).map(move |c| planar[c * plane + p]))
                    .collect();
                samples.push(Sample {
                    class: name.clone(),
                    rgb,
                    width: set.width,
                    height: set.height,
                });
            }
        }
        Ok(DataPreview {
            summary: format!(
                "{} ({}): {} classes, {} train / {} test images, {}×{} px",
                d.name,
                s.format.label(),
                s.classes.len(),
                s.train,
                s.test,
                s.height,
                s.width
            ),
            classes: s.classes.len(),
            samples,
        })
    })
}

/// A CIFAR download in progress: byte counters for the progress bar, and a stop flag.
pub struct Download {
    pub what: &'static str,
    pub done: Arc<AtomicU64>,
    /// 0 until the server has said how long the file is.
    pub total: Arc<AtomicU64>,
    pub stop: Arc<AtomicBool>,
    pub result: Receiver<Result<String, String>>,
}

impl Download {
    /// Downloads CIFAR-10 or -100 (binary version) into annt's data folder, where runs
    /// look for it; the MD5 is verified and nothing partial is left behind (see
    /// [`dl::download`]). `ANNT_CIFAR_MIRROR` replaces the official host.
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
            let mut spec = dl::official(variant, ArchiveFormat::Binary);
            if let Ok(base) = std::env::var("ANNT_CIFAR_MIRROR") {
                spec = dl::with_mirror(spec, &base);
            }
            let dir = dl::default_data_dir()
                .ok_or("no user data folder is known on this system".to_string())?;
            let mut progress = |now: u64, len: Option<u64>| {
                d.store(now, Ordering::Relaxed);
                if let Some(len) = len {
                    t.store(len, Ordering::Relaxed);
                }
            };
            let stop = || s.load(Ordering::Relaxed);
            match dl::download(&spec, &dir, &mut progress, &stop) {
                Ok(o) => Ok(format!(
                    "{what} ready: {} ({:.0} MB, MD5 verified)",
                    o.path.display(),
                    o.bytes as f64 / 1e6
                )),
                Err(annt::data::DataError::Stopped) => {
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

/// Trainable parameters of every model variant for `classes` outputs.
pub fn param_counts(classes: usize) -> Receiver<Vec<(String, usize)>> {
    spawn(move || {
        VARIANTS
            .iter()
            .filter_map(|v| {
                let spec = ModelSpec {
                    name: v.name.into(),
                    classes,
                    resolution: None,
                    seed: 0,
                };
                Model::build_shapes_only(&spec)
                    .ok()
                    .map(|m| (v.name.to_string(), m.param_count()))
            })
            .collect()
    })
}

/// Loads `path` into the chosen model as a run would, and says what happened.
pub fn check_weights(
    model: String,
    classes: usize,
    resolution: Option<usize>,
    path: PathBuf,
) -> Receiver<Result<String, String>> {
    spawn(move || {
        let spec = ModelSpec {
            name: model.clone(),
            classes,
            resolution,
            seed: 0,
        };
        let m = Model::build(&spec, &candle_core::Device::Cpu).map_err(|e| e.to_string())?;
        let r = annt::models::weights::load_pretrained(&m, &path).map_err(|e| e.to_string())?;
        let mut text = format!(
            "{}: {} tensors loaded into {model} ({:?} names)",
            path.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            r.loaded,
            r.convention
        );
        if r.head_replaced {
            text.push_str(&format!("; head replaced for {classes} classes"));
        }
        if let Some((from, to)) = r.pos_embedding_resized {
            text.push_str(&format!("; position grid resampled from {from} to {to}"));
        }
        Ok(text)
    })
}

/// The kinds of native dialog the window opens.
#[derive(Clone, Copy, Debug)]
pub enum Dialog {
    SaveReport,
    OpenReport,
    OpenWeights,
    OpenData,
    OpenPreset,
    SavePreset,
}

/// Shows a native dialog on a helper thread; `None` when cancelled or when no dialog
/// could be shown (no portal, no zenity): the window's path fields remain.
pub fn dialog(kind: Dialog) -> Receiver<Option<PathBuf>> {
    spawn(move || {
        let d = rfd::AsyncFileDialog::new();
        let picked = match kind {
            Dialog::SaveReport => pollster::block_on(
                d.add_filter("Report", &["html", "md", "csv", "json"])
                    .set_file_name("annt-report.html")
                    .save_file(),
            ),
            Dialog::OpenReport => {
                pollster::block_on(d.add_filter("JSON report", &["json"]).pick_file())
            }
            Dialog::OpenWeights => {
                pollster::block_on(d.add_filter("safetensors", &["safetensors"]).pick_file())
            }
            Dialog::OpenData => pollster::block_on(d.pick_folder()),
            Dialog::OpenPreset => pollster::block_on(d.add_filter("Preset", &["toml"]).pick_file()),
            Dialog::SavePreset => pollster::block_on(
                d.add_filter("Preset", &["toml"])
                    .set_file_name("my-preset.toml")
                    .save_file(),
            ),
        };
        picked.map(|f| f.path().to_path_buf())
    })
}
