//! CIFAR binary records and class-name files: any bytes → records or a typed error.
#![no_main]

use annt::data::ImageSet;
use annt::data::cifar_binary::{RecordLayout, parse_label_names, parse_records};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.bin");
    for layout in [
        RecordLayout::CIFAR10,
        RecordLayout::CIFAR100_FINE,
        RecordLayout::CIFAR100_COARSE,
    ] {
        let classes = usize::from(data.first().copied().unwrap_or(10));
        let mut set = ImageSet::new(32, 32);
        if let Ok(n) = parse_records(data, path, layout, classes, &mut set) {
            assert_eq!(set.len(), n);
            assert_eq!(set.pixels.len(), n * 3072);
            assert!(set.labels.iter().all(|&l| usize::from(l) < classes));
        }
    }
    let _ = parse_label_names(data, path);
});
