//! Output vectors written once, without being zero-filled first.
//!
//! Every element-wise kernel returns a fresh `Vec` that Candle then owns as a tensor's
//! storage. Made with `zeroed` and then overwritten, each one is written twice: in a
//! resnet8-tiny bf16 step (`annt speed --model resnet8-tiny --batch 64 --modes amp-bf16`,
//! `perf record --call-graph dwarf`) 10.6 % of the samples were that zero-fill. [`filled`]
//! writes each element once, from an iterator per chunk.
//!
//! Its one `unsafe` is a `Vec::set_len` (the crate lists every place allowed `unsafe` in
//! ARCHITECTURE.md). Soundness does not depend on the caller:
//! the iterator only supplies values, and every slot it leaves unwritten (a short iterator)
//! is written with zero here, so all `len` elements are initialised before the length is
//! set.

#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::real::Real;

/// `len` values in parallel chunks of `chunk` (the last one shorter): chunk `i` holds what
/// `values(i)` yields, its first `chunk` items — zeros after them if it yields fewer.
pub fn filled<T, I, F>(len: usize, chunk: usize, values: F) -> Vec<T>
where
    T: Real,
    I: Iterator<Item = T>,
    F: Fn(usize) -> I + Sync,
{
    let mut out: Vec<T> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, slots)| write_all(slots, values(i)));
    // SAFETY: the capacity is at least `len` (`with_capacity`), and `write_all` wrote every
    // one of the first `len` slots (the chunks above cover them exactly once), so they
    // hold initialised values of `T` (a `Copy` type with no drop).
    unsafe { out.set_len(len) };
    out
}

/// Every slot written: from `values` while it lasts, zero after.
#[inline]
fn write_all<T: Real>(slots: &mut [MaybeUninit<T>], values: impl Iterator<Item = T>) {
    let mut written = 0;
    for (slot, v) in slots.iter_mut().zip(values) {
        slot.write(v);
        written += 1;
    }
    for slot in &mut slots[written..] {
        slot.write(T::zero());
    }
}

#[cfg(test)]
mod tests {
    use super::filled;

    #[test]
    fn every_chunk_holds_its_values_in_order() {
        let v: Vec<f32> = filled(10, 4, |i| (0..4).map(move |j| (i * 4 + j) as f32));
        assert_eq!(v, (0..10).map(|k| k as f32).collect::<Vec<_>>());
    }

    #[test]
    fn a_short_iterator_leaves_zeros_and_a_long_one_is_cut() {
        let v: Vec<f64> = filled(7, 3, |i| std::iter::repeat_n(1.0 + i as f64, 2 + i));
        assert_eq!(v, [1.0, 1.0, 0.0, 2.0, 2.0, 2.0, 3.0]);
        let empty: Vec<f32> = filled(0, 16, |_| std::iter::repeat(1.0));
        assert!(empty.is_empty());
    }
}
