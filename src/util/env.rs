//! The environment every result records: versions, CPU, threads, GPU, build and time, so a
//! speed-up measured on one machine is never compared blindly with one from another.

use serde::{Deserialize, Serialize};

/// candle-core's version. There is no build script to read it from Cargo.lock, so it is
/// written here and a test fails when Cargo.lock moves to another version.
pub const CANDLE_VERSION: &str = "0.11.1";

/// The Cargo features that change what a run measures, with whether this binary was built
/// with each. Add a feature here when Cargo.toml gains one that affects results.
pub const FEATURE_FLAGS: &[(&str, bool)] = &[
    ("gui", cfg!(feature = "gui")),
    ("cuda", cfg!(feature = "cuda")),
    ("cudnn", cfg!(feature = "cudnn")),
];

/// The environment variable that sets how long Candle's element-wise workers spin.
pub const CANDLE_SPIN_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Makes Candle's element-wise CPU workers sleep as soon as an op is done: call first
/// thing in `main`, before any thread starts.
///
/// Candle 0.11 runs its element-wise CPU ops (an add, a broadcast multiply, the gradient
/// sums of its backward pass) on a pool of its own beside rayon's, and each of its workers
/// spins 25,000 times after every op before it parks. While rayon keeps every core busy
/// with convolutions those spins take a core away from them: 16 % of the samples of a
/// resnet8-tiny bf16 profile on 2 cores were a Candle worker spinning, and parking at once
/// made training 10 % faster in fp32 and 4 % in bf16 (`annt speed --model resnet8-tiny
/// --batch 64`, four alternating pairs). A spin limit the user set is kept.
#[allow(unsafe_code)] // std::env::set_var (see SAFETY)
pub fn quiet_candle_workers() {
    if std::env::var_os(CANDLE_SPIN_VAR).is_none() {
        // SAFETY: setting a variable is unsound only while another thread may read the
        // environment; `main` calls this before it starts any thread (Candle reads the
        // variable when its pool is first built, on the first large element-wise op).
        unsafe { std::env::set_var(CANDLE_SPIN_VAR, "1") };
    }
}

/// The CPU's half-precision dot-product instructions, as Linux lists them in
/// `/proc/cpuinfo` (`avx512_bf16`, `amx_bf16`, `avx512_fp16`, `amx_fp16`); empty elsewhere or
/// when it has none. Reports name them when a half-precision arm ran the numerics-only path
/// (fp16, or bf16 with `ANNT_CPU_BF16=off`), so that a reader knows what could have run.
pub fn cpu_half_instructions() -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return Vec::new();
    };
    half_instructions_in(&info)
}

fn half_instructions_in(cpuinfo: &str) -> Vec<String> {
    let Some(flags) = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split(':').nth(1))
    else {
        return Vec::new();
    };
    let present: Vec<&str> = flags.split_whitespace().collect();
    ["avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16"]
        .into_iter()
        .filter(|f| present.contains(f))
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod half_instruction_tests {
    #[test]
    fn the_flags_line_is_read_and_only_half_precision_instructions_are_kept() {
        let info =
            "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16 sse\n";
        assert_eq!(
            super::half_instructions_in(info),
            ["avx512_bf16", "amx_bf16"]
        );
        assert!(super::half_instructions_in("flags : fpu avx2").is_empty());
        assert!(super::half_instructions_in("no flags here").is_empty());
    }
}

/// The build profile (`"debug"` or `"release"`, from `debug_assertions`) followed by every
/// enabled entry of [`FEATURE_FLAGS`]: a debug build's timings are not comparable with a
/// release build's.
pub fn build_features() -> Vec<String> {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    std::iter::once(profile)
        .chain(
            FEATURE_FLAGS
                .iter()
                .filter(|(_, on)| *on)
                .map(|(name, _)| *name),
        )
        .map(str::to_string)
        .collect()
}

/// The accelerator a run used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// Marketing name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Driver version.
    pub driver: String,
    /// CUDA runtime version.
    pub cuda: String,
    /// Total device memory in bytes.
    pub memory_bytes: u64,
}

/// Where and with what a result was produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// This crate's version.
    pub annt_version: String,
    /// candle-core's version ([`CANDLE_VERSION`]).
    pub candle_version: String,
    /// Operating system (`std::env::consts::OS`).
    pub os: String,
    /// CPU architecture (`std::env::consts::ARCH`).
    pub arch: String,
    /// CPU model from `/proc/cpuinfo`, or `"unknown"`.
    pub cpu_model: String,
    /// Logical CPUs this process may use (`available_parallelism`, which honours affinity
    /// masks and cgroup quotas).
    pub cpu_cores: usize,
    /// Threads Candle's CPU backend uses (`RAYON_NUM_THREADS`, default all cores).
    pub rayon_threads: usize,
    /// Build profile and enabled features; see [`build_features`].
    pub build_features: Vec<String>,
    /// The GPU, when the run used one.
    pub gpu: Option<GpuInfo>,
    /// When the environment was captured: UTC, RFC 3339 (`YYYY-MM-DDTHH:MM:SSZ`).
    pub captured_at: String,
}

impl Environment {
    /// Reads the environment of this process now. `gpu` is left `None`: the GPU is known
    /// only to the code that opened the device, which adds it with [`Environment::with_gpu`].
    pub fn capture() -> Self {
        Self {
            annt_version: env!("CARGO_PKG_VERSION").into(),
            candle_version: CANDLE_VERSION.into(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            cpu_model: cpu_model(),
            cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            rayon_threads: candle_core::utils::get_num_threads(),
            build_features: build_features(),
            gpu: None,
            captured_at: utc_now_rfc3339(),
        }
    }

    /// The hook through which the device code records the GPU it ran on.
    pub fn with_gpu(mut self, gpu: GpuInfo) -> Self {
        self.gpu = Some(gpu);
        self
    }

    /// One line for logs and report footers.
    pub fn one_line(&self) -> String {
        let gpu = self.gpu.as_ref().map_or("no GPU".to_string(), |g| {
            format!(
                "{} ({:.0} GiB, driver {}, CUDA {})",
                g.name,
                g.memory_bytes as f64 / (1u64 << 30) as f64,
                g.driver,
                g.cuda
            )
        });
        format!(
            "annt {} · Candle {} · {} ({} cores, {} threads) · {} · {}/{} · {} · {}",
            self.annt_version,
            self.candle_version,
            self.cpu_model,
            self.cpu_cores,
            self.rayon_threads,
            gpu,
            self.os,
            self.arch,
            self.build_features.join("+"),
            self.captured_at
        )
    }
}

/// The CPU model from `/proc/cpuinfo`: `model name` on x86, else the keys other
/// architectures use (`Model`/`Hardware` on ARM boards, `cpu model` on MIPS, `uarch` on
/// RISC-V); `"unknown"` when none is present or the file is missing (non-Linux systems).
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| cpu_model_from(&s))
        .unwrap_or_else(|| "unknown".into())
}

fn cpu_model_from(cpuinfo: &str) -> Option<String> {
    ["model name", "Model", "Hardware", "cpu model", "uarch"]
        .iter()
        .find_map(|key| {
            cpuinfo.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                let v = v.trim();
                (k.trim() == *key && !v.is_empty()).then(|| v.to_string())
            })
        })
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339_utc(secs)
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`, with Howard Hinnant's
/// civil-from-days algorithm (exact for the proleptic Gregorian calendar) so no date crate
/// is needed.
pub fn rfc3339_utc(secs: u64) -> String {
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
    fn candle_version_matches_cargo_lock() {
        let lock = include_str!("../../Cargo.lock");
        let versions: Vec<&str> = lock
            .split("[[package]]")
            .filter(|p| p.lines().any(|l| l.trim() == "name = \"candle-core\""))
            .filter_map(|p| {
                p.lines()
                    .find_map(|l| l.trim().strip_prefix("version = \""))
                    .and_then(|v| v.strip_suffix('"'))
            })
            .collect();
        assert_eq!(versions, vec![CANDLE_VERSION], "update CANDLE_VERSION");
        assert_eq!(Environment::capture().candle_version, CANDLE_VERSION);
    }

    #[test]
    fn capture_fills_the_fields() {
        let e = Environment::capture();
        assert!(e.cpu_cores >= 1 && e.rayon_threads >= 1);
        assert_eq!(e.annt_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(
            (e.os.as_str(), e.arch.as_str()),
            (std::env::consts::OS, std::env::consts::ARCH)
        );
        assert!(e.gpu.is_none());
        if cfg!(target_os = "linux") {
            assert!(
                !e.cpu_model.is_empty() && e.cpu_model != "unknown",
                "{}",
                e.cpu_model
            );
        }
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        assert_eq!(e.build_features[0], profile);
        assert_eq!(
            e.build_features.len(),
            1 + FEATURE_FLAGS.iter().filter(|f| f.1).count()
        );
        let line = e.one_line();
        assert!(
            line.contains("Candle 0.11") && line.contains("no GPU"),
            "{line}"
        );
        let json = serde_json::to_string(&e).expect("json");
        assert_eq!(serde_json::from_str::<Environment>(&json).expect("back"), e);
    }

    #[test]
    fn captured_at_is_a_plausible_utc_timestamp() {
        let at = Environment::capture().captured_at;
        assert_eq!(at.len(), 20, "{at}");
        assert!(at.ends_with('Z'), "{at}");
        let field = |r: std::ops::Range<usize>| at[r].parse::<u32>().expect("number");
        assert!(field(0..4) >= 2024, "{at}");
        assert!((1..=12).contains(&field(5..7)), "{at}");
        assert!((1..=31).contains(&field(8..10)), "{at}");
        assert!(
            field(11..13) < 24 && field(14..16) < 60 && field(17..19) < 60,
            "{at}"
        );
        let seps: String = [4, 7, 10, 13, 16].iter().map(|&i| &at[i..=i]).collect();
        assert_eq!(seps, "--T::");
    }

    #[test]
    fn civil_dates_are_exact() {
        // date -u -d @SECS +%Y-%m-%dT%H:%M:%SZ
        for (secs, expect) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_709_251_199, "2024-02-29T23:59:59Z"),
            (1_735_689_600, "2025-01-01T00:00:00Z"),
            (4_107_542_400, "2100-03-01T00:00:00Z"),
        ] {
            assert_eq!(rfc3339_utc(secs), expect);
        }
    }

    #[test]
    fn gpu_hook_and_cpu_model_keys() {
        let e = Environment::capture().with_gpu(GpuInfo {
            name: "NVIDIA H100".into(),
            driver: "550.54".into(),
            cuda: "12.4".into(),
            memory_bytes: 80 << 30,
        });
        assert!(
            e.one_line()
                .contains("NVIDIA H100 (80 GiB, driver 550.54, CUDA 12.4)")
        );
        assert_eq!(
            cpu_model_from("processor\t: 0\nmodel name\t: AMD EPYC 9654\n").as_deref(),
            Some("AMD EPYC 9654")
        );
        assert_eq!(
            cpu_model_from("processor : 0\nBogoMIPS : 50\nModel : Raspberry Pi 5\n").as_deref(),
            Some("Raspberry Pi 5")
        );
        assert_eq!(cpu_model_from("processor : 0\n"), None);
    }
}
