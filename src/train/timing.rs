//! Honest step timing: per-phase wall time on a monotonic clock, warm-up steps excluded
//! (and counted), an optional device synchronisation before every clock read, and the
//! process's peak memory.
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

/// Accumulates per-phase wall time over steps with [`Instant`] (monotonic, so clock
/// adjustments cannot produce negative or inflated times), excluding the first
/// `warmup_steps` steps from the totals.
///
/// A step is `start_step`, any number of `phase` calls (a phase may recur within a step, as
/// forward and backward do under gradient accumulation; its times add up), then `end_step`.
/// Time between `start_step` and the first `phase` belongs to no phase.
pub struct StepTimer {
    warmup_steps: u64,
    steps: u64,
    measured_images: u64,
    measured_secs: f64,
    phase_secs: [f64; 5],
    step_phase_secs: [f64; 5],
    step_start: Option<Instant>,
    current: Option<(Phase, Instant)>,
    sync: Option<Box<dyn Fn() + Send>>,
}

impl std::fmt::Debug for StepTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepTimer")
            .field("warmup_steps", &self.warmup_steps)
            .field("steps", &self.steps)
            .field("in_step", &self.step_start.is_some())
            .field("synchronised", &self.sync.is_some())
            .finish_non_exhaustive()
    }
}

impl StepTimer {
    /// A timer that ignores the first `warmup_steps` completed steps.
    pub fn new(warmup_steps: u64) -> Self {
        Self {
            warmup_steps,
            steps: 0,
            measured_images: 0,
            measured_secs: 0.0,
            phase_secs: [0.0; 5],
            step_phase_secs: [0.0; 5],
            step_start: None,
            current: None,
            sync: None,
        }
    }

    /// Calls `sync` before every clock read. On CUDA the caller passes a closure that calls
    /// `device.synchronize()`: GPU work is asynchronous, and without it a phase would be
    /// charged only for queuing its kernels and the next blocking call for running them.
    pub fn with_sync(mut self, sync: Box<dyn Fn() + Send>) -> Self {
        self.sync = Some(sync);
        self
    }

    /// Completed steps so far, warm-up included.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Whether the next completed step will still be a warm-up step.
    pub fn in_warmup(&self) -> bool {
        self.steps < self.warmup_steps
    }

    fn now(&self) -> Instant {
        if let Some(sync) = &self.sync {
            sync();
        }
        Instant::now()
    }

    /// Starts a step (discarding a step that was started but never ended).
    pub fn start_step(&mut self) {
        self.step_phase_secs = [0.0; 5];
        self.current = None;
        self.step_start = Some(self.now());
    }

    /// Closes the running phase at now and starts `phase`.
    pub fn phase(&mut self, phase: Phase) {
        let now = self.now();
        self.close_phase(now);
        self.current = Some((phase, now));
    }

    fn close_phase(&mut self, now: Instant) {
        if let Some((p, start)) = self.current.take() {
            self.step_phase_secs[p.index()] += now.duration_since(start).as_secs_f64();
        }
    }

    /// Closes the running phase and the step, in which `images` were trained. Does nothing
    /// when no step was started.
    pub fn end_step(&mut self, images: u64) {
        let now = self.now();
        self.close_phase(now);
        let Some(start) = self.step_start.take() else {
            return;
        };
        self.steps += 1;
        if self.steps > self.warmup_steps {
            self.measured_secs += now.duration_since(start).as_secs_f64();
            self.measured_images += images;
            for (total, step) in self.phase_secs.iter_mut().zip(self.step_phase_secs) {
                *total += step;
            }
        }
    }

    /// The totals so far as per-step means.
    pub fn summary(&self) -> TimingSummary {
        let measured_steps = self.steps.saturating_sub(self.warmup_steps);
        let per_step = |secs: f64| {
            if measured_steps > 0 {
                1000.0 * secs / measured_steps as f64
            } else {
                0.0
            }
        };
        TimingSummary {
            warmup_steps: self.steps.min(self.warmup_steps),
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

/// Peak resident memory of this process in bytes (Linux `VmHWM` from `/proc/self/status`;
/// None on other systems). A high-water mark, so it reflects the largest batch pipeline and
/// model state the run ever held, not whatever is resident when the run ends.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|k| k * 1024)
}

/// Current resident memory of this process in bytes (Linux `VmRSS`; None elsewhere).
pub fn current_rss_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|k| k * 1024)
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

    #[test]
    fn phases_add_up_to_the_step_and_warmup_is_excluded() {
        let mut t = StepTimer::new(1);
        assert!(t.in_warmup());
        for step in 0..3 {
            t.start_step();
            t.phase(Phase::DataWait);
            std::thread::sleep(Duration::from_millis(if step == 0 { 80 } else { 10 }));
            t.phase(Phase::Forward);
            std::thread::sleep(Duration::from_millis(20));
            t.phase(Phase::Backward);
            std::thread::sleep(Duration::from_millis(5));
            t.phase(Phase::Forward);
            std::thread::sleep(Duration::from_millis(5));
            t.phase(Phase::Optimizer);
            t.end_step(8);
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
        let phases: f64 = s.phase_ms_per_step.iter().map(|p| p.1).sum();
        assert!(
            (phases - s.ms_per_step).abs() < 0.03 * s.ms_per_step,
            "{phases} vs {}",
            s.ms_per_step
        );
        assert!(
            s.ms_per_step >= 40.0 && s.ms_per_step < 75.0,
            "the 80 ms warm-up step must not count: {}",
            s.ms_per_step
        );
        assert!(phase_ms(&s, Phase::DataWait) >= 10.0);
        assert!(
            phase_ms(&s, Phase::DataWait) < 75.0,
            "warm-up data wait leaked"
        );
        assert!(
            phase_ms(&s, Phase::Forward) >= 25.0,
            "a recurring phase adds up"
        );
        assert!(phase_ms(&s, Phase::Backward) >= 5.0);
        assert_eq!(phase_ms(&s, Phase::HostToDevice), 0.0);
        let rate = s.measured_images as f64 / s.measured_secs;
        assert!((s.images_per_sec - rate).abs() < 1e-9);
        assert!((s.measured_secs * 1000.0 / 2.0 - s.ms_per_step).abs() < 1e-9);
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

    #[test]
    fn summary_serialises_phases_in_kebab_case() {
        let json = serde_json::to_string(&Phase::HostToDevice).expect("json");
        assert_eq!(json, "\"host-to-device\"");
        let s = StepTimer::new(0).summary();
        let back: TimingSummary =
            serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("back");
        assert_eq!(back, s);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn peak_memory_covers_what_is_resident() {
        // Other tests share this process, so only relations that hold under concurrency
        // are checked here: a touched 64 MB block is resident, and the peak is at least that.
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        let current = current_rss_bytes().expect("Linux");
        let peak = peak_rss_bytes().expect("Linux");
        assert!(current >= 64 << 20, "{current}");
        assert!(peak >= current, "{peak} < {current}");
    }

    /// Set in the child process that [`peak_rss_grows_after_touching_64_mb`] starts.
    const CHILD_ENV: &str = "ANNT_TIMING_RSS_CHILD";

    /// Growth of the high-water mark can only be checked in a process of its own: in the
    /// shared test process another test may already have pushed the peak higher. The test
    /// therefore re-runs itself alone in a child process and checks there.
    #[cfg(target_os = "linux")]
    #[test]
    fn peak_rss_grows_after_touching_64_mb() {
        const NAME: &str = "train::timing::tests::peak_rss_grows_after_touching_64_mb";
        if std::env::var_os(CHILD_ENV).is_some() {
            let before = peak_rss_bytes().expect("VmHWM");
            let mut block = vec![0u8; 64 << 20];
            for page in block.chunks_mut(4096) {
                page[0] = 1;
            }
            std::hint::black_box(&block);
            let current = current_rss_bytes().expect("VmRSS");
            let after = peak_rss_bytes().expect("VmHWM");
            assert!(after >= current, "peak {after} < current {current}");
            assert!(
                after >= before + (56 << 20),
                "peak grew only from {before} to {after}"
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
