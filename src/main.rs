//! The `annt` binary: no arguments (or only data-set paths, as a desktop entry passes them)
//! open the window; subcommands run the headless CLI.
//!
//! Windows: the binary keeps the console subsystem (no `windows_subsystem = "windows"`),
//! because the same executable is the command line: a GUI-subsystem binary prints nothing
//! in a terminal and its exit code is not awaited by `cmd.exe`. Started from the Start menu
//! it shows a console window beside the app window; see `packaging/windows/README.md`.

#[cfg(feature = "gui")]
mod app_log;
mod cli;
#[cfg(feature = "gui")]
mod gui;
#[cfg(feature = "gui")]
mod install_paths;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    annt::util::env::quiet_candle_workers();
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    #[cfg(feature = "gui")]
    if let Some(paths) = window_paths(&args) {
        return window(paths);
    }
    #[cfg(not(feature = "gui"))]
    let _ = &args;
    report(cli::run(cli::Cli::parse()))
}

/// `Some(paths)` when the arguments ask for the window: none at all, or only paths that
/// exist (what `Exec=annt %F` passes for a Linux desktop's "Open with"). Anything
/// else — a subcommand, a flag, a path that does not exist — goes to the CLI, whose parser
/// reports mistakes. A subcommand name wins over a file of the same name in the current
/// directory (`./data` is opened with `annt ./data`).
#[cfg(feature = "gui")]
fn window_paths(args: &[std::ffi::OsString]) -> Option<Vec<std::path::PathBuf>> {
    use clap::CommandFactory;
    if let Some(first) = args.first().and_then(|a| a.to_str()) {
        let command = cli::Cli::command();
        if first.starts_with('-') || first == "help" || command.find_subcommand(first).is_some() {
            return None;
        }
    }
    let paths: Vec<std::path::PathBuf> = args.iter().map(std::path::PathBuf::from).collect();
    paths.iter().all(|p| p.exists()).then_some(paths)
}

/// Opens the window with the paths: JSON reports are all opened (and overlaid); otherwise
/// the first path is the data set (the others are logged and ignored: the window works on
/// one data set). Errors go to stderr, to the log file and — when there is no
/// terminal to read stderr, as after a double click — to a message box where one can open.
#[cfg(feature = "gui")]
fn window(paths: Vec<std::path::PathBuf>) -> ExitCode {
    app_log::init();
    if let Some(path) = app_log::log_path() {
        app_log::info(&format!("log file: {}", path.display()));
    }
    app_log::info(&format!(
        "preset folders: {:?}",
        install_paths::presets_dirs()
    ));
    if paths.len() > 1 && !paths.iter().all(|p| gui::is_report(p)) {
        app_log::info(&format!(
            "{} paths given; opening the first, ignoring {:?}",
            paths.len(),
            &paths[1..]
        ));
    }
    let result = gui::run(paths);
    match result {
        Ok(()) => {
            app_log::info("window closed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("error: {msg}");
            app_log::error(&msg);
            show_error_without_terminal(&msg);
            ExitCode::FAILURE
        }
    }
}

/// A message box for an error nobody would otherwise see: only when stderr is not a
/// terminal and (on Linux and the BSDs) a display is set. On Linux rfd shows it with
/// `zenity`; without it, nothing appears and the log file is the record.
#[cfg(feature = "gui")]
fn show_error_without_terminal(msg: &str) {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        return;
    }
    let unix_desktop = cfg!(unix) && !cfg!(target_os = "macos");
    let has_display = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if unix_desktop && !has_display {
        return;
    }
    let log = app_log::log_path()
        .map(|p| format!("\n\nLog: {}", p.display()))
        .unwrap_or_default();
    rfd::MessageDialog::new()
        .set_level(rfd::MessageLevel::Error)
        .set_title("annt")
        .set_description(format!("{msg}{log}"))
        .set_buttons(rfd::MessageButtons::Ok)
        .show();
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
