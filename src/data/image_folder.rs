//! Image folders: `train/<class>/*` + `test/<class>/*`, or a single `<class>/*` tree split
//! by a seeded, per-class held-out fraction.
//!
//! Images of any size and colour type are decoded with the `image` crate, the shorter side
//! resized to the working resolution and the centre cropped square (aspect ratio kept, as
//! torchvision's `Resize(r)` + `CenterCrop(r)` does); grey and alpha images become RGB.
//! Decoding runs on every core. Files with other extensions and hidden files (`.DS_Store`,
//! `._x.jpg`) are skipped; a file with an image extension that does not decode is an
//! error, never silently dropped.

use super::{CHANNELS, DataError, DataFormat, Dataset, ImageSet, Normalization, OpenOptions};
use crate::util::rng::{Rng, mix_seed};
use std::path::{Path, PathBuf};

/// Extensions decoded as images (lower case).
pub const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"];

/// Names accepted for the held-out split folder beside `train/`.
pub const TEST_DIR_NAMES: [&str; 4] = ["test", "val", "valid", "validation"];

/// Largest image dimension and decoder allocation accepted (a 16k × 16k RGBA is 1 GiB).
const MAX_DIM: u32 = 16_384;
const MAX_DECODE_BYTES: u64 = 512 << 20;

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// True when `path` has an image extension annt decodes.
#[must_use]
pub fn is_image_path(path: &Path) -> bool {
    !is_hidden(path)
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Visible subfolders of `dir`, sorted by name.
pub fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let p = e.map_err(|e| DataError::io(dir, e))?.path();
        if p.is_dir() && !is_hidden(&p) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Image files under `dir` (recursively), sorted so the order is the same on every machine.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| DataError::io(&d, e))? {
            let p = e.map_err(|e| DataError::io(&d, e))?.path();
            if is_hidden(&p) {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if is_image_path(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// True when `dir` looks like a `<class>/*` tree: at least one visible subfolder holding
/// an image somewhere below it.
#[must_use]
pub fn looks_like_class_tree(dir: &Path) -> bool {
    subdirs(dir).is_ok_and(|ds| {
        ds.iter()
            .any(|d| image_files(d).is_ok_and(|f| !f.is_empty()))
    })
}

/// Decodes one image file's bytes into `resolution`² RGB pixels in CHW order.
/// `path` is only used in error messages.
pub fn decode_image(bytes: &[u8], path: &Path, resolution: u32) -> Result<Vec<u8>, DataError> {
    let corrupt = |reason: String| DataError::CorruptImage {
        path: path.to_path_buf(),
        reason,
    };
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| corrupt(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DIM);
    limits.max_image_height = Some(MAX_DIM);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| corrupt(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(corrupt("image has no pixels".into()));
    }
    let rgb = img.to_rgb8();
    let r = resolution;
    let (w, h) = rgb.dimensions();
    // Shorter side to r, then a centred r×r crop.
    let scale = f64::from(r) / f64::from(w.min(h));
    let nw = ((f64::from(w) * scale).round() as u32).max(r);
    let nh = ((f64::from(h) * scale).round() as u32).max(r);
    let resized = if (nw, nh) == (w, h) {
        rgb
    } else {
        image::imageops::resize(&rgb, nw, nh, image::imageops::FilterType::Triangle)
    };
    let (x0, y0) = ((nw - r) / 2, (nh - r) / 2);
    let plane = (r * r) as usize;
    let mut chw = vec![0u8; CHANNELS * plane];
    for y in 0..r {
        for x in 0..r {
            let p = resized.get_pixel(x0 + x, y0 + y).0;
            let i = (y * r + x) as usize;
            chw[i] = p[0];
            chw[plane + i] = p[1];
            chw[2 * plane + i] = p[2];
        }
    }
    Ok(chw)
}

/// Decodes `files` (with their labels) into an [`ImageSet`] on every core; the first
/// failure (in file order) is returned.
fn decode_all(files: &[(PathBuf, u16)], resolution: u32) -> Result<ImageSet, DataError> {
    let r = resolution as usize;
    let mut set = ImageSet::new(r, r);
    let image_bytes = set.image_bytes();
    set.pixels = vec![0; files.len() * image_bytes];
    set.labels = files.iter().map(|(_, l)| *l).collect();
    if files.is_empty() {
        return Ok(set);
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = files.len().div_ceil(threads);
    let results: Vec<Result<(), DataError>> = std::thread::scope(|s| {
        let handles: Vec<_> = set
            .pixels
            .chunks_mut(per * image_bytes)
            .zip(files.chunks(per))
            .map(|(out, chunk)| {
                s.spawn(move || {
                    for (dst, (path, _)) in out.chunks_exact_mut(image_bytes).zip(chunk) {
                        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
                        dst.copy_from_slice(&decode_image(&bytes, path, resolution)?);
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(DataError::Worker("an image decoder thread panicked".into()))
                })
            })
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(set)
}

fn class_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn check_resolution(resolution: u32) -> Result<(), DataError> {
    if !(8..=1024).contains(&resolution) {
        return Err(DataError::InvalidOption(format!(
            "resolution {resolution} is outside 8..=1024"
        )));
    }
    Ok(())
}

/// Reads `root/train/<class>/*` and `root/<test>/<class>/*`.
pub fn open_split(root: &Path, options: &OpenOptions) -> Result<Dataset, DataError> {
    check_resolution(options.resolution)?;
    let train_dir = root.join("train");
    let test_dir = TEST_DIR_NAMES
        .iter()
        .map(|n| root.join(n))
        .find(|p| p.is_dir())
        .ok_or_else(|| DataError::MissingSplit {
            path: root.to_path_buf(),
            split: "test",
            expected: "a test/<class>/ folder beside train/".into(),
        })?;
    let class_dirs = subdirs(&train_dir)?;
    if class_dirs.is_empty() {
        return Err(DataError::NotRecognized {
            path: train_dir,
            hint: "train/ holds no class folders".into(),
        });
    }
    let classes: Vec<String> = class_dirs.iter().map(|d| class_name(d)).collect();
    let mut train_files = Vec::new();
    for (label, dir) in class_dirs.iter().enumerate() {
        let files = image_files(dir)?;
        if files.is_empty() {
            return Err(DataError::EmptyClass { path: dir.clone() });
        }
        train_files.extend(files.into_iter().map(|f| (f, label as u16)));
    }
    let mut test_files = Vec::new();
    for dir in subdirs(&test_dir)? {
        let name = class_name(&dir);
        let label = classes.iter().position(|c| *c == name).ok_or_else(|| {
            DataError::malformed(&dir, format!("class '{name}' has no folder in train/"))
        })?;
        let files = image_files(&dir)?;
        if files.is_empty() {
            return Err(DataError::EmptyClass { path: dir.clone() });
        }
        test_files.extend(files.into_iter().map(|f| (f, label as u16)));
    }
    if test_files.is_empty() {
        return Err(DataError::MissingSplit {
            path: test_dir,
            split: "test",
            expected: "class folders with images".into(),
        });
    }
    finish(root, classes, &train_files, &test_files, options.resolution)
}

/// Reads `root/<class>/*` and holds out `options.holdout_fraction` of each class (at
/// least one image when a class has two or more) as the test split, chosen by `seed`.
pub fn open_tree(root: &Path, options: &OpenOptions) -> Result<Dataset, DataError> {
    check_resolution(options.resolution)?;
    let f = options.holdout_fraction;
    if !(f > 0.0 && f < 1.0) {
        return Err(DataError::InvalidOption(format!(
            "held-out fraction {f} must be between 0 and 1"
        )));
    }
    let class_dirs = subdirs(root)?;
    let classes: Vec<String> = class_dirs.iter().map(|d| class_name(d)).collect();
    let (mut train_files, mut test_files) = (Vec::new(), Vec::new());
    for (label, dir) in class_dirs.iter().enumerate() {
        let mut files = image_files(dir)?;
        if files.is_empty() {
            return Err(DataError::EmptyClass { path: dir.clone() });
        }
        Rng::new(mix_seed(&[options.seed, label as u64, 0x5EED])).shuffle(&mut files);
        let n = files.len();
        let held = if n >= 2 {
            ((n as f32 * f).round() as usize).clamp(1, n - 1)
        } else {
            0
        };
        let mut test: Vec<_> = files.drain(..held).collect();
        // Sorted again so decoding order (and so the data set) does not depend on
        // the shuffle beyond which files were picked.
        test.sort();
        files.sort();
        test_files.extend(test.into_iter().map(|p| (p, label as u16)));
        train_files.extend(files.into_iter().map(|p| (p, label as u16)));
    }
    if test_files.is_empty() && classes.len() >= 2 {
        return Err(DataError::MissingSplit {
            path: root.to_path_buf(),
            split: "test",
            expected: "at least one class with two or more images to hold out".into(),
        });
    }
    finish(root, classes, &train_files, &test_files, options.resolution)
}

fn finish(
    root: &Path,
    classes: Vec<String>,
    train_files: &[(PathBuf, u16)],
    test_files: &[(PathBuf, u16)],
    resolution: u32,
) -> Result<Dataset, DataError> {
    // One class folder is almost always a parent folder passed one level too high
    // (`data/` holding `flowers/<class>/`): training on it would be meaningless.
    if classes.len() < 2 {
        let only = classes.first().cloned().unwrap_or_default();
        return Err(DataError::malformed(
            root,
            format!(
                "only one class folder ('{only}'); a classifier needs at least two \
                 — pass the folder that holds the class folders"
            ),
        ));
    }
    let train = decode_all(train_files, resolution)?;
    let test = decode_all(test_files, resolution)?;
    let normalization = Normalization::compute(&train);
    Ok(Dataset {
        name: class_name(root),
        format: DataFormat::ImageFolder,
        source: Some(root.to_path_buf()),
        classes,
        train,
        test,
        normalization,
    })
}
