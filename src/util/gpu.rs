//! The CUDA devices this process can use, for the device pickers and for the environment
//! recorded in reports.
//!
//! Enumeration goes through the CUDA driver API directly (cuInit, cuDeviceGet…) rather
//! than by opening a Candle device per ordinal: that would create a context (and allocate
//! memory) on every card just to read its name.

use super::env::GpuInfo;

/// One CUDA device: its ordinal and what the driver says about it.
#[derive(Clone, Debug, PartialEq)]
pub struct CudaDevice {
    pub ordinal: usize,
    pub info: GpuInfo,
    /// Compute capability (major, minor), e.g. (9, 0) for an H100.
    pub compute_capability: (i32, i32),
}

/// Every CUDA device, or why there are none: a build without the `cuda` feature, no
/// driver library, or a driver that reports no device. The reason is meant for the user.
pub fn cuda_devices() -> Result<Vec<CudaDevice>, GpuError> {
    imp::cuda_devices()
}

/// Why no CUDA device can be listed; each says what a user can do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    #[error("this build has no CUDA support (the annt-cuda build has it)")]
    NotBuiltIn,
    #[error("the NVIDIA driver library (libcuda.so.1) could not be loaded")]
    NoDriver,
    #[error("the NVIDIA driver reports no CUDA device")]
    NoDevice,
    /// The driver answered with an error (its own words, and what was asked).
    #[error("CUDA: {0}")]
    Driver(String),
}

/// The device `ordinal`, if it exists.
pub fn cuda_device(ordinal: usize) -> Option<GpuInfo> {
    cuda_devices()
        .ok()?
        .into_iter()
        .find(|d| d.ordinal == ordinal)
        .map(|d| d.info)
}

/// Resets the high-water mark of `device`'s stream-ordered memory pool (where Candle's
/// tensors live) and keeps freed memory in the pool (release threshold = ∞) so it is not
/// returned to the driver at every synchronisation. Returns the bytes in use now, or `None`
/// on a device without a pool (the CPU).
pub fn pool_reset_peak(device: &candle_core::Device) -> Option<u64> {
    imp::pool_reset_peak(device)
}

/// The most bytes `device`'s memory pool held in use since [`pool_reset_peak`]: the
/// activation peak of a run (weights, optimizer state, activations, gradients, cuDNN
/// workspaces), not `total − free` after a sync. A driver query; it does not wait for the
/// device.
pub fn pool_peak_bytes(device: &candle_core::Device) -> Option<u64> {
    imp::pool_peak_bytes(device)
}

/// The bytes `device`'s memory pool holds in use now (a driver query that does not wait for
/// the device; `None` on the CPU).
pub fn pool_current_bytes(device: &candle_core::Device) -> Option<u64> {
    imp::pool_current_bytes(device)
}

/// Turns off cudarc's per-allocation event tracking on a freshly opened CUDA device: it
/// creates two events for every tensor allocated (thousands per step) to order work across
/// streams, and annt issues all of a device's work on one stream from one thread (the
/// training thread). A no-op on the CPU.
pub fn single_stream(device: &candle_core::Device) {
    imp::single_stream(device);
}

#[cfg(not(feature = "cuda"))]
mod imp {
    pub fn cuda_devices() -> Result<Vec<super::CudaDevice>, super::GpuError> {
        Err(super::GpuError::NotBuiltIn)
    }
    pub fn pool_reset_peak(_: &candle_core::Device) -> Option<u64> {
        None
    }
    pub fn single_stream(_: &candle_core::Device) {}
    pub fn pool_peak_bytes(_: &candle_core::Device) -> Option<u64> {
        None
    }
    pub fn pool_current_bytes(_: &candle_core::Device) -> Option<u64> {
        None
    }
}

// The driver API's version and memory queries have no safe wrapper in cudarc 0.19; each
// unsafe call below states why it is sound. (Opening a `CudaContext` per device would be
// safe but would create a context, and reserve memory, on every card just to list it.)
#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod imp {
    use super::{CudaDevice, GpuError, GpuInfo};
    use candle_core::cuda_backend::cudarc::driver::{result, sys};

    /// The NVIDIA kernel module's version (e.g. "580.65.06"), as Linux exposes it.
    fn kernel_module_version() -> Option<String> {
        let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
        super::module_version_from(&text)
    }

    /// `cuDriverGetVersion`'s 13000 → "13.0": the newest CUDA the driver supports.
    fn version_string(v: i32) -> String {
        format!("{}.{}", v / 1000, (v % 1000) / 10)
    }

    pub fn cuda_devices() -> Result<Vec<CudaDevice>, GpuError> {
        // cudarc loads libcuda lazily and panics when it is missing; a machine without the
        // NVIDIA driver must get a sentence, not a crash.
        std::panic::catch_unwind(list).unwrap_or(Err(GpuError::NoDriver))
    }

    /// The default memory pool of `device`'s GPU (cudarc's `alloc` is `cuMemAllocAsync`,
    /// which allocates from it).
    fn default_pool(device: &candle_core::Device) -> Option<sys::CUmemoryPool> {
        let dev = device.as_cuda_device().ok()?;
        let stream = dev.cuda_stream();
        let ctx = stream.context();
        ctx.bind_to_thread().ok()?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: writes one pool handle for a device obtained from a live context.
        unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }
            .result()
            .ok()?;
        Some(pool)
    }

    fn pool_attr(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Option<u64> {
        let mut value: u64 = 0;
        // SAFETY: the used-memory and threshold attributes are cuuint64_t, written to `value`.
        unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut value as *mut u64).cast()) }
            .result()
            .ok()?;
        Some(value)
    }

    pub fn pool_reset_peak(device: &candle_core::Device) -> Option<u64> {
        use sys::CUmemPool_attribute::{
            CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
            CU_MEMPOOL_ATTR_USED_MEM_HIGH,
        };
        let pool = default_pool(device)?;
        let mut keep: u64 = u64::MAX;
        let mut zero: u64 = 0;
        // SAFETY: both attributes take a cuuint64_t; the high-water mark may only be set to 0.
        unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut keep as *mut u64).cast(),
            )
            .result()
            .ok()?;
            sys::cuMemPoolSetAttribute(
                pool,
                CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut zero as *mut u64).cast(),
            )
            .result()
            .ok()?;
        }
        pool_attr(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
    }

    pub fn pool_peak_bytes(device: &candle_core::Device) -> Option<u64> {
        pool_attr(
            default_pool(device)?,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
        )
    }

    pub fn pool_current_bytes(device: &candle_core::Device) -> Option<u64> {
        pool_attr(
            default_pool(device)?,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
        )
    }

    pub fn single_stream(device: &candle_core::Device) {
        if let Ok(dev) = device.as_cuda_device() {
            // SAFETY: annt uses each CUDA device from one stream (the training thread's;
            // `engine::session` opens the device on the thread that trains on it), so no
            // tensor is ever used on a second stream — the only case event tracking orders.
            unsafe { dev.disable_event_tracking() };
        }
    }

    fn list() -> Result<Vec<CudaDevice>, GpuError> {
        let driver_error = |what: String| move |e| GpuError::Driver(format!("{what}: {e}"));
        result::init().map_err(driver_error("could not start".into()))?;
        let mut api = 0i32;
        // SAFETY: writes one int; the driver API is initialised above.
        let cuda = unsafe { sys::cuDriverGetVersion(&mut api) }
            .result()
            .map_or_else(|_| "unknown".to_string(), |_| version_string(api));
        let driver = kernel_module_version().unwrap_or_else(|| "unknown".into());
        let count = result::device::get_count().map_err(driver_error("device count".into()))?;
        if count <= 0 {
            return Err(GpuError::NoDevice);
        }
        (0..count)
            .map(|i| {
                let dev = result::device::get(i).map_err(driver_error(format!("cuda:{i}")))?;
                let name =
                    result::device::get_name(dev).map_err(driver_error(format!("cuda:{i}")))?;
                // SAFETY: `dev` came from `device::get` just above.
                let memory = unsafe { result::device::total_mem(dev) }
                    .map_err(driver_error(format!("cuda:{i}")))?;
                let attr = |a| {
                    // SAFETY: `dev` came from `device::get` just above.
                    unsafe { result::device::get_attribute(dev, a) }.unwrap_or(0)
                };
                let compute_capability = (
                    attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                    attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
                );
                Ok(CudaDevice {
                    ordinal: i as usize,
                    info: GpuInfo {
                        name,
                        driver: driver.clone(),
                        cuda: cuda.clone(),
                        memory_bytes: memory as u64,
                    },
                    compute_capability,
                })
            })
            .collect()
    }
}

/// The version in `/proc/driver/nvidia/version`'s first line ("NVRM version: NVIDIA UNIX
/// x86_64 Kernel Module  580.65.06  Sun Jul 27 …").
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn module_version_from(text: &str) -> Option<String> {
    let line = text.lines().next()?;
    let rest = line.split("Kernel Module").nth(1)?;
    rest.split_whitespace().next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_version_is_read_from_the_kernel_module_line() {
        let text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 06:00:00 UTC 2025\nGCC version:  gcc 12\n";
        assert_eq!(module_version_from(text).as_deref(), Some("580.65.06"));
        assert_eq!(module_version_from("garbage"), None);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_says_why_it_lists_no_gpu() {
        let e = cuda_devices().expect_err("no CUDA in this build");
        assert_eq!(e, GpuError::NotBuiltIn);
        assert!(e.to_string().contains("no CUDA support"), "{e}");
        assert_eq!(cuda_device(0), None);
    }
}
