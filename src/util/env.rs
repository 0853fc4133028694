//! The environment every result records: versions, CPU, threads, GPU, build, time.

use serde::{Deserialize, Serialize};

/// candle-core's version, checked against Cargo.lock by a test.
pub const CANDLE_VERSION: &str = "0.11.1";

/// Cargo features this binary was built with (extended as features are added).
pub fn build_features() -> Vec<String> {
    let mut f = vec![
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .to_string(),
    ];
    if cfg!(feature = "cuda") {
        f.push("cuda".into());
    }
    if cfg!(feature = "cudnn") {
        f.push("cudnn".into());
    }
    f
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub name: String,
    pub driver: String,
    pub cuda: String,
    pub memory_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub annt_version: String,
    pub candle_version: String,
    pub os: String,
    pub arch: String,
    pub cpu_model: String,
    pub cpu_cores: usize,
    /// Threads Candle's CPU backend uses (`RAYON_NUM_THREADS`, default all cores).
    pub rayon_threads: usize,
    pub build_features: Vec<String>,
    pub gpu: Option<GpuInfo>,
    /// UTC, RFC 3339.
    pub captured_at: String,
}

impl Environment {
    pub fn capture() -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            annt_version: env!("CARGO_PKG_VERSION").into(),
            candle_version: CANDLE_VERSION.into(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            cpu_model,
            cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            rayon_threads: candle_core::utils::get_num_threads(),
            build_features: build_features(),
            gpu: None,
            captured_at: utc_now_rfc3339(),
        }
    }
    pub fn with_gpu(mut self, gpu: GpuInfo) -> Self {
        self.gpu = Some(gpu);
        self
    }
    pub fn one_line(&self) -> String {
        let gpu = self.gpu.as_ref().map_or("no GPU".to_string(), |g| {
            format!("{} (driver {}, CUDA {})", g.name, g.driver, g.cuda)
        });
        format!(
            "annt {} · Candle {} · {} ({} cores, {} threads) · {} · {}/{} · {}",
            self.annt_version,
            self.candle_version,
            self.cpu_model,
            self.cpu_cores,
            self.rayon_threads,
            gpu,
            self.os,
            self.arch,
            self.build_features.join("+")
        )
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, no date crate needed).
fn utc_now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_fills_the_fields_and_the_candle_version_matches_cargo_lock() {
        let e = Environment::capture();
        assert!(e.cpu_cores >= 1 && e.rayon_threads >= 1);
        let lock = include_str!("../../Cargo.lock");
        let entry = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"candle-core\""))
            .expect("candle-core in Cargo.lock");
        assert!(
            entry.contains(&format!("version = \"{CANDLE_VERSION}\"")),
            "update CANDLE_VERSION"
        );
        let year: i32 = e.captured_at[..4].parse().expect("year");
        assert!(
            year >= 2024 && e.captured_at.ends_with('Z') && e.captured_at.len() == 20,
            "{}",
            e.captured_at
        );
        assert!(e.one_line().contains("Candle 0.11"));
    }
}
