//! The pinned-memory switch: where a training batch waits between the loader and the device.
//!
//! - Off (and always on the CPU): the loader fills ordinary heap buffers; an upload copies
//!   from pageable memory, which the CUDA driver stages through its own page-locked buffer
//!   and which blocks the host until the copy is done.
//! - On, with CUDA: the loader thread fills page-locked (pinned) host buffers allocated with
//!   `cuMemHostAlloc` (plain, not write-combined), and the upload is an asynchronous DMA copy
//!   queued on the device's stream: the host goes on at once, and the copy runs as soon as
//!   the previous step's kernels on that stream are done. annt records an event after each
//!   copy and a writer waits on it, so a buffer handed back to the loader is never
//!   overwritten while its copy is in flight. The buffers are allocated once per run
//!   ([`Staging`]) and reused across epochs.
//!
//! Host-to-device time is its own phase of the step breakdown, so the effect is measured.
//! Status: the CUDA path compiles (and is linted in CI) in the `cuda` build but has not yet
//! run on a GPU; `annt selftest` checks the upload and the reuse race the moment one exists.

use crate::data::loader::BatchStorage;

/// A batch's pixel buffer: ordinary heap memory, or page-locked host memory on CUDA.
pub enum HostBuffer {
    Pageable(Vec<u8>),
    #[cfg(feature = "cuda")]
    Pinned(cuda::PinnedBuffer),
}

impl BatchStorage for HostBuffer {
    fn as_slice(&self) -> &[u8] {
        match self {
            HostBuffer::Pageable(v) => v,
            #[cfg(feature = "cuda")]
            HostBuffer::Pinned(p) => p.as_slice(),
        }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            HostBuffer::Pageable(v) => v,
            #[cfg(feature = "cuda")]
            HostBuffer::Pinned(p) => p.as_mut_slice(),
        }
    }
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    fn device_copy(
        &mut self,
        device: &candle_core::Device,
    ) -> Option<candle_core::Result<candle_core::Tensor>> {
        match self {
            HostBuffer::Pageable(_) => None,
            #[cfg(feature = "cuda")]
            HostBuffer::Pinned(p) => Some(cuda::upload(p, device)),
        }
    }
}

/// Where this run's batches wait: created once per run, so pinned buffers are allocated once
/// and reused across epochs (page-locking memory is slow: `cuMemHostAlloc` costs about as
/// much as the copies it speeds up).
pub struct Staging {
    #[cfg(feature = "cuda")]
    pinned: Option<cuda::PinnedPool>,
}

impl Staging {
    /// Pinned buffers when the switch is on and the device is a CUDA device, heap buffers
    /// otherwise.
    pub fn new(pinned: bool, device: &candle_core::Device) -> candle_core::Result<Self> {
        #[cfg(feature = "cuda")]
        {
            let pinned = if pinned && device.is_cuda() {
                Some(cuda::PinnedPool::new(device)?)
            } else {
                None
            };
            Ok(Self { pinned })
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (pinned, device);
            Ok(Self {})
        }
    }

    /// The loader's allocator for one epoch: buffers from the run's pool, or from the heap.
    pub fn allocator(&self) -> Box<dyn FnMut(usize) -> HostBuffer + Send> {
        #[cfg(feature = "cuda")]
        if let Some(pool) = &self.pinned {
            let pool = pool.clone();
            return Box::new(move |bytes| HostBuffer::Pinned(pool.take(bytes)));
        }
        Box::new(|bytes| HostBuffer::Pageable(vec![0u8; bytes]))
    }
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // cudarc's pinned allocation and uninitialised device allocation
pub mod cuda {
    use std::sync::{Arc, Mutex};

    use candle_core::cuda_backend::CudaStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaContext, CudaEvent, PinnedHostSlice};
    use candle_core::op::BackpropOp;
    use candle_core::{Device, Storage, Tensor};

    /// A pinned buffer and the event after the last copy out of it (if any).
    struct Slot {
        slice: PinnedHostSlice<u8>,
        copied: Option<CudaEvent>,
    }

    impl Slot {
        /// Waits until the device has finished copying out of this buffer. cudarc's own guard
        /// cannot be relied on: it waits on an event it records only when the context runs
        /// several streams, which annt's training does not.
        fn wait(&mut self) {
            if let Some(e) = self.copied.take() {
                // An error means the CUDA context is lost; the next device call reports it.
                let _ = e.synchronize();
            }
        }
    }

    /// The run's pinned buffers: a buffer dropped by the loader or the trainer goes back
    /// here (with its pending copy's event) instead of being freed.
    #[derive(Clone)]
    pub struct PinnedPool {
        ctx: Arc<CudaContext>,
        free: Arc<Mutex<Vec<Slot>>>,
    }

    impl PinnedPool {
        pub fn new(device: &Device) -> candle_core::Result<Self> {
            Ok(Self {
                ctx: device.as_cuda_device()?.cuda_stream().context().clone(),
                free: Arc::new(Mutex::new(Vec::new())),
            })
        }

        /// A buffer of at least `bytes`, reused when one is free.
        pub fn take(&self, bytes: usize) -> PinnedBuffer {
            let reused = self.free.lock().ok().and_then(|mut free| {
                let i = free.iter().position(|s| s.slice.len() >= bytes)?;
                Some(free.swap_remove(i))
            });
            let slot = reused.unwrap_or_else(|| {
                // SAFETY: flags 0 asks for plain page-locked memory (not write-combined, so
                // host reads stay fast); the loader writes every byte of a batch before it is
                // copied.
                let slice = unsafe { self.ctx.alloc_pinned_with_flags::<u8>(bytes, 0) }
                    .expect("cannot allocate pinned host memory (page-locked memory exhausted?)");
                Slot {
                    slice,
                    copied: None,
                }
            });
            PinnedBuffer {
                slot: Some(slot),
                pool: Arc::clone(&self.free),
            }
        }

        /// Buffers waiting in the pool (for tests and the self-test).
        pub fn free_buffers(&self) -> usize {
            self.free.lock().map_or(0, |f| f.len())
        }
    }

    /// Page-locked host memory for one batch.
    pub struct PinnedBuffer {
        slot: Option<Slot>,
        pool: Arc<Mutex<Vec<Slot>>>,
    }

    impl Drop for PinnedBuffer {
        fn drop(&mut self) {
            if let (Some(slot), Ok(mut free)) = (self.slot.take(), self.pool.lock()) {
                free.push(slot);
            }
        }
    }

    impl PinnedBuffer {
        fn slot(&self) -> &Slot {
            self.slot
                .as_ref()
                .expect("a pinned buffer holds its slot until dropped")
        }
        fn slot_mut(&mut self) -> &mut Slot {
            self.slot
                .as_mut()
                .expect("a pinned buffer holds its slot until dropped")
        }
        /// The bytes, for reading (a pending copy only reads them too, so no wait).
        pub fn as_slice(&self) -> &[u8] {
            self.slot()
                .slice
                .as_slice()
                .expect("pinned host buffer: CUDA context lost")
        }
        /// The bytes, for writing: first waits for a pending copy out of this buffer, so a
        /// batch is never overwritten while the device still reads it.
        pub fn as_mut_slice(&mut self) -> &mut [u8] {
            let slot = self.slot_mut();
            slot.wait();
            slot.slice
                .as_mut_slice()
                .expect("pinned host buffer: CUDA context lost")
        }
        pub fn len(&self) -> usize {
            self.slot().slice.len()
        }
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }
    }

    /// Queues the copy of the whole buffer to a fresh device buffer on `device`'s stream,
    /// records an event after it (what the next writer waits on) and returns the device
    /// copy as a flat u8 tensor (the caller narrows it to the batch). Returns at once.
    pub fn upload(buffer: &mut PinnedBuffer, device: &Device) -> candle_core::Result<Tensor> {
        let dev = device.as_cuda_device()?;
        let stream = dev.cuda_stream();
        let len = buffer.len();
        // SAFETY: the copy queued next on the same stream overwrites every byte before any
        // kernel can read them.
        let mut dst = unsafe { stream.alloc::<u8>(len) }
            .map_err(|e| candle_core::Error::Msg(format!("device allocation: {e}")))?;
        let slot = buffer.slot_mut();
        slot.wait();
        stream
            .memcpy_htod(&slot.slice, &mut dst)
            .map_err(|e| candle_core::Error::Msg(format!("host-to-device copy: {e}")))?;
        slot.copied = Some(
            stream
                .record_event(None)
                .map_err(|e| candle_core::Error::Msg(format!("recording the copy: {e}")))?,
        );
        let storage = CudaStorage::wrap_cuda_slice(dst, dev.clone());
        Ok(Tensor::from_storage(
            Storage::Cuda(storage),
            len,
            BackpropOp::none(),
            false,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_cuda_the_switch_gives_ordinary_buffers() {
        let staging = Staging::new(true, &candle_core::Device::Cpu).expect("staging");
        let mut alloc = staging.allocator();
        let mut b = alloc(12);
        assert!(matches!(b, HostBuffer::Pageable(_)));
        b.as_mut_slice()[3] = 7;
        assert_eq!(b.as_slice().len(), 12);
        assert_eq!(b.as_slice()[3], 7);
    }
}
