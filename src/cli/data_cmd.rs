//! `annt data inspect` and `annt data download`.

use annt::data::{self, Cifar100Labels, OpenOptions};
use clap::{Args, Subcommand, ValueEnum};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Detect the format at PATH (folder, archive, or parent folder; `builtin` for the
    /// built-in set) and print classes, split sizes, per-class counts and mean/std.
    Inspect(InspectArgs),
    /// Download an official CIFAR archive, verify its MD5 and keep it in the data folder.
    Download(DownloadArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LabelsArg {
    Fine,
    Coarse,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A data-set folder, archive, parent folder, or `builtin`.
    pub path: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// CIFAR-100 labels to use.
    #[arg(long, value_enum, default_value = "fine")]
    pub labels: LabelsArg,
    /// Working resolution for image folders (CIFAR is always 32).
    #[arg(long, default_value_t = 32)]
    pub resolution: u32,
    /// Fraction of each class held out as test when a folder has no test/ split.
    #[arg(long, default_value_t = 0.2)]
    pub holdout: f32,
    /// Seed of that split and of the built-in set.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum VariantArg {
    Cifar10,
    Cifar100,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Binary,
    Python,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Which data set.
    #[arg(value_enum)]
    pub variant: VariantArg,
    /// Archive format.
    #[arg(long, value_enum, default_value = "binary")]
    pub format: FormatArg,
    /// Folder to keep the archive in (default: the user's data folder, e.g. ~/.local/share/annt).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Base URL of a mirror serving the same file names (the MD5 is still checked); default:
    /// the ANNT_CIFAR_MIRROR environment variable, else the official host.
    #[arg(long)]
    pub mirror: Option<String>,
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Inspect(args) => inspect(&args),
        DataCommand::Download(args) => download(&args),
    }
}

fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let options = OpenOptions {
        cifar100_labels: match args.labels {
            LabelsArg::Fine => Cifar100Labels::Fine,
            LabelsArg::Coarse => Cifar100Labels::Coarse,
        },
        resolution: args.resolution,
        holdout_fraction: args.holdout,
        seed: args.seed,
    };
    let start = Instant::now();
    let ds = data::open(&args.path, &options)?;
    let load_secs = start.elapsed().as_secs_f64();
    let summary = ds.summary();
    let mut out = String::new();
    if args.json {
        return super::print_out(&(serde_json::to_string_pretty(&summary)? + "\n"));
    }
    let source = summary.source.as_ref().map_or_else(
        || "generated from seed".to_owned(),
        |p| p.display().to_string(),
    );
    writeln!(
        out,
        "{} — {} ({source})",
        summary.name,
        summary.format.label()
    )?;
    writeln!(
        out,
        "images: {} train, {} test, {}x{} RGB; loaded in {load_secs:.2} s",
        summary.train, summary.test, summary.width, summary.height
    )?;
    writeln!(out, "classes: {}", summary.classes.len())?;
    let width = summary
        .classes
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(5)
        .max(5);
    writeln!(out, "  {:<width$}  {:>7}  {:>7}", "class", "train", "test")?;
    for (i, name) in summary.classes.iter().enumerate() {
        writeln!(
            out,
            "  {name:<width$}  {:>7}  {:>7}",
            summary.train_per_class[i], summary.test_per_class[i]
        )?;
    }
    let src = match summary.normalization_source {
        data::stats::NormalizationSource::Published => "published",
        data::stats::NormalizationSource::Computed => "computed over train",
    };
    writeln!(
        out,
        "mean (R,G,B): {:.4} {:.4} {:.4}   std: {:.4} {:.4} {:.4}   ({src})",
        summary.mean[0],
        summary.mean[1],
        summary.mean[2],
        summary.std[0],
        summary.std[1],
        summary.std[2]
    )?;
    super::print_out(&out)
}

fn download(args: &DownloadArgs) -> anyhow::Result<()> {
    use annt::data::download::{ArchiveFormat, CifarVariant, DownloadStatus};
    use annt::engine::inspect::{self, DownloadRequest};
    let request = DownloadRequest {
        variant: match args.variant {
            VariantArg::Cifar10 => CifarVariant::Cifar10,
            VariantArg::Cifar100 => CifarVariant::Cifar100,
        },
        format: match args.format {
            FormatArg::Binary => ArchiveFormat::Binary,
            FormatArg::Python => ArchiveFormat::Python,
        },
        dir: args.dir.clone(),
        mirror: args.mirror.clone(),
    };
    let spec = request.spec();
    let dir = request.folder()?;
    eprintln!("downloading {} into {}", spec.url, dir.display());
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut progress = |done: u64, total: Option<u64>| {
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
    };
    // Ctrl-C stops the transfer between chunks so the temporary file is removed, rather
    // than killing the process and leaving a `.annt-partial-*` file behind.
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&interrupted);
    // If a handler cannot be installed, Ctrl-C still works; it just kills the process.
    let _ = ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::Relaxed));
    let stop = || interrupted.load(std::sync::atomic::Ordering::Relaxed);
    let outcome = inspect::download(&request, &mut progress, &stop);
    bar.finish_and_clear();
    let outcome = match outcome {
        Err(annt::data::DataError::Stopped) => {
            anyhow::bail!("download stopped; nothing was kept: {}", dir.display())
        }
        other => other?,
    };
    let what = match outcome.status {
        DownloadStatus::Downloaded => "downloaded",
        DownloadStatus::AlreadyPresent => "already present, MD5 verified",
        DownloadStatus::ReplacedCorrupt => "replaced a corrupt copy",
    };
    super::print_out(&format!(
        "{} ({what}; MD5 {} OK)\ninspect it with: annt data inspect {}\n",
        outcome.path.display(),
        spec.md5,
        outcome.path.display()
    ))
}
