//! The engine on a named worker thread. Events arrive over a bounded channel; a panic in
//! the engine becomes a message, not a dead window.

use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use annt::bench::plan::Plan;
use annt::engine::{ChannelSink, EngineError, Event, SessionOptions, StopFlag, run_session};

pub enum WorkerMsg {
    Event(Event),
    Failed(Failure),
    Done,
}

/// Why a session ended early, kept typed so the window can act on what it was (e.g. offer
/// the CPU when the chosen device could not be opened).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(
        "the training thread crashed ({0}); the window is still usable — change a setting and start again"
    )]
    Crashed(String),
}

impl Failure {
    /// Whether the session's device could not be opened (only a CUDA choice can fail so).
    pub fn is_device(&self) -> bool {
        matches!(self, Failure::Engine(EngineError::Device { .. }))
    }
}

pub struct Worker {
    pub rx: Receiver<WorkerMsg>,
    pub stop: StopFlag,
    pub finished: bool,
    _handle: Option<JoinHandle<()>>,
}

/// Engine events reach the window as worker messages (through the engine's `ChannelSink`).
impl From<Event> for WorkerMsg {
    fn from(event: Event) -> Self {
        WorkerMsg::Event(event)
    }
}

impl Worker {
    pub fn start(plan: Plan, options: SessionOptions, wake: Box<dyn Fn() + Send>) -> Self {
        let (tx, rx) = sync_channel::<WorkerMsg>(256);
        let stop = StopFlag::new();
        let worker_stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name("annt-engine".into())
            .spawn(move || {
                let done_tx = tx.clone();
                let mut sink = ChannelSink::new(tx, wake);
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_session(&plan, &options, &mut sink, &worker_stop)
                }));
                let failure = match outcome {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(Failure::Engine(e)),
                    Err(panic) => Some(Failure::Crashed(
                        panic
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| panic.downcast_ref::<&str>().copied())
                            .unwrap_or("unknown panic")
                            .to_string(),
                    )),
                };
                if let Some(f) = failure {
                    let _ = done_tx.send(WorkerMsg::Failed(f));
                }
                let _ = done_tx.send(WorkerMsg::Done);
                sink.wake();
            })
            .ok();
        Self {
            rx,
            stop,
            finished: false,
            _handle: handle,
        }
    }
}
