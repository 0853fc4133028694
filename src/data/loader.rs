//! The batching pipeline: seeded per-epoch order, batches of u8 pixels, augmentation, and a
//! background prefetch thread with a bounded queue.
//!
//! Determinism: the order of an epoch depends only on (seed, epoch), and the augmentation
//! of an image only on (seed, epoch, image index) — not on the batch size, the thread, or
//! timing. So two runs with the same seed see identical batches, and a run with batch 32
//! sees exactly the images (augmented identically) that four micro-batches of 8 see, which
//! is what makes gradient-accumulation comparisons fair.
//!
//! Hand-off: batches stay u8 until the device ([`super::upload`]). Their pixel buffers are
//! a [`BatchStorage`] created by a caller-supplied allocator and handed back through
//! [`Prefetcher::recycle`], so a CUDA build can stage batches in pinned host memory by
//! supplying a pinned allocator, without changing this module.

use super::augment::{Augment, augment_into};
use super::{DataError, Dataset, ImageSet};
use crate::util::rng::{Rng, mix_seed};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

/// Which split of a data set to iterate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The images of this split.
    #[must_use]
    pub fn of(self, data: &Dataset) -> &ImageSet {
        match self {
            Self::Train => &data.train,
            Self::Test => &data.test,
        }
    }
}

/// How batches are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Drop the last, smaller batch of an epoch.
    pub drop_last: bool,
    /// Shuffle the order every epoch (training); off gives file order (evaluation).
    pub shuffle: bool,
    pub augment: Augment,
    pub seed: u64,
    /// Batches prepared ahead of the consumer (the bounded queue's capacity).
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self::train(128, 0)
    }
}

impl LoaderConfig {
    /// Shuffled, augmented, last partial batch dropped.
    #[must_use]
    pub fn train(batch_size: usize, seed: u64) -> Self {
        Self {
            batch_size,
            drop_last: true,
            shuffle: true,
            augment: Augment::CIFAR,
            seed,
            prefetch: 4,
        }
    }

    /// File order, no augmentation, every image seen once.
    #[must_use]
    pub fn eval(batch_size: usize) -> Self {
        Self {
            batch_size,
            drop_last: false,
            shuffle: false,
            augment: Augment::NONE,
            seed: 0,
            prefetch: 2,
        }
    }

    /// Batches in one epoch of `n` images.
    #[must_use]
    pub fn batches_per_epoch(&self, n: usize) -> usize {
        let b = self.batch_size.max(1);
        if self.drop_last { n / b } else { n.div_ceil(b) }
    }
}

/// The image order of one epoch.
#[must_use]
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    if shuffle {
        Rng::new(mix_seed(&[seed, epoch as u64, 0x004D_4552])).shuffle(&mut order);
    }
    order
}

/// Pixel storage of a batch. `Vec<u8>` on the CPU; `accel::pinned` supplies page-locked
/// buffers (the pinned-memory switch) by implementing this trait: `data` owns the trait and
/// knows nothing of how a buffer is pinned.
pub trait BatchStorage: Send + 'static {
    /// The bytes (at least the batch's length).
    fn as_slice(&self) -> &[u8];
    /// The bytes, writable.
    fn as_mut_slice(&mut self) -> &mut [u8];
    /// The whole buffer copied to `device` by the storage's own means (a pinned buffer's
    /// asynchronous DMA copy), as a flat u8 tensor; `None`: upload [`Self::as_slice`] as any
    /// host memory.
    fn device_copy(
        &mut self,
        _device: &candle_core::Device,
    ) -> Option<candle_core::Result<candle_core::Tensor>> {
        None
    }
}

impl BatchStorage for Vec<u8> {
    fn as_slice(&self) -> &[u8] {
        self
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self
    }
}

/// One batch, pixels still u8 (N×C×H×W).
#[derive(Debug)]
pub struct Batch<S = Vec<u8>> {
    pub epoch: usize,
    /// Position of the batch within its epoch.
    pub index: usize,
    /// Images in this batch (the last one of an epoch may be short).
    pub len: usize,
    pub height: usize,
    pub width: usize,
    /// At least `len * 3 * height * width` bytes; only that prefix is meaningful.
    pub pixels: S,
    pub labels: Vec<u32>,
    /// The images' indices in their split, in batch order (what per-image randomness is
    /// keyed on).
    pub images: Vec<u32>,
}

impl<S: BatchStorage> Batch<S> {
    /// The meaningful pixel bytes.
    #[must_use]
    pub fn pixel_bytes(&self) -> &[u8] {
        &self.pixels.as_slice()[..self.len * 3 * self.height * self.width]
    }
}

/// Fills `out` with the (augmented) images `indices` of `set` and returns their labels.
/// Augmentation randomness is keyed on (seed, epoch, image index).
pub fn fill_batch(
    set: &ImageSet,
    indices: &[u32],
    augment: Augment,
    seed: u64,
    epoch: usize,
    out: &mut [u8],
) -> Vec<u32> {
    let ib = set.image_bytes();
    let mut labels = Vec::with_capacity(indices.len());
    for (&i, dst) in indices.iter().zip(out.chunks_exact_mut(ib)) {
        let i = i as usize;
        let mut rng = Rng::new(mix_seed(&[seed, epoch as u64, i as u64]));
        augment_into(set.image(i), dst, set.height, set.width, augment, &mut rng);
        labels.push(u32::from(set.labels[i]));
    }
    labels
}

/// Makes every batch of one epoch synchronously, in order (tests, and the reference the
/// prefetcher is checked against).
#[must_use]
pub fn epoch_batches(set: &ImageSet, cfg: &LoaderConfig, epoch: usize) -> Vec<Batch> {
    let order = epoch_order(set.len(), cfg.seed, epoch, cfg.shuffle);
    let nb = cfg.batches_per_epoch(set.len());
    let b = cfg.batch_size.max(1);
    (0..nb)
        .map(|k| {
            let pixels = vec![0u8; batch_len(&order, k, b) * set.image_bytes()];
            make_batch(set, &order, k, cfg, epoch, pixels)
        })
        .collect()
}

/// Images in batch `k` of an epoch with this order and batch size `b`.
fn batch_len(order: &[u32], k: usize, b: usize) -> usize {
    ((k + 1) * b).min(order.len()) - k * b
}

/// Builds batch `k` of `epoch` into `pixels` (at least the batch's bytes long).
fn make_batch<S: BatchStorage>(
    set: &ImageSet,
    order: &[u32],
    k: usize,
    cfg: &LoaderConfig,
    epoch: usize,
    mut pixels: S,
) -> Batch<S> {
    let b = cfg.batch_size.max(1);
    let idx = &order[k * b..((k + 1) * b).min(order.len())];
    let bytes = idx.len() * set.image_bytes();
    let labels = fill_batch(
        set,
        idx,
        cfg.augment,
        cfg.seed,
        epoch,
        &mut pixels.as_mut_slice()[..bytes],
    );
    Batch {
        epoch,
        index: k,
        len: idx.len(),
        height: set.height,
        width: set.width,
        pixels,
        labels,
        images: idx.to_vec(),
    }
}

/// A background thread that prepares one epoch's batches ahead of the consumer.
///
/// Iterate it to receive batches in order. Dropping it stops the thread promptly (it checks
/// a flag between batches and never blocks forever on a full queue).
pub struct Prefetcher<S: BatchStorage = Vec<u8>> {
    rx: Option<Receiver<Batch<S>>>,
    recycle_tx: Option<SyncSender<S>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Prefetcher<Vec<u8>> {
    /// Prefetches `split` of `data` for `epoch` into ordinary heap buffers.
    #[must_use]
    pub fn new(data: Arc<Dataset>, split: Split, cfg: LoaderConfig, epoch: usize) -> Self {
        Self::with_storage(data, split, cfg, epoch, |bytes| vec![0u8; bytes])
    }
}

impl<S: BatchStorage> Prefetcher<S> {
    /// Like [`Prefetcher::new`], with buffers from `alloc(bytes)` (e.g. pinned memory).
    /// Buffers handed back with [`Prefetcher::recycle`] are reused before allocating.
    pub fn with_storage(
        data: Arc<Dataset>,
        split: Split,
        cfg: LoaderConfig,
        epoch: usize,
        alloc: impl FnMut(usize) -> S + Send + 'static,
    ) -> Self {
        Self::with_storage_from(data, split, cfg, epoch, 0, alloc)
    }

    /// Like [`Prefetcher::with_storage`], starting at batch `first` of the epoch: a run
    /// resumed from a checkpoint taken mid-epoch gets exactly the batches it had not yet
    /// trained on (the order and augmentation depend only on seed, epoch and image).
    pub fn with_storage_from(
        data: Arc<Dataset>,
        split: Split,
        cfg: LoaderConfig,
        epoch: usize,
        first: usize,
        mut alloc: impl FnMut(usize) -> S + Send + 'static,
    ) -> Self {
        let depth = cfg.prefetch.max(1);
        let (tx, rx) = sync_channel::<Batch<S>>(depth);
        let (recycle_tx, recycle_rx) = sync_channel::<S>(depth + 2);
        let stop = Arc::new(AtomicBool::new(false));
        let remaining = cfg
            .batches_per_epoch(split.of(&data).len())
            .saturating_sub(first);
        let stop_w = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("annt-loader".into())
            .spawn(move || {
                let set = split.of(&data);
                let ib = set.image_bytes();
                let b = cfg.batch_size.max(1);
                let order = epoch_order(set.len(), cfg.seed, epoch, cfg.shuffle);
                for k in first..cfg.batches_per_epoch(set.len()) {
                    if stop_w.load(Ordering::Relaxed) {
                        return;
                    }
                    let pixels = match recycle_rx.try_recv() {
                        Ok(buf) if buf.as_slice().len() >= b * ib => buf,
                        Ok(_) | Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                            alloc(b * ib)
                        }
                    };
                    let batch = make_batch(set, &order, k, &cfg, epoch, pixels);
                    if tx.send(batch).is_err() {
                        return; // consumer gone
                    }
                }
            });
        let handle = handle.ok();
        Self {
            rx: Some(rx),
            recycle_tx: Some(recycle_tx),
            stop,
            handle,
            remaining,
        }
    }

    /// Gives a batch's buffer back for reuse (drops it if the pool is full).
    pub fn recycle(&self, pixels: S) {
        if let Some(tx) = &self.recycle_tx {
            let _ = tx.try_send(pixels);
        }
    }

    /// Batches not yet received.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.remaining
    }
}

impl<S: BatchStorage> Iterator for Prefetcher<S> {
    type Item = Result<Batch<S>, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let got = self.rx.as_ref()?.recv();
        match got {
            Ok(b) => {
                self.remaining -= 1;
                Some(Ok(b))
            }
            Err(_) => {
                self.remaining = 0;
                Some(Err(DataError::Worker(
                    "the loader thread ended early (it could not start or panicked)".into(),
                )))
            }
        }
    }
}

impl<S: BatchStorage> Drop for Prefetcher<S> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a producer waiting on a full queue.
        self.rx.take();
        self.recycle_tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DataFormat, Normalization};

    fn toy(n: usize) -> Arc<Dataset> {
        let mut set = ImageSet::new(8, 8);
        for i in 0..n {
            set.pixels.extend((0..3 * 64).map(|p| (i * 7 + p) as u8));
            set.labels.push((i % 3) as u16);
        }
        Arc::new(Dataset {
            name: "toy".into(),
            format: DataFormat::Builtin,
            source: None,
            classes: vec!["a".into(), "b".into(), "c".into()],
            normalization: Normalization::compute(&set),
            test: set.clone(),
            train: set,
        })
    }

    #[test]
    fn order_is_a_seeded_permutation_that_changes_per_epoch() {
        let a = epoch_order(100, 1, 0, true);
        assert_eq!(a, epoch_order(100, 1, 0, true));
        assert_ne!(a, epoch_order(100, 1, 1, true));
        assert_ne!(a, epoch_order(100, 2, 0, true));
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(epoch_order(5, 1, 0, false), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn drop_last_controls_the_short_batch() {
        let data = toy(10);
        let mut cfg = LoaderConfig::train(4, 0);
        assert_eq!(epoch_batches(&data.train, &cfg, 0).len(), 2);
        cfg.drop_last = false;
        let b = epoch_batches(&data.train, &cfg, 0);
        assert_eq!(b.iter().map(|b| b.len).collect::<Vec<_>>(), vec![4, 4, 2]);
    }

    #[test]
    fn prefetcher_yields_exactly_the_synchronous_batches() {
        let data = toy(37);
        let cfg = LoaderConfig {
            drop_last: false,
            prefetch: 2,
            ..LoaderConfig::train(5, 9)
        };
        let want = epoch_batches(&data.train, &cfg, 3);
        let pf = Prefetcher::new(Arc::clone(&data), Split::Train, cfg, 3);
        let mut got = Vec::new();
        let mut pf = pf;
        while let Some(b) = pf.next() {
            let b = b.expect("batch");
            got.push((b.pixel_bytes().to_vec(), b.labels.clone()));
            pf.recycle(b.pixels);
        }
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.0, w.pixels);
            assert_eq!(g.1, w.labels);
        }
        // Started part-way (a resumed run): the same batches from there on.
        let pf = Prefetcher::with_storage_from(Arc::clone(&data), Split::Train, cfg, 3, 5, |n| {
            vec![0u8; n]
        });
        assert_eq!(pf.remaining(), want.len() - 5);
        let rest: Vec<Vec<u32>> = pf.map(|b| b.expect("batch").labels).collect();
        let want_rest: Vec<Vec<u32>> = want[5..].iter().map(|b| b.labels.clone()).collect();
        assert_eq!(rest, want_rest);
    }

    #[test]
    fn augmentation_does_not_depend_on_batch_size() {
        let data = toy(16);
        let big = epoch_batches(&data.train, &LoaderConfig::train(16, 5), 0);
        let small = epoch_batches(&data.train, &LoaderConfig::train(4, 5), 0);
        let joined: Vec<u8> = small.iter().flat_map(|b| b.pixels.clone()).collect();
        assert_eq!(joined, big[0].pixels);
    }

    #[test]
    fn dropping_a_prefetcher_midway_stops_its_thread() {
        let data = toy(1000);
        let mut pf = Prefetcher::new(data, Split::Train, LoaderConfig::train(2, 0), 0);
        assert!(pf.next().is_some());
        drop(pf); // must not hang
    }
}
