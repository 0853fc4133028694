//! The `cuda` build compiles annt's own CUDA kernels (`src/models/layers/kernels/cuda/
//! annt_kernels.cu`) to PTX with nvcc; the program loads the PTX at run time (the driver JIT-
//! compiles it for the GPU it finds). Builds without the `cuda` feature do nothing here.
//!
//! nvcc comes from `$NVCC` or `PATH` (tools/cuda/setup-toolchain.sh installs CUDA 13.0's);
//! `CUDA_COMPUTE_CAP` picks the PTX's virtual architecture (default 80, whose PTX every GPU
//! from Ampere on can JIT-compile; 90 for H100/H200 only).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/models/layers/kernels/cuda/annt_kernels.cu");
    println!("cargo::rerun-if-env-changed=NVCC");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("annt_kernels.ptx");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let cap = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .and_then(|c| c.trim().parse::<u32>().ok())
        .unwrap_or(80);
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("--gpu-architecture=compute_{cap}"))
        .arg("src/models/layers/kernels/cuda/annt_kernels.cu")
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            panic!("nvcc failed ({s}) compiling src/models/layers/kernels/cuda/annt_kernels.cu")
        }
        Err(e) => {
            panic!("the `cuda` feature needs nvcc ({nvcc}: {e}); see tools/cuda/setup-toolchain.sh")
        }
    }
}
