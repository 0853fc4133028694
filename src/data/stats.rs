//! Per-channel mean/std normalisation: the published values for CIFAR, computed from the
//! training split for everything else.

use super::{CHANNELS, ImageSet};
use serde::{Deserialize, Serialize};

/// Where a data set's normalisation constants came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormalizationSource {
    /// The values the CIFAR literature uses (computed once over the official train split).
    Published,
    /// Computed here over the training split.
    Computed,
}

/// Per-channel mean and standard deviation on the [0, 1] scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub source: NormalizationSource,
}

impl Normalization {
    /// CIFAR-10's train-split statistics as used across the literature.
    pub const CIFAR10: Self = Self {
        mean: [0.4914, 0.4822, 0.4465],
        std: [0.2470, 0.2435, 0.2616],
        source: NormalizationSource::Published,
    };

    /// CIFAR-100's train-split statistics.
    pub const CIFAR100: Self = Self {
        mean: [0.5071, 0.4865, 0.4409],
        std: [0.2673, 0.2564, 0.2762],
        source: NormalizationSource::Published,
    };

    /// Mean and (population) std per channel over every pixel of `set`. A channel with
    /// zero spread gets std 1 so that normalising never divides by zero.
    #[must_use]
    pub fn compute(set: &ImageSet) -> Self {
        let plane = set.height * set.width;
        let mut sum = [0u64; CHANNELS];
        let mut sum_sq = [0u64; CHANNELS];
        for img in set.pixels.chunks_exact(set.image_bytes().max(1)) {
            for (c, chan) in img.chunks_exact(plane.max(1)).enumerate() {
                // Integer sums are exact and a little faster than f64 accumulation.
                let (mut s, mut q) = (0u64, 0u64);
                for &p in chan {
                    let p = u64::from(p);
                    s += p;
                    q += p * p;
                }
                sum[c] += s;
                sum_sq[c] += q;
            }
        }
        let n = (set.len() * plane) as f64;
        let mut mean = [0.0; 3];
        let mut std = [1.0; 3];
        if n > 0.0 {
            for c in 0..CHANNELS {
                let m = sum[c] as f64 / n;
                let var = (sum_sq[c] as f64 / n - m * m).max(0.0);
                mean[c] = (m / 255.0) as f32;
                let s = (var.sqrt() / 255.0) as f32;
                std[c] = if s > 1e-6 { s } else { 1.0 };
            }
        }
        Self {
            mean,
            std,
            source: NormalizationSource::Computed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computed_stats_match_a_hand_calculation() {
        // Two 1x1 images: R = {0, 255}, G = {51, 51}, B = {255, 255}.
        let set = ImageSet {
            pixels: vec![0, 51, 255, 255, 51, 255],
            labels: vec![0, 0],
            height: 1,
            width: 1,
        };
        let n = Normalization::compute(&set);
        assert!((n.mean[0] - 0.5).abs() < 1e-6);
        assert!((n.std[0] - 0.5).abs() < 1e-6);
        assert!((n.mean[1] - 0.2).abs() < 1e-6);
        assert_eq!(n.std[1], 1.0, "constant channel must not divide by zero");
        assert!((n.mean[2] - 1.0).abs() < 1e-6);
        assert_eq!(n.source, NormalizationSource::Computed);
    }
}
