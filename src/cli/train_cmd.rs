//! `annt run` (one run) and `annt bench` (a plan: A/B or ablation, with repeats, and a
//! report), with progress bars on the terminal and Ctrl-C as "stop and keep what ran".

use std::path::PathBuf;

use annt::accel::amp::AmpMode;
use annt::bench::plan::{Plan, PlanKind};
use annt::config::{DeviceChoice, Preset};
use annt::engine::checkpoint::CheckpointPolicy;
use annt::engine::session::Resume;
use annt::engine::{Event, EventSink, SaveWeights, SessionOptions, StopFlag, run_session};
use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AmpArg {
    Off,
    Bf16,
    Fp16,
}

impl From<AmpArg> for AmpMode {
    fn from(a: AmpArg) -> Self {
        match a {
            AmpArg::Off => AmpMode::Off,
            AmpArg::Bf16 => AmpMode::Bf16,
            AmpArg::Fp16 => AmpMode::Fp16,
        }
    }
}

/// Flags that override a preset (or the built-in quick CPU run when no preset is given).
#[derive(Debug, Args)]
pub struct RunFlags {
    /// A preset file (presets/*.toml); without one, a quick CPU run on the built-in set.
    #[arg(long)]
    pub preset: Option<PathBuf>,
    /// Data: builtin, cifar10, cifar100, a folder or an archive.
    #[arg(long)]
    pub data: Option<String>,
    /// Model name (see `annt models`).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Micro-batch size.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Stop after this many training images (the same budget for every arm; each rounds
    /// it down to whole optimiser steps, at least one).
    #[arg(long)]
    pub max_images: Option<u64>,
    /// Keep only the first N images of the stored training split (file order, cut once).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Keep only the first N images of the stored test split (file order).
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Pretrained weights (safetensors).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<DeviceChoice>,
    #[arg(long)]
    pub seed: Option<u64>,
}

/// When the run in flight saves a checkpoint into its session's folder (for `--resume`).
#[derive(Debug, Args)]
pub struct CheckpointFlags {
    /// Save a checkpoint after every N-th epoch (0: not by epochs).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub checkpoint_every_epochs: usize,
    /// Also save one once this many minutes have passed since the last (mid-epoch too).
    #[arg(long, value_name = "MINUTES")]
    pub checkpoint_every_minutes: Option<f64>,
}

impl CheckpointFlags {
    fn policy(&self) -> anyhow::Result<CheckpointPolicy> {
        if let Some(m) = self.checkpoint_every_minutes
            && !(m.is_finite() && m > 0.0)
        {
            anyhow::bail!(
                "--checkpoint-every-minutes must be a positive number of minutes, not {m}"
            );
        }
        Ok(CheckpointPolicy {
            every_epochs: self.checkpoint_every_epochs,
            every_minutes: self.checkpoint_every_minutes,
        })
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub flags: RunFlags,
    #[command(flatten)]
    pub checkpoints: CheckpointFlags,
    /// Gradient accumulation: micro-batches per optimiser step.
    #[arg(long)]
    pub accum: Option<usize>,
    /// Mixed precision.
    #[arg(long, value_enum)]
    pub amp: Option<AmpArg>,
    /// Pinned host memory for uploads (CUDA only).
    #[arg(long)]
    pub pin: bool,
    /// Also write a report (format from the extension: .json .csv .md .html).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Save the trained weights here (safetensors, torchvision names; loadable back with
    /// --weights), atomically, once the run has finished.
    #[arg(long, value_name = "FILE")]
    pub save_weights: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PlanArg {
    Ab,
    Ablation,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub flags: RunFlags,
    /// ab: baseline vs tuned; ablation: all 8 switch combinations.
    #[arg(long, value_enum, default_value = "ab")]
    pub plan: PlanArg,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeats: u32,
    /// Where to write the report (.json .csv .md .html); repeat for several formats.
    #[arg(long, required = true)]
    pub report: Vec<PathBuf>,
    /// Save every finished run's trained weights into this folder, one
    /// `<arm>-r<repeat>.safetensors` each (loadable back with --weights).
    #[arg(long, value_name = "DIR")]
    pub save_weights: Option<PathBuf>,
    #[command(flatten)]
    pub checkpoints: CheckpointFlags,
    /// Continue the recorded session ID (`annt sessions list`): its finished runs are
    /// kept, the run that was in flight continues from its last checkpoint, the rest run.
    /// The plan is the session's own; plan flags are refused.
    #[arg(long, value_name = "ID")]
    pub resume: Option<String>,
    /// Where sessions are recorded (default: ANNT_SESSIONS_DIR, else annt's data folder).
    #[arg(long, value_name = "DIR")]
    pub sessions_dir: Option<PathBuf>,
}

fn load_preset(flags: &RunFlags) -> anyhow::Result<Preset> {
    let mut preset = match &flags.preset {
        Some(path) => Preset::load(path)?,
        // The same run as presets/quick-cpu.toml (one definition, in `config`).
        None => Preset {
            name: "quick-cpu (built in)".into(),
            ..Preset::quick_cpu()
        },
    };
    let run = &mut preset.run;
    if let Some(d) = &flags.data {
        run.data.source = annt::config::DataSource::from(d.as_str());
    }
    if let Some(m) = &flags.model {
        run.model.name = m.clone();
    }
    if let Some(e) = flags.epochs {
        run.train.epochs = e;
    }
    if let Some(b) = flags.batch {
        run.train.batch_size = b;
    }
    if flags.max_images.is_some() {
        run.train.max_images = flags.max_images;
    }
    if flags.train_limit.is_some() {
        run.data.train_limit = flags.train_limit;
    }
    if flags.test_limit.is_some() {
        run.data.test_limit = flags.test_limit;
    }
    if flags.weights.is_some() {
        run.model.weights = flags.weights.clone();
    }
    if let Some(d) = flags.device {
        run.device = d;
    }
    if let Some(s) = flags.seed {
        run.train.seed = s;
    }
    run.validate()?;
    Ok(preset)
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut preset = load_preset(&args.flags)?;
    let sw = &mut preset.run.switches;
    if let Some(k) = args.accum {
        sw.grad_accum_steps = k;
    }
    if let Some(a) = args.amp {
        sw.amp = a.into();
    }
    sw.pinned_memory |= args.pin;
    preset.run.validate()?;
    let plan = Plan {
        kind: PlanKind::Single,
        repeats: 1,
        preset,
    };
    let options = SessionOptions {
        save_weights: args.save_weights.map(SaveWeights::File),
        journal: annt::engine::journal::default_root(),
        checkpoints: args.checkpoints.policy()?,
        ..SessionOptions::default()
    };
    execute(&plan, &options, args.report.as_slice())
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    // Fail on a bad report path before training for minutes.
    for path in &args.report {
        annt::report::ReportFormat::from_path(path)?;
    }
    let root = args
        .sessions_dir
        .clone()
        .or_else(annt::engine::journal::default_root);
    if let Some(id) = &args.resume {
        let f = &args.flags;
        let plan_flags = f.preset.is_some()
            || f.data.is_some()
            || f.model.is_some()
            || f.epochs.is_some()
            || f.batch.is_some()
            || f.max_images.is_some()
            || f.train_limit.is_some()
            || f.test_limit.is_some()
            || f.weights.is_some()
            || f.device.is_some()
            || f.seed.is_some();
        if plan_flags {
            anyhow::bail!(
                "--resume continues session {id} with its recorded plan; drop the plan flags (--preset, --data, --model, …)"
            );
        }
        let root =
            root.context("no folder for sessions: set ANNT_SESSIONS_DIR or --sessions-dir")?;
        let recovered = annt::engine::journal::open(&root, id)?;
        let kept = recovered
            .session
            .runs
            .iter()
            .filter(|r| r.status.counts())
            .count();
        eprintln!(
            "resuming session {id}: {kept} finished run(s) kept{}",
            match recovered.in_flight.first() {
                Some(k) => format!(", {} (repeat {}) was in flight", k.arm, k.repeat + 1),
                None => String::new(),
            }
        );
        let options = SessionOptions {
            save_weights: args.save_weights.map(SaveWeights::Folder),
            journal: Some(root),
            checkpoints: args.checkpoints.policy()?,
            resume: Some(Resume::from(&recovered)),
            ..SessionOptions::default()
        };
        return execute(&recovered.plan, &options, &args.report);
    }
    let preset = load_preset(&args.flags)?;
    let kind = match args.plan {
        PlanArg::Ab => PlanKind::Ab,
        PlanArg::Ablation => PlanKind::Ablation,
    };
    let plan = Plan {
        kind,
        repeats: args.repeats as usize,
        preset,
    };
    let options = SessionOptions {
        save_weights: args.save_weights.map(SaveWeights::Folder),
        journal: root,
        checkpoints: args.checkpoints.policy()?,
        ..SessionOptions::default()
    };
    execute(&plan, &options, &args.report)
}

fn execute(plan: &Plan, options: &SessionOptions, reports: &[PathBuf]) -> anyhow::Result<()> {
    let stop = StopFlag::new();
    let handler_flag = stop.clone();
    let _ = ctrlc::set_handler(move || {
        eprintln!("\nstopping after the current batch (finished runs are kept)…");
        handler_flag.stop();
    });
    let mut sink = ConsoleSink::default();
    let session = run_session(plan, options, &mut sink, &stop)?;
    sink.finish();
    for r in &session.runs {
        if let Some(path) = &r.weights_file {
            eprintln!(
                "trained weights of {} (repeat {}): {}",
                r.arm,
                r.repeat + 1,
                path.display()
            );
        }
    }
    for path in reports {
        annt::report::write_report(&session, path).with_context(|| "writing the report")?;
        eprintln!("report written: {}", path.display());
    }
    let md = annt::report::render(&session, annt::report::ReportFormat::Markdown)?;
    super::print_out(&md)?;
    if let Some(failed) = session.runs.iter().find_map(|r| r.error.as_ref()) {
        anyhow::bail!("a run failed: {failed}");
    }
    if stop.is_stopped() {
        anyhow::bail!(
            "stopped by the user; the report covers the runs that finished (the last one marked partial)"
        );
    }
    Ok(())
}

/// Progress bars and one line per epoch on stderr.
#[derive(Default)]
struct ConsoleSink {
    bar: Option<ProgressBar>,
}

impl ConsoleSink {
    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
    fn println(&self, line: String) {
        // A bar that is not drawn (stderr is not a terminal: a log file, a pipe, CI) would
        // swallow the line: print it plainly then.
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }
}

impl EventSink for ConsoleSink {
    fn emit(&mut self, event: Event) {
        match event {
            Event::SessionStarted { plan, arms, repeats, data, model, environment } => {
                eprintln!("{plan} plan: {} arm(s) × {repeats} on {data} with {model}", arms.len());
                eprintln!("{}", environment.one_line());
            }
            Event::RunStarted { arm, repeat, run_index, total_runs, total_steps, micro_batch, effective_batch, .. } => {
                self.finish();
                let bar = ProgressBar::new(total_steps);
                bar.set_style(
                    ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps  {msg}  eta {eta}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                bar.set_prefix(format!("run {}/{total_runs} {arm} #{}", run_index + 1, repeat + 1));
                eprintln!("run {}/{total_runs}: {arm} (repeat {}), micro-batch {micro_batch}, effective batch {effective_batch}", run_index + 1, repeat + 1);
                self.bar = Some(bar);
            }
            Event::Progress { step, loss, images_per_sec, .. } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(step);
                    bar.set_message(format!("loss {loss:.3}  {images_per_sec:.0} img/s"));
                }
            }
            Event::EpochFinished { arm, record, .. } => self.println(format!(
                "  {arm} epoch {}: train loss {:.3} acc {:.1}%  test acc {:.1}% F1 {:.3}  {:.0} img/s  {:.1} s",
                record.epoch,
                record.train_loss,
                100.0 * record.train_accuracy,
                100.0 * record.test_accuracy,
                record.test_macro_f1,
                record.images_per_sec,
                record.wall_secs
            )),
            Event::RunFinished { result } => {
                self.finish();
                eprintln!("  {} finished ({:?}): {:.1} s wall, {:.1}% test accuracy", result.arm, result.status, result.wall_secs, 100.0 * result.final_test_accuracy);
            }
            Event::Warning { message } => self.println(format!("warning: {message}")),
            Event::Notice { message } => self.println(message),
            Event::RunFailed { arm, error, .. } => self.println(format!("error: {arm}: {error}")),
            Event::SessionFinished { .. } => self.finish(),
        }
    }
}
