//! The pinned-memory switch: where a training batch waits between the loader and the device.
//!
//! - Off (and always on the CPU): the loader fills ordinary heap buffers; an upload copies
//!   from pageable memory, which the CUDA driver stages through its own page-locked buffer
//!   and which blocks the host until the copy is done.
//! - On, with CUDA: the loader thread fills page-locked (pinned) host buffers allocated with
//!   `cuMemHostAlloc` (plain, not write-combined), and the upload is an asynchronous DMA copy
//!   queued on the device's stream: the host goes on at once, and the copy runs as soon as
//!   the previous step's kernels on that stream are done. A buffer handed back to the loader
//!   is not overwritten before its copy has finished (cudarc records an event per buffer and
//!   waits on it before giving out the bytes).
//!
//! Host-to-device time is its own phase of the step breakdown, so the effect is measured.
//! Status: the CUDA path compiles in the `cuda` build but has not yet run on a GPU (none was
//! available to this work); the CPU path is what the tests cover.

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
}

/// The loader's allocator for this run: pinned buffers when the switch is on and the device
/// is a CUDA device, heap buffers otherwise.
pub fn allocator(
    pinned: bool,
    device: &candle_core::Device,
) -> candle_core::Result<Box<dyn FnMut(usize) -> HostBuffer + Send>> {
    #[cfg(feature = "cuda")]
    if pinned && device.is_cuda() {
        let mut alloc = cuda::allocator(device)?;
        return Ok(Box::new(move |bytes| HostBuffer::Pinned(alloc(bytes))));
    }
    let _ = (pinned, device);
    Ok(Box::new(|bytes| HostBuffer::Pageable(vec![0u8; bytes])))
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // cudarc's pinned allocation and uninitialised device allocation
pub mod cuda {
    use std::sync::Arc;

    use candle_core::cuda_backend::CudaStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaContext, PinnedHostSlice};
    use candle_core::op::BackpropOp;
    use candle_core::{Device, Storage, Tensor};

    /// Page-locked host memory for one batch.
    pub struct PinnedBuffer(PinnedHostSlice<u8>);

    impl PinnedBuffer {
        pub fn as_slice(&self) -> &[u8] {
            // Waits for a pending copy out of this buffer; an error here means the CUDA
            // context is broken, which no caller could recover from.
            self.0
                .as_slice()
                .expect("pinned host buffer: waiting for its copy failed (CUDA context lost)")
        }
        pub fn as_mut_slice(&mut self) -> &mut [u8] {
            self.0
                .as_mut_slice()
                .expect("pinned host buffer: waiting for its copy failed (CUDA context lost)")
        }
        pub fn len(&self) -> usize {
            self.0.len()
        }
        pub fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
    }

    /// Allocates pinned buffers in `device`'s context (from the loader thread).
    pub fn allocator(
        device: &Device,
    ) -> candle_core::Result<impl FnMut(usize) -> PinnedBuffer + Send + 'static> {
        let ctx: Arc<CudaContext> = device.as_cuda_device()?.cuda_stream().context().clone();
        Ok(move |bytes: usize| {
            // SAFETY: flags 0 asks for plain page-locked memory (not write-combined, so host
            // reads stay fast); the loader writes every byte of a batch before it is copied.
            let slice = unsafe { ctx.alloc_pinned_with_flags::<u8>(bytes, 0) }
                .expect("cannot allocate pinned host memory (page-locked memory exhausted?)");
            PinnedBuffer(slice)
        })
    }

    /// Queues the copy of the whole buffer to a fresh device buffer on `device`'s stream and
    /// returns it as a flat u8 tensor (the caller narrows it to the batch).
    pub fn upload(buffer: &PinnedBuffer, device: &Device) -> candle_core::Result<Tensor> {
        let dev = device.as_cuda_device()?;
        let stream = dev.cuda_stream();
        let len = buffer.len();
        // SAFETY: the copy queued next on the same stream overwrites every byte before any
        // kernel can read them.
        let mut dst = unsafe { stream.alloc::<u8>(len) }
            .map_err(|e| candle_core::Error::Msg(format!("device allocation: {e}")))?;
        stream
            .memcpy_htod(&buffer.0, &mut dst)
            .map_err(|e| candle_core::Error::Msg(format!("host-to-device copy: {e}")))?;
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
        let mut alloc = allocator(true, &candle_core::Device::Cpu).expect("allocator");
        let mut b = alloc(12);
        assert!(matches!(b, HostBuffer::Pageable(_)));
        b.as_mut_slice()[3] = 7;
        assert_eq!(b.as_slice().len(), 12);
        assert_eq!(b.as_slice()[3], 7);
    }
}
