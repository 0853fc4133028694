//! Honest step timing: per-phase wall time on a monotonic clock — the host's, or on an
//! asynchronous device the device's own ([`Timeline`], CUDA events) so that timing never
//! makes a step wait — warm-up steps excluded (and counted), and peak memory.
//!
//! Warm-up steps are excluded because the first steps pay for one-off work (allocator
//! growth, kernel selection, page faults on fresh buffers) that a long run amortises away;
//! they are still counted so a report can say how many were dropped.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Phases of a training step, timed separately so a report can say where an acceleration
/// saves (or costs) time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Waiting for the loader to hand over the next batch.
    DataWait,
    /// Copying the batch to the device (where pinned memory should help).
    HostToDevice,
    /// The forward pass and the loss.
    Forward,
    /// The backward pass (and, with fp16, unscaling and the finite check).
    Backward,
    /// The optimiser update.
    Optimizer,
}

impl Phase {
    /// Every phase in step order: the order of [`TimingSummary::phase_ms_per_step`] and of
    /// report columns.
    pub const ALL: [Phase; 5] = [
        Phase::DataWait,
        Phase::HostToDevice,
        Phase::Forward,
        Phase::Backward,
        Phase::Optimizer,
    ];

    /// Human-readable name for report headers.
    pub fn label(self) -> &'static str {
        match self {
            Phase::DataWait => "data wait",
            Phase::HostToDevice => "host→device",
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Optimizer => "optimiser",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a run's timing comes to. Every per-step figure is a mean over the measured
/// (post-warm-up) steps only.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimingSummary {
    /// Steps run but excluded from the figures below.
    pub warmup_steps: u64,
    /// Steps the figures below cover.
    pub measured_steps: u64,
    /// Images trained in the measured steps.
    pub measured_images: u64,
    /// Wall time of the measured steps, start to end, in seconds.
    pub measured_secs: f64,
    /// `measured_images / measured_secs` (0 when nothing was measured).
    pub images_per_sec: f64,
    /// Mean wall time of a measured step in milliseconds.
    pub ms_per_step: f64,
    /// Mean milliseconds per measured step in each phase, in [`Phase::ALL`] order. Their sum
    /// falls short of `ms_per_step` only by time the caller left outside any phase.
    pub phase_ms_per_step: Vec<(Phase, f64)>,
}

/// A [`StepTimer`]'s counts, as a checkpoint keeps them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimerTotals {
    pub steps: u64,
    pub measured_steps: u64,
    pub measured_images: u64,
    pub measured_secs: f64,
    pub phase_secs: [f64; 5],
}

/// Accumulates per-phase wall time over steps with [`Instant`] (monotonic, so clock
/// adjustments cannot produce negative or inflated times), excluding the first
/// `warmup_steps` steps from the totals.
///
/// A step is `start_step`, any number of `phase` calls (a phase may recur within a step, as
/// forward and backward do under gradient accumulation; its times add up), then `end_step`.
/// Time between `start_step` and the first `phase` belongs to no phase.
pub struct StepTimer {
    warmup_steps: u64,
    /// Steps up to this count are warm-up (`warmup_steps`, or more after a resume).
    warm_after: u64,
    steps: u64,
    measured_steps: u64,
    measured_images: u64,
    measured_secs: f64,
    phase_secs: [f64; 5],
    step_phase_secs: [f64; 5],
    /// Times in seconds since `origin` (host clock) or the timeline's origin.
    step_start: Option<f64>,
    current: Option<(Phase, f64)>,
    origin: Option<Instant>,
    sync: Option<Box<dyn Fn() + Send>>,
    clock: Option<Box<dyn Fn() -> Instant + Send>>,
    /// Set on an asynchronous device: marks are queued there and resolved at [`StepTimer::flush`].
    timeline: Option<Box<dyn Timeline>>,
    /// Marks queued on the timeline and not yet resolved, in order.
    pending: Vec<Mark>,
    timeline_error: Option<String>,
}

/// A point of a step the timer needs the time of.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mark {
    StepStart,
    Phase(Phase),
    StepEnd(u64),
}

/// A device's own clock for an asynchronous device (CUDA events on its stream): a mark is
/// queued without waiting, and its time is known only once the device has reached it. The
/// step loop then never waits for the device to time it, so the host can run ahead (queue
/// the next batch's copy while the device computes) exactly as in a user's own training.
pub trait Timeline: Send {
    /// Queues a mark after the work queued so far; returns at once.
    fn mark(&mut self) -> Result<(), String>;
    /// Waits until the device has reached every queued mark and returns their times in
    /// seconds (from any fixed origin), one per mark queued since the previous flush, in
    /// order.
    fn flush(&mut self) -> Result<Vec<f64>, String>;
}

/// The device's own clock for the step timer (CUDA events on the device's stream); `None` on
/// the CPU, whose work is synchronous.
pub fn device_timeline(device: &candle_core::Device) -> Option<Box<dyn Timeline>> {
    #[cfg(feature = "cuda")]
    {
        cuda_events::timeline(device)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        None
    }
}

/// CUDA events as a [`Timeline`] (safe cudarc calls only).
#[cfg(feature = "cuda")]
mod cuda_events {
    pub fn timeline(device: &candle_core::Device) -> Option<Box<dyn super::Timeline>> {
        let stream = device.as_cuda_device().ok()?.cuda_stream();
        Some(Box::new(EventTimeline {
            stream,
            base: None,
            queued: Vec::new(),
            free: Vec::new(),
        }))
    }

    use candle_core::cuda_backend::cudarc::driver::{CudaEvent, CudaStream, sys};
    use std::sync::Arc;

    /// Timing events on the training stream, recycled after each flush. Times are kept
    /// relative to the previous flush's last event (plus its time), so f32 milliseconds
    /// never have to span a whole run.
    struct EventTimeline {
        stream: Arc<CudaStream>,
        base: Option<(CudaEvent, f64)>,
        queued: Vec<CudaEvent>,
        free: Vec<CudaEvent>,
    }

    impl super::Timeline for EventTimeline {
        fn mark(&mut self) -> Result<(), String> {
            let event = match self.free.pop() {
                Some(e) => {
                    e.record(&self.stream).map_err(|e| e.to_string())?;
                    e
                }
                None => self
                    .stream
                    .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                    .map_err(|e| e.to_string())?,
            };
            self.queued.push(event);
            Ok(())
        }

        fn flush(&mut self) -> Result<Vec<f64>, String> {
            let Some(last) = self.queued.last() else {
                return Ok(Vec::new());
            };
            last.synchronize().map_err(|e| e.to_string())?;
            let mut events = std::mem::take(&mut self.queued);
            let mut times = Vec::with_capacity(events.len());
            // Times count from the previous flush's last event; the very first mark is 0.
            let (base, base_t) = match self.base.take() {
                Some(b) => b,
                None => {
                    times.push(0.0);
                    (events.remove(0), 0.0)
                }
            };
            for e in &events {
                let ms = base.elapsed_ms(e).map_err(|e| e.to_string())?;
                times.push(base_t + f64::from(ms) / 1000.0);
            }
            // All but the last event are recycled; the last becomes the next base.
            match events.pop() {
                Some(last) => {
                    let t = times.last().copied().unwrap_or(base_t);
                    self.free.push(base);
                    self.free.append(&mut events);
                    self.base = Some((last, t));
                }
                None => self.base = Some((base, base_t)),
            }
            Ok(times)
        }
    }
}

impl std::fmt::Debug for StepTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepTimer")
            .field("warmup_steps", &self.warmup_steps)
            .field("steps", &self.steps)
            .field("in_step", &self.step_start.is_some())
            .field("synchronised", &self.sync.is_some())
            .field("timeline", &self.timeline.is_some())
            .finish_non_exhaustive()
    }
}

impl StepTimer {
    /// What the timer has counted, for a checkpoint.
    pub fn totals(&self) -> TimerTotals {
        TimerTotals {
            steps: self.steps,
            measured_steps: self.measured_steps,
            measured_images: self.measured_images,
            measured_secs: self.measured_secs,
            phase_secs: self.phase_secs,
        }
    }

    /// Continues from the totals of a run that stopped (a checkpoint): its timed steps
    /// count as before, and the next `warmup_steps` steps are warm-up again — a fresh
    /// process's first steps pay for cold caches and allocations, as the run's first did.
    pub fn resume(&mut self, t: &TimerTotals) {
        self.steps = t.steps;
        self.measured_steps = t.measured_steps;
        self.measured_images = t.measured_images;
        self.measured_secs = t.measured_secs;
        self.phase_secs = t.phase_secs;
        self.warm_after = t.steps + self.warmup_steps;
    }

    /// A timer that ignores the first `warmup_steps` completed steps.
    pub fn new(warmup_steps: u64) -> Self {
        Self {
            warmup_steps,
            warm_after: warmup_steps,
            steps: 0,
            measured_steps: 0,
            measured_images: 0,
            measured_secs: 0.0,
            phase_secs: [0.0; 5],
            step_phase_secs: [0.0; 5],
            step_start: None,
            current: None,
            origin: None,
            sync: None,
            clock: None,
            timeline: None,
            pending: Vec::new(),
            timeline_error: None,
        }
    }

    /// Times steps on `timeline` (the device's clock) instead of the host's: no
    /// synchronisation inside a step; the figures catch up at each [`StepTimer::flush`],
    /// which the caller places where it reads results anyway (progress ticks, epoch ends).
    pub fn with_timeline(mut self, timeline: Box<dyn Timeline>) -> Self {
        self.timeline = Some(timeline);
        self
    }

    /// Resolves the marks queued on the timeline (waits for the device); a no-op without
    /// one. A failing device clock is an error: the figures would be wrong otherwise.
    pub fn flush(&mut self) -> Result<(), String> {
        let Some(tl) = self.timeline.as_mut() else {
            return Ok(());
        };
        if let Some(e) = self.timeline_error.take() {
            return Err(format!("the device clock could not queue a mark: {e}"));
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let times = tl.flush()?;
        if times.len() != self.pending.len() {
            return Err(format!(
                "the device clock returned {} times for {} marks",
                times.len(),
                self.pending.len()
            ));
        }
        let pending = std::mem::take(&mut self.pending);
        for (mark, t) in pending.into_iter().zip(times) {
            self.apply(mark, t);
        }
        Ok(())
    }

    /// Records `mark` now (host clock) or queues it on the timeline.
    fn record(&mut self, mark: Mark) {
        if let Some(tl) = self.timeline.as_mut() {
            match tl.mark() {
                Ok(()) => self.pending.push(mark),
                // Reported by the next flush: figures with a missing mark would be wrong.
                Err(e) => {
                    self.timeline_error.get_or_insert(e);
                }
            }
            return;
        }
        let now = self.now();
        let origin = *self.origin.get_or_insert(now);
        self.apply(mark, now.duration_since(origin).as_secs_f64());
    }

    fn apply(&mut self, mark: Mark, t: f64) {
        match mark {
            Mark::StepStart => {
                self.step_phase_secs = [0.0; 5];
                self.current = None;
                self.step_start = Some(t);
            }
            Mark::Phase(phase) => {
                self.close_phase(t);
                self.current = Some((phase, t));
            }
            Mark::StepEnd(images) => {
                self.close_phase(t);
                let Some(start) = self.step_start.take() else {
                    return;
                };
                self.steps += 1;
                if self.steps > self.warm_after {
                    self.measured_steps += 1;
                    self.measured_secs += (t - start).max(0.0);
                    self.measured_images += images;
                    for (total, step) in self.phase_secs.iter_mut().zip(self.step_phase_secs) {
                        *total += step;
                    }
                }
            }
        }
    }

    /// Reads time from `clock` instead of [`Instant::now`]: tests drive a timer with a
    /// clock they advance by hand, so what they assert does not depend on the machine's
    /// load.
    pub fn with_clock(mut self, clock: Box<dyn Fn() -> Instant + Send>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Calls `sync` before every clock read: for a caller that wants each phase to wait for
    /// an asynchronous device (a diagnostic; it changes what is measured, since the host can
    /// no longer run ahead). annt's training loop uses [`StepTimer::with_timeline`] instead.
    pub fn with_sync(mut self, sync: Box<dyn Fn() + Send>) -> Self {
        self.sync = Some(sync);
        self
    }

    /// Completed steps so far, warm-up included (on a timeline: up to the last flush).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Whether the next completed step will still be a warm-up step.
    pub fn in_warmup(&self) -> bool {
        self.steps < self.warm_after
    }

    fn now(&self) -> Instant {
        if let Some(sync) = &self.sync {
            sync();
        }
        self.clock
            .as_ref()
            .map_or_else(Instant::now, |clock| clock())
    }

    /// Starts a step (discarding a step that was started but never ended).
    pub fn start_step(&mut self) {
        self.record(Mark::StepStart);
    }

    /// Closes the running phase at now and starts `phase`.
    pub fn phase(&mut self, phase: Phase) {
        self.record(Mark::Phase(phase));
    }

    fn close_phase(&mut self, now: f64) {
        if let Some((p, start)) = self.current.take() {
            self.step_phase_secs[p.index()] += (now - start).max(0.0);
        }
    }

    /// Closes the running phase and the step, in which `images` were trained. Does nothing
    /// when no step was started.
    pub fn end_step(&mut self, images: u64) {
        self.record(Mark::StepEnd(images));
    }

    /// The totals so far as per-step means.
    pub fn summary(&self) -> TimingSummary {
        let measured_steps = self.measured_steps;
        let per_step = |secs: f64| {
            if measured_steps > 0 {
                1000.0 * secs / measured_steps as f64
            } else {
                0.0
            }
        };
        TimingSummary {
            warmup_steps: self.steps - self.measured_steps,
            measured_steps,
            measured_images: self.measured_images,
            measured_secs: self.measured_secs,
            images_per_sec: if self.measured_secs > 0.0 {
                self.measured_images as f64 / self.measured_secs
            } else {
                0.0
            },
            ms_per_step: per_step(self.measured_secs),
            phase_ms_per_step: Phase::ALL
                .iter()
                .map(|p| (*p, per_step(self.phase_secs[p.index()])))
                .collect(),
        }
    }
}

/// A `kB` field of `/proc/self/status`, in KiB.
#[cfg(target_os = "linux")]
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(not(target_os = "linux"))]
fn proc_status_kib(_field: &str) -> Option<u64> {
    None
}

/// Peak resident memory of this process in bytes since start or since the last
/// [`reset_peak_rss`] (Linux `VmHWM` from `/proc/self/status`; None on other systems).
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|k| k * 1024)
}

/// Current resident memory of this process in bytes (Linux `VmRSS`; None elsewhere).
pub fn current_rss_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|k| k * 1024)
}

/// Resets the process's resident-memory high-water mark to the current resident size
/// (Linux: writing `5` to `/proc/self/clear_refs`, which touches nothing else). Returns
/// whether it did; false on other systems or where `/proc` is read-only.
pub fn reset_peak_rss() -> bool {
    #[cfg(target_os = "linux")]
    {
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// One run's own peak host memory ([`crate::bench::result::definitions::PEAK_HOST`]).
///
/// Where the kernel's high-water mark can be reset, the peak is the mark read at the end
/// (exact, costs nothing per step); elsewhere it is the largest resident size seen by
/// [`HostPeak::sample`], which the trainer calls at step and epoch ends.
#[derive(Debug, Clone, Copy)]
pub struct HostPeak {
    at_start: Option<u64>,
    hwm_reset: bool,
    sampled: Option<u64>,
}

/// Returns the heap's free memory to the kernel (glibc's `malloc_trim`); elsewhere a no-op.
/// glibc keeps freed blocks mapped for reuse, so without it the second arm of a session
/// would start with the first arm's peak already resident.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_freed_heap() {
    // SAFETY: malloc_trim only returns unused pages of glibc's heap to the kernel; it takes a
    // padding size and touches no memory the program still uses.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed_heap() {}

/// Keeps freed activation buffers in glibc's heap for the next step instead of unmapping
/// them (allocations up to 32 MiB come from the heap; free() trims only past 512 MiB):
/// otherwise every step's tensors are fresh `mmap`s whose first touch page-faults, which
/// cost a training step 15–25 % (alternating `annt speed` runs on resnet8-tiny). Each arm
/// still starts by returning the heap's free memory ([`release_freed_heap`]). Elsewhere a
/// no-op.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn keep_freed_heap_for_reuse() {
    // SAFETY: mallopt only changes glibc's allocation thresholds; both values are within
    // the documented ranges (M_MMAP_THRESHOLD ≤ 32 MiB on 64-bit systems).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_heap_for_reuse() {}

impl HostPeak {
    /// Starts measuring: resets the high-water mark and notes the resident size now.
    pub fn start() -> Self {
        // Memory the previous arm freed is handed back to the kernel first, so an arm's
        // resident size starts from what is live rather than from the allocator's leftovers.
        keep_freed_heap_for_reuse();
        release_freed_heap();
        let hwm_reset = reset_peak_rss();
        let at_start = current_rss_bytes();
        Self {
            at_start,
            hwm_reset,
            sampled: at_start,
        }
    }

    /// Resident memory when measuring started.
    pub fn at_start(&self) -> Option<u64> {
        self.at_start
    }

    /// Notes the resident size now (a no-op where the high-water mark does the work).
    pub fn sample(&mut self) {
        if !self.hwm_reset
            && let Some(now) = current_rss_bytes()
        {
            self.sampled = Some(self.sampled.map_or(now, |p| p.max(now)));
        }
    }

    /// The peak since [`HostPeak::start`].
    pub fn peak(&self) -> Option<u64> {
        if self.hwm_reset {
            peak_rss_bytes()
        } else {
            self.sampled
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    fn phase_ms(s: &TimingSummary, phase: Phase) -> f64 {
        s.phase_ms_per_step
            .iter()
            .find(|p| p.0 == phase)
            .map_or(0.0, |p| p.1)
    }

    /// A clock the test advances by hand (milliseconds since a fixed instant).
    fn manual_clock() -> (Arc<AtomicU64>, Box<dyn Fn() -> Instant + Send>) {
        let origin = Instant::now();
        let ms = Arc::new(AtomicU64::new(0));
        let reader = Arc::clone(&ms);
        (
            ms,
            Box::new(move || origin + Duration::from_millis(reader.load(Ordering::SeqCst))),
        )
    }

    /// A resumed timer keeps the earlier process's timed steps and treats its own first
    /// steps as warm-up again.
    #[test]
    fn a_resumed_timer_keeps_the_totals_and_warms_up_again() {
        let (ms, clock) = manual_clock();
        let mut t = StepTimer::new(1).with_clock(clock);
        for _ in 0..3 {
            t.start_step();
            t.phase(Phase::Forward);
            ms.fetch_add(10, Ordering::SeqCst);
            t.end_step(4);
        }
        let saved = t.totals();
        assert_eq!(
            (saved.steps, saved.measured_steps, saved.measured_images),
            (3, 2, 8)
        );
        let (ms2, clock2) = manual_clock();
        let mut r = StepTimer::new(1).with_clock(clock2);
        r.resume(&saved);
        assert!(r.in_warmup());
        for d in [100, 30] {
            r.start_step();
            r.phase(Phase::Forward);
            ms2.fetch_add(d, Ordering::SeqCst);
            r.end_step(4);
        }
        let s = r.summary();
        // 2 measured before + 1 after the resumed warm-up step (100 ms, excluded).
        assert_eq!(
            (s.warmup_steps, s.measured_steps, s.measured_images),
            (2, 3, 12)
        );
        assert!((s.measured_secs - 0.05).abs() < 1e-9, "{}", s.measured_secs);
    }

    #[test]
    fn phases_add_up_to_the_step_and_warmup_is_excluded() {
        let (ms, clock) = manual_clock();
        let advance = |d: u64| {
            ms.fetch_add(d, Ordering::SeqCst);
        };
        let mut t = StepTimer::new(1).with_clock(clock);
        assert!(t.in_warmup());
        for step in 0..3 {
            t.start_step();
            advance(1); // outside any phase
            t.phase(Phase::DataWait);
            advance(if step == 0 { 80 } else { 10 });
            t.phase(Phase::Forward);
            advance(20);
            t.phase(Phase::Backward);
            advance(5);
            t.phase(Phase::Forward);
            advance(5);
            t.phase(Phase::Optimizer);
            advance(3);
            t.end_step(8);
            advance(100); // between steps (a loader restart): in no step
        }
        assert!(!t.in_warmup());
        let s = t.summary();
        assert_eq!(
            (s.warmup_steps, s.measured_steps, s.measured_images),
            (1, 2, 16)
        );
        assert_eq!(
            s.phase_ms_per_step.iter().map(|p| p.0).collect::<Vec<_>>(),
            Phase::ALL
        );
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        // Each measured step: 1 + 10 + 20 + 5 + 5 + 3 = 44 ms; the 80 ms warm-up data wait
        // and the 100 ms between steps are in no figure.
        assert!(close(s.ms_per_step, 44.0), "{}", s.ms_per_step);
        assert!(close(s.measured_secs, 0.088), "{}", s.measured_secs);
        assert!(close(phase_ms(&s, Phase::DataWait), 10.0));
        assert!(
            close(phase_ms(&s, Phase::Forward), 25.0),
            "a recurring phase adds up"
        );
        assert!(close(phase_ms(&s, Phase::Backward), 5.0));
        assert!(close(phase_ms(&s, Phase::Optimizer), 3.0));
        assert_eq!(phase_ms(&s, Phase::HostToDevice), 0.0);
        let phases: f64 = s.phase_ms_per_step.iter().map(|p| p.1).sum();
        assert!(
            close(phases + 1.0, s.ms_per_step),
            "phases cover the step but the 1 ms before the first phase"
        );
        assert!(
            close(s.images_per_sec, 16.0 / 0.088),
            "{}",
            s.images_per_sec
        );
    }

    #[test]
    fn only_warmup_or_nothing_gives_zeros_not_nan() {
        let mut t = StepTimer::new(5);
        t.end_step(3); // no step started: ignored
        t.start_step();
        t.end_step(4);
        let s = t.summary();
        assert_eq!(
            (s.warmup_steps, s.measured_steps, s.measured_images),
            (1, 0, 0)
        );
        assert_eq!((s.images_per_sec, s.ms_per_step), (0.0, 0.0));
        assert!(s.phase_ms_per_step.iter().all(|p| p.1 == 0.0));
        assert_eq!(StepTimer::new(0).summary().measured_steps, 0);
    }

    #[test]
    fn the_sync_hook_runs_before_every_clock_read() {
        let calls = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&calls);
        let mut t = StepTimer::new(0).with_sync(Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        t.start_step();
        t.phase(Phase::Forward);
        t.phase(Phase::Backward);
        t.end_step(1);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    /// A device clock driven by hand: each mark takes the time the test set last.
    struct FakeTimeline {
        now: Arc<AtomicU64>,
        queued: Vec<f64>,
        flushes: Arc<AtomicU64>,
    }

    impl Timeline for FakeTimeline {
        fn mark(&mut self) -> Result<(), String> {
            self.queued
                .push(self.now.load(Ordering::SeqCst) as f64 / 1000.0);
            Ok(())
        }
        fn flush(&mut self) -> Result<Vec<f64>, String> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            Ok(std::mem::take(&mut self.queued))
        }
    }

    #[test]
    fn a_device_timeline_is_read_only_at_flushes_and_gives_the_same_figures() {
        let now = Arc::new(AtomicU64::new(0));
        let flushes = Arc::new(AtomicU64::new(0));
        let mut t = StepTimer::new(1).with_timeline(Box::new(FakeTimeline {
            now: Arc::clone(&now),
            queued: Vec::new(),
            flushes: Arc::clone(&flushes),
        }));
        let at = |ms: u64| now.store(ms, Ordering::SeqCst);
        // Three steps of 10 ms data wait + 30 ms forward; the first is warm-up.
        for step in 0..3u64 {
            at(step * 100);
            t.start_step();
            t.phase(Phase::DataWait);
            at(step * 100 + 10);
            t.phase(Phase::Forward);
            at(step * 100 + 40);
            t.end_step(8);
        }
        assert_eq!(
            flushes.load(Ordering::SeqCst),
            0,
            "no read inside the steps"
        );
        assert_eq!(
            t.summary().measured_steps,
            0,
            "nothing resolved before a flush"
        );
        t.flush().expect("flush");
        assert_eq!(flushes.load(Ordering::SeqCst), 1);
        let s = t.summary();
        assert_eq!(
            (s.warmup_steps, s.measured_steps, s.measured_images),
            (1, 2, 16)
        );
        assert!((s.ms_per_step - 40.0).abs() < 1e-9, "{s:?}");
        assert!((phase_ms(&s, Phase::DataWait) - 10.0).abs() < 1e-9);
        assert!((phase_ms(&s, Phase::Forward) - 30.0).abs() < 1e-9);
        assert!((s.images_per_sec - 200.0).abs() < 1e-6);
        t.flush().expect("an empty flush");
        assert_eq!(flushes.load(Ordering::SeqCst), 1, "nothing queued: no wait");
    }

    #[test]
    fn summary_serialises_phases_in_kebab_case() {
        let json = serde_json::to_string(&Phase::HostToDevice).expect("json");
        assert_eq!(json, "\"host-to-device\"");
        let s = StepTimer::new(0).summary();
        let back: TimingSummary =
            serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("back");
        assert_eq!(back, s);
    }

    /// Set in the child process that [`peak_rss_grows_and_resets_per_measurement`] starts.
    const CHILD_ENV: &str = "ANNT_TIMING_RSS_CHILD";

    /// The high-water mark can only be checked in a process of its own: in the shared test
    /// process another test may push it at any time. The test therefore re-runs itself
    /// alone in a child process and checks there that a touched 64 MiB block raises the
    /// peak, and that after the block is freed a new [`HostPeak`] no longer sees it — the
    /// property that lets a later, smaller arm show a lower peak than an earlier one.
    #[cfg(target_os = "linux")]
    #[test]
    fn peak_rss_grows_and_resets_per_measurement() {
        const NAME: &str = "train::timing::tests::peak_rss_grows_and_resets_per_measurement";
        if std::env::var_os(CHILD_ENV).is_some() {
            let touch = |mb: usize| {
                let mut block = vec![0u8; mb << 20];
                for page in block.chunks_mut(4096) {
                    page[0] = 1;
                }
                std::hint::black_box(&block);
                block
            };
            let first = HostPeak::start();
            drop(touch(64));
            let big = first.peak().expect("VmHWM");
            let start = first.at_start().expect("VmRSS");
            assert!(
                big >= start + (56 << 20),
                "peak grew only from {start} to {big}"
            );
            let second = HostPeak::start();
            drop(touch(8));
            let small = second.peak().expect("VmHWM");
            assert!(
                small + (40 << 20) < big,
                "a later, smaller measurement must show its own peak: {small} vs {big}"
            );
            return;
        }
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(exe)
            .args([NAME, "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD_ENV, "1")
            .output()
            .expect("child test process");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
