//! What arrives between frames: the engine's events (through the worker) and the helper
//! jobs' answers (data previews, downloads, parameter counts, weights checks, dialogs).

use std::time::{Duration, Instant};

use annt::bench::result::SessionResult;
use annt::config::DataSource;
use annt::engine::Event;

use super::worker::WorkerMsg;
use super::{AnntApp, Message, RunView, jobs};

impl AnntApp {
    /// Drains worker events for at most 8 ms, then polls background checks.
    pub fn poll(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(8);
        let mut msgs = Vec::new();
        if let Some(w) = &self.worker {
            while Instant::now() < deadline {
                match w.rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
        }
        for m in msgs {
            self.apply(m);
        }
        self.poll_jobs();
    }
    /// Answers from helper threads: data checks, downloads, counts, dialogs.
    pub(super) fn poll_jobs(&mut self) {
        if let Some((rx, dropped)) = &self.data_check
            && let Ok(result) = rx.try_recv()
        {
            let dropped = dropped.clone();
            self.data_check = None;
            match result {
                Ok(p) => {
                    if let Some(path) = dropped {
                        self.settings.run_mut().data.source = DataSource::Path(path.into());
                    }
                    self.preview_for = Some(self.settings.data_config());
                    self.data_summary = Some(Ok(p.headline()));
                    self.sample_textures.clear();
                    self.preview = Some(p);
                }
                Err(e) => {
                    let e = e.to_string();
                    if dropped.is_some() {
                        self.messages.push(Message::error(e.clone()));
                    } else {
                        self.preview_for = Some(self.settings.data_config());
                        self.preview = None;
                        self.sample_textures.clear();
                    }
                    self.data_summary = Some(Err(e));
                }
            }
        }
        if let Some(d) = &self.download
            && let Ok(result) = d.result.try_recv()
        {
            self.download = None;
            match result {
                Ok(m) => {
                    self.messages.push(Message::info(m));
                    // Opens the new copy if it is the current choice.
                    self.preview_for = None;
                }
                Err(e) => self.messages.push(Message::error(e)),
            }
        }
        if let Some(rx) = &self.param_job
            && let Ok(counts) = rx.try_recv()
        {
            self.param_job = None;
            match counts {
                Ok(counts) => {
                    self.param_counts = counts
                        .into_iter()
                        .map(|(n, c)| (n.to_string(), c))
                        .collect();
                }
                Err(e) => self
                    .messages
                    .push(Message::error(format!("parameter counts: {e}"))),
            }
        }
        if let Some(rx) = &self.sessions_job
            && let Ok(list) = rx.try_recv()
        {
            self.sessions_job = None;
            self.sessions_list = Some(list);
        }
        if let Some(rx) = &self.report_job
            && let Ok(r) = rx.try_recv()
        {
            self.report_job = None;
            self.messages.push(match r {
                Ok(path) => Message::info(format!("report saved: {}", path.display())),
                Err(e) => Message::error(format!("{e} — choose another path or extension")),
            });
        }
        if let Some(rx) = &self.weights_job
            && let Ok(r) = rx.try_recv()
        {
            self.weights_job = None;
            self.weights_check = Some(r);
        }
        if let Some((kind, rx)) = &self.dialog
            && let Ok(choice) = rx.try_recv()
        {
            let kind = *kind;
            self.dialog = None;
            if let Some(paths) = choice {
                self.dialog_answer(kind, paths);
            }
        }
        // Keep the preview and the parameter counts in step with the settings.
        let current = self.settings.data_config();
        if self.data_check.is_none() && self.preview_for.as_ref() != Some(&current) {
            self.check_current_data();
        }
        let classes = self
            .preview
            .as_ref()
            .map_or(10, |p| p.summary.classes.len());
        if self.param_job.is_none() && self.param_classes != classes {
            self.param_classes = classes;
            self.param_job = Some(jobs::param_counts(classes));
        }
    }
    pub(super) fn check_current_data(&mut self) {
        let data = self.settings.data_config();
        self.preview_for = Some(data.clone());
        self.data_check = Some((jobs::preview(data), None));
    }
    pub(super) fn run_mut(&mut self, arm: &str, repeat: usize) -> Option<&mut RunView> {
        self.runs
            .iter_mut()
            .find(|r| r.arm == arm && r.repeat == repeat)
    }
    pub(super) fn apply(&mut self, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Event(Event::RunStarted {
                arm,
                repeat,
                total_steps,
                micro_batch,
                steps_per_epoch,
                ..
            }) => self.runs.push(RunView {
                arm,
                repeat,
                total_steps,
                micro_batch,
                steps_per_epoch,
                started: Some(Instant::now()),
                status: "running".into(),
                ..RunView::default()
            }),
            WorkerMsg::Event(Event::Progress {
                arm,
                repeat,
                step,
                images_per_sec,
                point,
                ..
            }) => {
                if let Some(r) = self.run_mut(&arm, repeat) {
                    r.step = step;
                    r.images_per_sec = images_per_sec;
                    r.points.push(point);
                }
            }
            WorkerMsg::Event(Event::EpochFinished {
                arm,
                repeat,
                record,
            }) => {
                if let Some(r) = self.run_mut(&arm, repeat) {
                    r.step = record.optimizer_steps;
                    r.epochs.push(record);
                }
            }
            WorkerMsg::Event(Event::RunFinished { result }) => {
                let status = annt::report::fmt::status(result.status).to_string();
                match self.run_mut(&result.arm, result.repeat) {
                    Some(r) => {
                        r.finished = true;
                        r.status = status;
                    }
                    // A run a resumed session kept from before the interruption: its
                    // curves come from its result.
                    None => self.runs.push(RunView {
                        arm: result.arm.clone(),
                        repeat: result.repeat,
                        epochs: result.epochs.clone(),
                        step: result.optimizer_steps,
                        total_steps: result.optimizer_steps,
                        finished: true,
                        status,
                        micro_batch: result.micro_batch,
                        images_per_sec: result.timing.images_per_sec,
                        steps_per_epoch: result.optimizer_steps_per_epoch,
                        points: result.curve.clone(),
                        started: None,
                        source: 0,
                    }),
                }
                self.finished.push(*result);
                let mut live = SessionResult {
                    runs: self.finished.clone(),
                    ..SessionResult::default()
                };
                live.summarize();
                self.live = Some(live);
            }
            WorkerMsg::Event(Event::Warning { message } | Event::Notice { message }) => {
                self.messages.push(Message::info(message))
            }
            WorkerMsg::Event(Event::RunFailed {
                arm,
                error,
                out_of_memory,
                micro_batch,
                ..
            }) => {
                if out_of_memory {
                    self.oom_batch = Some(micro_batch);
                }
                if let Some(r) = self.runs.iter_mut().rev().find(|r| r.arm == arm) {
                    r.finished = true;
                    r.status = "failed".into();
                }
                self.messages
                    .push(Message::error(format!("{arm} failed: {error}")))
            }
            WorkerMsg::Event(Event::SessionFinished { result }) => {
                // What drawing the live curves cost this window: the UI's own time per
                // frame (events in, layout), rendering not included.
                if let Some((p50, p99)) = super::app::percentiles(&self.session_frame_ms) {
                    let text = format!(
                        "UI time per frame while the session ran: p50 {p50:.1} ms, p99 {p99:.1} ms over {} frames, {} runs' curves",
                        self.session_frame_ms.len(),
                        self.runs.len()
                    );
                    crate::app_log::info(&text);
                    self.messages.push(Message::info(text));
                }
                self.session = Some(*result);
                // The Sessions menu reads the journal afresh: this one is in it now.
                self.sessions_list = None;
            }
            WorkerMsg::Event(Event::SessionStarted { .. }) => {}
            WorkerMsg::Failed(e) => {
                if e.is_device() {
                    self.cpu_offer = true;
                }
                self.messages.push(Message::error(e.to_string()))
            }
            WorkerMsg::Done => {
                if let Some(w) = &mut self.worker {
                    w.finished = true;
                }
            }
        }
    }
}
