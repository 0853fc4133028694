//! The headless command line: clap arguments → library calls → text or JSON on stdout.
//!
//! Exit codes: 0 success, 1 the work failed (bad data, network…), 2 bad usage (clap).

mod data_cmd;
mod models_cmd;
mod selftest_cmd;
mod sessions_cmd;
mod speed_cmd;
mod train_cmd;

use clap::{Parser, Subcommand};

/// annt — measure what gradient accumulation, mixed precision and pinned memory buy.
#[derive(Debug, Parser)]
#[command(name = "annt", version, about, long_about = None, arg_required_else_help = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect and download data sets.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// List every model variant with its parameter count, resolution and whether
    /// pretrained weights are expected.
    Models(models_cmd::ModelsArgs),
    /// Train one run (a preset, or the quick CPU run) with the switches given as flags.
    Run(train_cmd::RunArgs),
    /// Train a plan — baseline vs tuned (ab) or all 8 switch combinations (ablation) —
    /// and write a report (.json, .csv, .md or .html).
    Bench(train_cmd::BenchArgs),
    /// Training throughput on synthetic data (the PyTorch peer's workload): one JSON line
    /// per precision mode.
    Speed(speed_cmd::SpeedArgs),
    /// Check every GPU kernel against the CPU reference (op × dtype × max relative error),
    /// then train a few steps of every model family on the GPU. Exit code 1 on a failure.
    Selftest(selftest_cmd::SelftestArgs),
    /// Recorded sessions (every run and bench is recorded as it goes): list them, show one,
    /// or write its report — finished or interrupted.
    #[command(subcommand)]
    Sessions(sessions_cmd::SessionsCommand),
}

/// Runs the parsed command line; the caller turns an error into exit code 1.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Data(cmd) => data_cmd::run(cmd),
        Command::Models(args) => models_cmd::run(args),
        Command::Run(args) => train_cmd::run(args),
        Command::Bench(args) => train_cmd::bench(args),
        Command::Speed(args) => speed_cmd::run(args),
        Command::Selftest(args) => selftest_cmd::run(args),
        Command::Sessions(cmd) => sessions_cmd::run(cmd),
    }
}

/// Writes command output to stdout. A closed pipe (`annt … | head`) is not an error: the
/// reader has what it wanted.
pub fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
