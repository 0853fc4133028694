//! Training-time augmentation on u8 CHW images: random crop with reflect padding and
//! horizontal flip, the standard CIFAR recipe (ResNet paper; the review's seed code).
//!
//! Implemented as one gather per output pixel through precomputed row/column maps, so
//! padding is never materialised and an image costs a few microseconds.

use crate::util::rng::Rng;
use serde::{Deserialize, Serialize};

/// Which augmentations to apply. Evaluation always uses [`Augment::NONE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Augment {
    /// Reflect-pad by this many pixels, then crop back to the original size at a random
    /// offset (0 disables).
    pub crop_padding: usize,
    /// Mirror left-right with probability ½.
    pub horizontal_flip: bool,
}

impl Default for Augment {
    fn default() -> Self {
        Self::CIFAR
    }
}

impl Augment {
    /// No augmentation.
    pub const NONE: Self = Self {
        crop_padding: 0,
        horizontal_flip: false,
    };
    /// 4-px reflect-padded random crop + horizontal flip.
    pub const CIFAR: Self = Self {
        crop_padding: 4,
        horizontal_flip: true,
    };

    /// True when this leaves images unchanged.
    #[must_use]
    pub fn is_identity(self) -> bool {
        self.crop_padding == 0 && !self.horizontal_flip
    }
}

/// Reflects an index into `0..n` the way `torch.nn.functional.pad(mode="reflect")` does
/// (the edge pixel is not repeated). Requires `n >= 2` when `i` is out of range.
#[inline]
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let mut m = i.rem_euclid(period);
    if m >= n {
        m = period - m;
    }
    m as usize
}

/// Writes an augmented copy of `src` (C×H×W) into `dst`, drawing randomness from `rng`.
pub fn augment_into(
    src: &[u8],
    dst: &mut [u8],
    height: usize,
    width: usize,
    aug: Augment,
    rng: &mut Rng,
) {
    debug_assert_eq!(src.len(), dst.len());
    if aug.is_identity() {
        dst.copy_from_slice(src);
        return;
    }
    let p = aug.crop_padding as isize;
    let (dy, dx) = if p > 0 {
        (
            rng.range_i32(-(p as i32), p as i32) as isize,
            rng.range_i32(-(p as i32), p as i32) as isize,
        )
    } else {
        (0, 0)
    };
    let flip = aug.horizontal_flip && rng.chance(0.5);
    // Column map: output x → source x (crop offset, reflection, then flip). On the stack
    // for every resolution annt trains at; on the heap beyond that.
    let mut stack = [0usize; 1024];
    let mut heap = Vec::new();
    let cols: &mut [usize] = if width <= stack.len() {
        &mut stack[..width]
    } else {
        heap.resize(width, 0);
        &mut heap
    };
    for (x, c) in cols.iter_mut().enumerate() {
        let ox = if flip { width - 1 - x } else { x };
        *c = reflect(ox as isize + dx, width);
    }
    let plane = height * width;
    for (s_plane, d_plane) in src.chunks_exact(plane).zip(dst.chunks_exact_mut(plane)) {
        for (y, d_row) in d_plane.chunks_exact_mut(width).enumerate() {
            let sy = reflect(y as isize + dy, height);
            let s_row = &s_plane[sy * width..(sy + 1) * width];
            for (d, &c) in d_row.iter_mut().zip(cols.iter()) {
                *d = s_row[c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_matches_torch_reflect_padding() {
        // torch pad([0,1,2,3], (2,2), "reflect") = [2,1,0,1,2,3,2,1]
        let got: Vec<usize> = (-2..6).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, vec![2, 1, 0, 1, 2, 3, 2, 1]);
    }

    #[test]
    fn identity_copies_and_flip_mirrors() {
        let src: Vec<u8> = (0..3 * 2 * 3).map(|v| v as u8).collect();
        let mut dst = vec![0; src.len()];
        augment_into(&src, &mut dst, 2, 3, Augment::NONE, &mut Rng::new(0));
        assert_eq!(dst, src);
        // With flip only, each image is either unchanged or mirrored; find a seed for each.
        let flip = Augment {
            crop_padding: 0,
            horizontal_flip: true,
        };
        let mut saw_mirror = false;
        let mut saw_same = false;
        for seed in 0..20 {
            augment_into(&src, &mut dst, 2, 3, flip, &mut Rng::new(seed));
            if dst == src {
                saw_same = true;
            } else {
                assert_eq!(&dst[..3], &[2, 1, 0]);
                assert_eq!(&dst[15..], &[17, 16, 15]);
                saw_mirror = true;
            }
        }
        assert!(saw_mirror && saw_same);
    }

    #[test]
    fn crop_keeps_pixels_from_the_image_and_shifts_rows() {
        // Each row of a 8x8 single value per row: crops move rows, never invent values.
        let (h, w) = (8, 8);
        let src: Vec<u8> = (0..3 * h * w).map(|i| ((i / w) % h) as u8).collect();
        let mut dst = vec![0; src.len()];
        let aug = Augment {
            crop_padding: 4,
            horizontal_flip: false,
        };
        let mut shifted = false;
        for seed in 0..50 {
            augment_into(&src, &mut dst, h, w, aug, &mut Rng::new(seed));
            for row in dst.chunks_exact(w) {
                assert!(row.iter().all(|&v| v == row[0]), "rows stay constant");
            }
            shifted |= dst != src;
        }
        assert!(shifted);
    }
}
