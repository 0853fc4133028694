//! The `annt` binary: no arguments (or only data-set paths, as a desktop entry passes them)
//! open the window; subcommands run the headless CLI.

mod cli;
#[cfg(feature = "gui")]
mod gui;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    #[cfg(feature = "gui")]
    if args.is_empty() {
        return report(gui::run());
    }
    #[cfg(not(feature = "gui"))]
    let _ = &args;
    report(cli::run(cli::Cli::parse()))
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
