//! The last step of the pipeline: u8 batch → normalised f32 tensor on the device.
//!
//! Pixels cross to the device as u8 (a quarter of f32's bytes), then are converted,
//! normalised and, when a model wants another resolution (224 for pretrained
//! EfficientNet/ViT), resized there with bilinear interpolation — once per batch on the
//! device rather than per image on the CPU.

use super::loader::{Batch, BatchStorage};
use super::{CHANNELS, DataError, Normalization};
use candle_core::{DType, Device, Tensor};

/// A batch on the device, ready for a model.
#[derive(Debug, Clone)]
pub struct DeviceBatch {
    /// f32, N×3×H×W, normalised.
    pub images: Tensor,
    /// u32, N.
    pub labels: Tensor,
}

/// Uploads a batch, normalises it with `norm` and optionally resizes it to
/// `resize`×`resize`.
pub fn to_device<S: BatchStorage>(
    batch: &Batch<S>,
    norm: &Normalization,
    device: &Device,
    resize: Option<usize>,
) -> Result<DeviceBatch, DataError> {
    let (n, h, w) = (batch.len, batch.height, batch.width);
    let raw = Tensor::from_slice(batch.pixel_bytes(), (n, CHANNELS, h, w), device)?;
    finish(&raw, &batch.labels, norm, device, resize)
}

/// Like [`to_device`] for the training loader's buffers: storage with its own device copy
/// ([`BatchStorage::device_copy`], a pinned buffer's asynchronous DMA on CUDA) goes up that
/// way, any other as [`to_device`] does.
pub fn to_device_staged<S: BatchStorage>(
    batch: &mut Batch<S>,
    norm: &Normalization,
    device: &Device,
    resize: Option<usize>,
) -> Result<DeviceBatch, DataError> {
    let (n, h, w) = (batch.len, batch.height, batch.width);
    if let Some(flat) = batch.pixels.device_copy(device) {
        let raw = flat?
            .narrow(0, 0, n * CHANNELS * h * w)?
            .reshape((n, CHANNELS, h, w))?;
        return finish(&raw, &batch.labels, norm, device, resize);
    }
    to_device(batch, norm, device, resize)
}

/// u8 pixels on the device → normalised (and resized) f32, plus the labels.
fn finish(
    raw: &Tensor,
    labels: &[u32],
    norm: &Normalization,
    device: &Device,
    resize: Option<usize>,
) -> Result<DeviceBatch, DataError> {
    let (n, _, h, w) = raw.dims4()?;
    let images = normalize_u8(raw, norm)?;
    let images = match resize {
        Some(r) if r != h || r != w => images.upsample_bilinear2d(r, r, false)?,
        _ => images,
    };
    let labels = Tensor::from_slice(labels, n, device)?;
    Ok(DeviceBatch { images, labels })
}

/// `(x / 255 - mean) / std` per channel, as one multiply-add on the device.
pub fn normalize_u8(raw: &Tensor, norm: &Normalization) -> Result<Tensor, DataError> {
    let device = raw.device();
    let scale: Vec<f32> = norm.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
    let shift: Vec<f32> = norm
        .mean
        .iter()
        .zip(norm.std)
        .map(|(m, s)| -m / s)
        .collect();
    let scale = Tensor::from_vec(scale, (1, CHANNELS, 1, 1), device)?;
    let shift = Tensor::from_vec(shift, (1, CHANNELS, 1, 1), device)?;
    Ok(raw
        .to_dtype(DType::F32)?
        .broadcast_mul(&scale)?
        .broadcast_add(&shift)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::stats::NormalizationSource;

    fn batch() -> Batch {
        // 2 images of 2x2: image 0 all 0, image 1 all 255.
        let mut pixels = vec![0u8; 12];
        pixels.extend(vec![255u8; 12]);
        Batch {
            epoch: 0,
            index: 0,
            len: 2,
            height: 2,
            width: 2,
            pixels,
            labels: vec![4, 9],
            images: vec![0, 1],
        }
    }

    #[test]
    fn normalises_per_channel_and_keeps_labels() {
        let norm = Normalization {
            mean: [0.5, 0.25, 0.0],
            std: [0.5, 0.25, 1.0],
            source: NormalizationSource::Computed,
        };
        let b = to_device(&batch(), &norm, &Device::Cpu, None).expect("upload");
        assert_eq!(b.images.dims(), &[2, 3, 2, 2]);
        let v: Vec<f32> = b
            .images
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("vals");
        let at = |n: usize, c: usize, i: usize| v[n * 12 + c * 4 + i];
        // image 0 (zeros): (0 - m) / s
        assert!((at(0, 0, 0) - -1.0).abs() < 1e-6);
        assert!((at(0, 1, 0) - -1.0).abs() < 1e-6);
        assert!((at(0, 2, 0) - 0.0).abs() < 1e-6);
        // image 1 (255): (1 - m) / s
        assert!((at(1, 0, 3) - 1.0).abs() < 1e-6);
        assert!((at(1, 1, 3) - 3.0).abs() < 1e-6);
        assert!((at(1, 2, 3) - 1.0).abs() < 1e-6);
        assert_eq!(b.labels.to_vec1::<u32>().expect("labels"), vec![4, 9]);
    }

    #[test]
    fn resizes_on_the_device() {
        let norm = Normalization::CIFAR10;
        let b = to_device(&batch(), &norm, &Device::Cpu, Some(6)).expect("upload");
        assert_eq!(b.images.dims(), &[2, 3, 6, 6]);
        // A constant image stays constant under bilinear resizing.
        let img1 = b.images.get(1).and_then(|t| t.get(0)).expect("img");
        let vals: Vec<f32> = img1.flatten_all().and_then(|t| t.to_vec1()).expect("vals");
        let first = vals[0];
        assert!(vals.iter().all(|v| (v - first).abs() < 1e-5));
    }
}
