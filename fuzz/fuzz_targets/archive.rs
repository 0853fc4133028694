//! Archives: gzip + tar parsing, entry-path checks, layout detection and CIFAR loading
//! from the archive's folders.
#![no_main]

use annt::data::OpenOptions;
use annt::data::detect::open_archive_bytes;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = open_archive_bytes(
        data,
        Path::new("cifar-10-binary.tar.gz"),
        &OpenOptions::default(),
    );
});
