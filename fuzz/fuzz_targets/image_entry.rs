//! One image-folder entry: decode any bytes as an image, resize and crop to 32×32 CHW.
#![no_main]

use annt::data::image_folder::decode_image;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(px) = decode_image(data, Path::new("class/image.png"), 32) {
        assert_eq!(px.len(), 3 * 32 * 32);
    }
});
