//! Typed events from the engine to a front end, the sinks that carry them, and the stop flag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use serde::Serialize;

use crate::bench::result::{EpochRecord, RunResult, SessionResult};
use crate::config::Switches;
use crate::util::env::Environment;

/// Everything a front end learns from the engine. Only host-side numbers: no tensors.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    SessionStarted {
        plan: String,
        arms: Vec<String>,
        repeats: usize,
        data: String,
        model: String,
        environment: Box<Environment>,
    },
    RunStarted {
        /// Optimiser steps per epoch (the x axis of per-step curves in epochs).
        steps_per_epoch: u64,
        arm: String,
        repeat: usize,
        run_index: usize,
        total_runs: usize,
        switches: Switches,
        total_steps: u64,
        micro_batch: usize,
        effective_batch: usize,
    },
    /// Throttled (at most every ~50 ms); a sink may drop these.
    Progress {
        arm: String,
        repeat: usize,
        epoch: usize,
        step: u64,
        total_steps: u64,
        /// Mean training loss of the epoch so far.
        loss: f64,
        /// Images/s of the run's timed steps so far.
        images_per_sec: f64,
        elapsed_secs: f64,
        /// The per-step curve's point for this event, as the run's result keeps it: the
        /// loss since the previous event, learning rate, fp16 loss scale, host and device
        /// memory in use (CUDA's pool; a driver query that does not wait for the device).
        point: crate::bench::result::CurvePoint,
    },
    EpochFinished {
        arm: String,
        repeat: usize,
        record: EpochRecord,
    },
    RunFinished {
        result: Box<RunResult>,
    },
    /// Something the user should know that is not a problem (a run resumed from a
    /// checkpoint).
    Notice {
        message: String,
    },
    Warning {
        message: String,
    },
    RunFailed {
        arm: String,
        repeat: usize,
        error: String,
        /// The device ran out of memory: a smaller micro-batch with more accumulation
        /// (same effective batch) may fit.
        out_of_memory: bool,
        /// The micro-batch the failed run used.
        micro_batch: usize,
    },
    SessionFinished {
        result: Box<SessionResult>,
    },
}

impl Event {
    /// Progress events may be dropped by a full channel; the others must arrive.
    pub fn is_droppable(&self) -> bool {
        matches!(self, Event::Progress { .. })
    }
}

/// Where the engine reports to.
pub trait EventSink {
    fn emit(&mut self, event: Event);
}

/// Collects every event (tests, headless runs).
#[derive(Debug, Default)]
pub struct VecSink {
    pub events: Vec<Event>,
}

impl EventSink for VecSink {
    fn emit(&mut self, event: Event) {
        self.events.push(event);
    }
}

/// Sends events over a bounded channel, wrapped into the receiver's message type `M` (the
/// window's worker messages; `Event` itself for a plain receiver): lifecycle events block
/// until there is room, progress events are dropped when the receiver is behind. `wake` is
/// called after each event (the GUI passes "request a repaint"; the engine never imports a
/// GUI).
pub struct ChannelSink<M = Event> {
    tx: SyncSender<M>,
    wake: Box<dyn Fn() + Send>,
}

impl<M: From<Event>> ChannelSink<M> {
    pub fn new(tx: SyncSender<M>, wake: Box<dyn Fn() + Send>) -> Self {
        Self { tx, wake }
    }

    /// Calls `wake`, for a message the front end sent on its own clone of the channel.
    pub fn wake(&self) {
        (self.wake)();
    }
}

impl<M: From<Event>> EventSink for ChannelSink<M> {
    fn emit(&mut self, event: Event) {
        let droppable = event.is_droppable();
        let msg = M::from(event);
        if droppable {
            match self.tx.try_send(msg) {
                Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
            }
        } else {
            // A disconnected receiver means the front end is gone: nothing left to tell.
            let _ = self.tx.send(msg);
        }
        (self.wake)();
    }
}

/// A cloneable stop request, checked by the engine after every micro-batch and evaluation
/// batch.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
