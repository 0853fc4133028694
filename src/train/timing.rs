//! Honest step timing: per-phase wall time on a monotonic clock, warm-up steps excluded
//! (and counted), an optional device synchronisation before every clock read, and the
//! process's peak memory.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Phases of a training step, timed separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    DataWait,
    HostToDevice,
    Forward,
    Backward,
    Optimizer,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::DataWait,
        Phase::HostToDevice,
        Phase::Forward,
        Phase::Backward,
        Phase::Optimizer,
    ];
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

/// What a run's timing comes to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimingSummary {
    pub warmup_steps: u64,
    pub measured_steps: u64,
    pub measured_images: u64,
    pub measured_secs: f64,
    pub images_per_sec: f64,
    pub ms_per_step: f64,
    /// Mean milliseconds per measured step in each phase, in [`Phase::ALL`] order.
    pub phase_ms_per_step: Vec<(Phase, f64)>,
}

/// Accumulates phase times over steps; the first `warmup_steps` steps are not counted.
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

impl StepTimer {
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
    /// Synchronises the device before every clock read (CUDA work is asynchronous: without
    /// it, a phase would be charged for the kernels it merely queued).
    pub fn with_sync(mut self, sync: Box<dyn Fn() + Send>) -> Self {
        self.sync = Some(sync);
        self
    }
    fn now(&self) -> Instant {
        if let Some(sync) = &self.sync {
            sync();
        }
        Instant::now()
    }
    pub fn start_step(&mut self) {
        self.step_phase_secs = [0.0; 5];
        self.current = None;
        self.step_start = Some(self.now());
    }
    /// Closes the running phase and starts `phase`.
    pub fn phase(&mut self, phase: Phase) {
        let now = self.now();
        if let Some((p, start)) = self.current.take() {
            self.step_phase_secs[p.index()] += now.duration_since(start).as_secs_f64();
        }
        self.current = Some((phase, now));
    }
    /// Closes the step; `images` trained in it.
    pub fn end_step(&mut self, images: u64) {
        let now = self.now();
        if let Some((p, start)) = self.current.take() {
            self.step_phase_secs[p.index()] += now.duration_since(start).as_secs_f64();
        }
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

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`; None elsewhere).
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|k| k * 1024)
}

/// Current resident memory in bytes (Linux `VmRSS`; None elsewhere).
pub fn current_rss_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|k| k * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn phases_add_up_and_warmup_is_excluded() {
        let mut t = StepTimer::new(1);
        for step in 0..3 {
            t.start_step();
            t.phase(Phase::DataWait);
            std::thread::sleep(Duration::from_millis(if step == 0 { 60 } else { 10 }));
            t.phase(Phase::Forward);
            std::thread::sleep(Duration::from_millis(20));
            t.end_step(8);
        }
        let s = t.summary();
        assert_eq!(
            (s.warmup_steps, s.measured_steps, s.measured_images),
            (1, 2, 16)
        );
        let phases: f64 = s.phase_ms_per_step.iter().map(|p| p.1).sum();
        assert!(
            (phases - s.ms_per_step).abs() < 0.05 * s.ms_per_step,
            "{phases} vs {}",
            s.ms_per_step
        );
        assert!(
            s.ms_per_step < 50.0,
            "the 60 ms warm-up step must not count: {}",
            s.ms_per_step
        );
        let fwd = s
            .phase_ms_per_step
            .iter()
            .find(|p| p.0 == Phase::Forward)
            .map_or(0.0, |p| p.1);
        assert!(fwd >= 19.0, "{fwd}");
    }

    #[test]
    fn peak_memory_covers_what_is_resident() {
        // Other tests share this process, so only relations that hold under concurrency
        // are checked: a touched 64 MB block is resident, and the peak is at least that.
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        let current = current_rss_bytes().expect("Linux");
        let peak = peak_rss_bytes().expect("Linux");
        assert!(current >= 64 << 20, "{current}");
        assert!(peak >= current, "{peak} < {current}");
    }
}
