//! The engine on a named worker thread. Events arrive over a bounded channel; a panic in
//! the engine becomes a message, not a dead window.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use annt::bench::plan::Plan;
use annt::engine::{Event, EventSink, SessionOptions, StopFlag, run_session};

pub enum WorkerMsg {
    Event(Event),
    Failed(String),
    Done,
}

pub struct Worker {
    pub rx: Receiver<WorkerMsg>,
    pub stop: StopFlag,
    pub finished: bool,
    _handle: Option<JoinHandle<()>>,
}

/// Wraps engine events into worker messages.
struct Forward(ChannelSinkOf);
type ChannelSinkOf = (SyncSender<WorkerMsg>, Box<dyn Fn() + Send>);

impl EventSink for Forward {
    fn emit(&mut self, event: Event) {
        let droppable = event.is_droppable();
        let msg = WorkerMsg::Event(event);
        if droppable {
            let _ = self.0.0.try_send(msg);
        } else {
            let _ = self.0.0.send(msg);
        }
        (self.0.1)();
    }
}

impl Worker {
    pub fn start(plan: Plan, wake: Box<dyn Fn() + Send>) -> Self {
        let (tx, rx) = sync_channel::<WorkerMsg>(256);
        let stop = StopFlag::new();
        let worker_stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name("annt-engine".into())
            .spawn(move || {
                let done_tx = tx.clone();
                let mut sink = Forward((tx, wake));
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_session(&plan, &SessionOptions::default(), &mut sink, &worker_stop)
                }));
                let failure = match outcome {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(format!("{e}")),
                    Err(panic) => Some(format!(
                        "the training thread crashed ({}); the window is still usable — change a setting and start again",
                        panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied()).unwrap_or("unknown panic")
                    )),
                };
                if let Some(f) = failure {
                    let _ = done_tx.send(WorkerMsg::Failed(f));
                }
                let _ = done_tx.send(WorkerMsg::Done);
                (sink.0.1)();
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
