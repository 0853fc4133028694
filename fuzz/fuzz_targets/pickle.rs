//! The safe pickle reader, through the CIFAR python batch and meta parsers.
#![no_main]

use annt::data::cifar_pickle::{parse_batch, parse_meta};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("data_batch_1");
    if let Ok(b) = parse_batch(data, path) {
        assert_eq!(b.data.len(), b.rows * 3072);
    }
    let _ = parse_meta(data, path);
});
