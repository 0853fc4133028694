//! `annt sessions list|show|report`: the recorded sessions (`engine::journal`), finished or
//! interrupted, read back headless.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use annt::engine::journal;

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Every recorded session, newest first.
    List(ListArgs),
    /// One session's comparison table (Markdown), as far as it got.
    Show(ShowArgs),
    /// Write one session's report (.json .csv .md .html).
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct RootArg {
    /// Where sessions are recorded (default: ANNT_SESSIONS_DIR, else the data folder's
    /// sessions/).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub root: RootArg,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub root: RootArg,
    /// A session's id (as `annt sessions list` prints it).
    pub id: String,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub root: RootArg,
    pub id: String,
    /// Where to write the report; repeat for several formats.
    #[arg(long, required = true)]
    pub report: Vec<PathBuf>,
}

fn root(arg: &RootArg) -> anyhow::Result<PathBuf> {
    arg.dir
        .clone()
        .or_else(journal::default_root)
        .context("no user data folder is known on this system; pass --dir")
}

pub fn run(cmd: SessionsCommand) -> anyhow::Result<()> {
    match cmd {
        SessionsCommand::List(a) => {
            let root = root(&a.root)?;
            let listed = journal::list(&root)?;
            if a.json {
                return super::print_out(&(serde_json::to_string_pretty(&listed)? + "\n"));
            }
            let mut out = String::new();
            if listed.is_empty() {
                writeln!(out, "no sessions recorded in {}", root.display())?;
            }
            for s in &listed {
                match &s.problem {
                    Some(p) => writeln!(out, "{}  unreadable: {p}", s.id)?,
                    None => writeln!(
                        out,
                        "{}  {}  {}  {} run(s)  {}{}",
                        s.id,
                        s.started,
                        s.preset,
                        s.runs,
                        if s.finished {
                            "finished"
                        } else {
                            "interrupted"
                        },
                        if s.resumable {
                            format!("  (resume: annt bench --resume {} --report FILE)", s.id)
                        } else {
                            String::new()
                        }
                    )?,
                }
            }
            super::print_out(&out)
        }
        SessionsCommand::Show(a) => {
            let r = journal::open(&root(&a.root)?, &a.id)?;
            if !r.finished {
                eprintln!(
                    "session {} was interrupted: {} run(s) recorded{}",
                    r.id,
                    r.session.runs.len(),
                    if r.torn() {
                        " (a last line cut off by the interruption was skipped)"
                    } else {
                        ""
                    }
                );
            }
            let md = annt::report::render(&r.session, annt::report::ReportFormat::Markdown)?;
            super::print_out(&md)
        }
        SessionsCommand::Report(a) => {
            let r = journal::open(&root(&a.root)?, &a.id)?;
            for path in &a.report {
                annt::report::write_report(&r.session, path)?;
                eprintln!("report written: {}", path.display());
            }
            Ok(())
        }
    }
}
