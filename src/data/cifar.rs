//! Turning the files of a CIFAR folder or archive (binary or python version, CIFAR-10 or
//! CIFAR-100) into a [`Dataset`].
//!
//! The class-name files are optional: CIFAR's class lists are fixed and published, so when
//! a user has only the batches, the official names are used (and the count still checked
//! against every label).

use super::cifar_binary::{self, PIXEL_BYTES, RecordLayout};
use super::cifar_pickle;
use super::source::FileSource;
use super::{Cifar100Labels, DataError, DataFormat, Dataset, ImageSet, Normalization, OpenOptions};
use std::path::Path;

/// CIFAR-10's classes, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// CIFAR-100's 20 coarse classes (superclasses), in label order.
pub const CIFAR100_COARSE_CLASSES: [&str; 20] = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
];

/// CIFAR-100's 100 fine classes, in label order.
pub const CIFAR100_FINE_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// Which CIFAR layout a set of file names is, if any. Used by detection; `Err` carries two
/// layouts found side by side (a folder mixing formats).
pub fn classify(names: &[String]) -> Result<Option<DataFormat>, (DataFormat, DataFormat)> {
    let has = |n: &str| names.iter().any(|x| x == n);
    let mut found = Vec::new();
    if has("test_batch.bin") || !numbered(names, "data_batch_", ".bin").is_empty() {
        found.push(DataFormat::Cifar10Binary);
    }
    if has("train.bin") || has("test.bin") {
        found.push(DataFormat::Cifar100Binary);
    }
    if has("test_batch") || has("batches.meta") || !numbered(names, "data_batch_", "").is_empty() {
        found.push(DataFormat::Cifar10Python);
    }
    if (has("train") || has("test")) && (has("meta") || (has("train") && has("test"))) {
        found.push(DataFormat::Cifar100Python);
    }
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        [a, b, ..] => Err((*a, *b)),
    }
}

/// `prefix<N>suffix` names sorted by N.
fn numbered(names: &[String], prefix: &str, suffix: &str) -> Vec<String> {
    let mut v: Vec<(u64, String)> = names
        .iter()
        .filter_map(|n| {
            let mid = n.strip_prefix(prefix)?.strip_suffix(suffix)?;
            (!mid.is_empty() && mid.bytes().all(|b| b.is_ascii_digit()))
                .then(|| (mid.parse().ok(), n.clone()))
                .and_then(|(k, n)| Some((k?, n)))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

/// Reads a CIFAR data set of the given layout from `src`.
pub fn load(
    src: &dyn FileSource,
    format: DataFormat,
    options: &OpenOptions,
) -> Result<Dataset, DataError> {
    let names = src.names();
    match format {
        DataFormat::Cifar10Binary => load_binary10(src, &names),
        DataFormat::Cifar100Binary => load_binary100(src, options.cifar100_labels),
        DataFormat::Cifar10Python => load_python10(src, &names),
        DataFormat::Cifar100Python => load_python100(src, options.cifar100_labels),
        DataFormat::ImageFolder | DataFormat::Builtin | DataFormat::Random => Err(
            DataError::InvalidOption(format!("{} is not a CIFAR layout", format.label())),
        ),
    }
}

fn missing(src: &dyn FileSource, split: &'static str, expected: &str) -> DataError {
    DataError::MissingSplit {
        path: src.root(),
        split,
        expected: expected.to_owned(),
    }
}

fn official(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn names_from_text(
    src: &dyn FileSource,
    file: &str,
    fallback: &[&str],
) -> Result<Vec<String>, DataError> {
    if src.has(file) {
        cifar_binary::parse_label_names(&src.read(file)?, &src.path_of(file))
    } else {
        Ok(official(fallback))
    }
}

fn dataset(
    name: &str,
    format: DataFormat,
    src: &dyn FileSource,
    classes: Vec<String>,
    train: ImageSet,
    test: ImageSet,
    normalization: Normalization,
) -> Dataset {
    Dataset {
        name: name.to_owned(),
        format,
        source: Some(src.root()),
        classes,
        train,
        test,
        normalization,
    }
}

fn read_binary_files(
    src: &dyn FileSource,
    files: &[String],
    layout: RecordLayout,
    classes: usize,
) -> Result<ImageSet, DataError> {
    let mut set = ImageSet::new(32, 32);
    for f in files {
        cifar_binary::parse_records(&src.read(f)?, &src.path_of(f), layout, classes, &mut set)?;
    }
    Ok(set)
}

fn load_binary10(src: &dyn FileSource, names: &[String]) -> Result<Dataset, DataError> {
    let classes = names_from_text(src, "batches.meta.txt", &CIFAR10_CLASSES)?;
    let train_files = numbered(names, "data_batch_", ".bin");
    if train_files.is_empty() {
        return Err(missing(src, "train", "data_batch_1.bin … data_batch_5.bin"));
    }
    if !src.has("test_batch.bin") {
        return Err(missing(src, "test", "test_batch.bin"));
    }
    let train = read_binary_files(src, &train_files, RecordLayout::CIFAR10, classes.len())?;
    let test = read_binary_files(
        src,
        &["test_batch.bin".to_owned()],
        RecordLayout::CIFAR10,
        classes.len(),
    )?;
    Ok(dataset(
        "CIFAR-10",
        DataFormat::Cifar10Binary,
        src,
        classes,
        train,
        test,
        Normalization::CIFAR10,
    ))
}

fn load_binary100(src: &dyn FileSource, labels: Cifar100Labels) -> Result<Dataset, DataError> {
    let (classes, layout) = match labels {
        Cifar100Labels::Fine => (
            names_from_text(src, "fine_label_names.txt", &CIFAR100_FINE_CLASSES)?,
            RecordLayout::CIFAR100_FINE,
        ),
        Cifar100Labels::Coarse => (
            names_from_text(src, "coarse_label_names.txt", &CIFAR100_COARSE_CLASSES)?,
            RecordLayout::CIFAR100_COARSE,
        ),
    };
    if !src.has("train.bin") {
        return Err(missing(src, "train", "train.bin"));
    }
    if !src.has("test.bin") {
        return Err(missing(src, "test", "test.bin"));
    }
    let train = read_binary_files(src, &["train.bin".to_owned()], layout, classes.len())?;
    let test = read_binary_files(src, &["test.bin".to_owned()], layout, classes.len())?;
    Ok(dataset(
        name100(labels),
        DataFormat::Cifar100Binary,
        src,
        classes,
        train,
        test,
        Normalization::CIFAR100,
    ))
}

fn name100(labels: Cifar100Labels) -> &'static str {
    match labels {
        Cifar100Labels::Fine => "CIFAR-100",
        Cifar100Labels::Coarse => "CIFAR-100 (coarse)",
    }
}

/// Appends a parsed python batch to `set`, checking label count and range.
fn push_python(
    set: &mut ImageSet,
    batch: cifar_pickle::PickledBatch,
    labels: Option<Vec<i64>>,
    key: &str,
    classes: usize,
    path: &Path,
) -> Result<(), DataError> {
    let labels = labels.ok_or_else(|| DataError::malformed(path, format!("no '{key}' key")))?;
    if labels.len() != batch.rows || batch.data.len() != batch.rows * PIXEL_BYTES {
        return Err(DataError::malformed(
            path,
            format!(
                "'{key}' has {} entries for {} images",
                labels.len(),
                batch.rows
            ),
        ));
    }
    let mut out = Vec::with_capacity(labels.len());
    for (i, &l) in labels.iter().enumerate() {
        if l < 0 || l as u64 >= classes as u64 {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                record: i,
                label: l,
                classes,
            });
        }
        out.push(l as u16);
    }
    set.labels.extend(out);
    if set.pixels.is_empty() {
        set.pixels = batch.data; // the common case: no second copy of a 150 MB array
    } else {
        set.pixels.extend_from_slice(&batch.data);
    }
    Ok(())
}

fn python_meta(
    src: &dyn FileSource,
    file: &str,
) -> Result<Option<cifar_pickle::PickledMeta>, DataError> {
    if !src.has(file) {
        return Ok(None);
    }
    cifar_pickle::parse_meta(&src.read(file)?, &src.path_of(file)).map(Some)
}

fn load_python10(src: &dyn FileSource, names: &[String]) -> Result<Dataset, DataError> {
    let classes = python_meta(src, "batches.meta")?
        .and_then(|m| m.label_names)
        .unwrap_or_else(|| official(&CIFAR10_CLASSES));
    let train_files = numbered(names, "data_batch_", "");
    if train_files.is_empty() {
        return Err(missing(src, "train", "data_batch_1 … data_batch_5"));
    }
    if !src.has("test_batch") {
        return Err(missing(src, "test", "test_batch"));
    }
    let read = |files: &[String]| -> Result<ImageSet, DataError> {
        let mut set = ImageSet::new(32, 32);
        for f in files {
            let path = src.path_of(f);
            let mut batch = cifar_pickle::parse_batch(&src.read(f)?, &path)?;
            let labels = batch.labels.take();
            push_python(&mut set, batch, labels, "labels", classes.len(), &path)?;
        }
        Ok(set)
    };
    let train = read(&train_files)?;
    let test = read(&["test_batch".to_owned()])?;
    Ok(dataset(
        "CIFAR-10",
        DataFormat::Cifar10Python,
        src,
        classes,
        train,
        test,
        Normalization::CIFAR10,
    ))
}

fn load_python100(src: &dyn FileSource, labels: Cifar100Labels) -> Result<Dataset, DataError> {
    let meta = python_meta(src, "meta")?;
    let classes = match labels {
        Cifar100Labels::Fine => meta
            .and_then(|m| m.fine_label_names)
            .unwrap_or_else(|| official(&CIFAR100_FINE_CLASSES)),
        Cifar100Labels::Coarse => meta
            .and_then(|m| m.coarse_label_names)
            .unwrap_or_else(|| official(&CIFAR100_COARSE_CLASSES)),
    };
    if !src.has("train") {
        return Err(missing(src, "train", "train"));
    }
    if !src.has("test") {
        return Err(missing(src, "test", "test"));
    }
    let read = |file: &str| -> Result<ImageSet, DataError> {
        let mut set = ImageSet::new(32, 32);
        let path = src.path_of(file);
        let mut batch = cifar_pickle::parse_batch(&src.read(file)?, &path)?;
        let (l, key) = match labels {
            Cifar100Labels::Fine => (batch.fine_labels.take(), "fine_labels"),
            Cifar100Labels::Coarse => (batch.coarse_labels.take(), "coarse_labels"),
        };
        push_python(&mut set, batch, l, key, classes.len(), &path)?;
        Ok(set)
    };
    let train = read("train")?;
    let test = read("test")?;
    Ok(dataset(
        name100(labels),
        DataFormat::Cifar100Python,
        src,
        classes,
        train,
        test,
        Normalization::CIFAR100,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn official_name_lists_have_the_published_lengths() {
        assert_eq!(CIFAR100_FINE_CLASSES.len(), 100);
        let mut sorted = CIFAR100_FINE_CLASSES.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            100,
            "fine names are unique and already sorted"
        );
        assert_eq!(sorted, CIFAR100_FINE_CLASSES.to_vec());
    }

    #[test]
    fn classify_recognises_each_layout_and_mixtures() {
        assert_eq!(
            classify(&s(&[
                "data_batch_1.bin",
                "test_batch.bin",
                "batches.meta.txt"
            ])),
            Ok(Some(DataFormat::Cifar10Binary))
        );
        assert_eq!(
            classify(&s(&["train.bin", "test.bin"])),
            Ok(Some(DataFormat::Cifar100Binary))
        );
        assert_eq!(
            classify(&s(&["data_batch_1", "test_batch", "batches.meta"])),
            Ok(Some(DataFormat::Cifar10Python))
        );
        assert_eq!(
            classify(&s(&["train", "test", "meta"])),
            Ok(Some(DataFormat::Cifar100Python))
        );
        assert_eq!(classify(&s(&["readme.txt"])), Ok(None));
        assert_eq!(
            classify(&s(&["data_batch_1.bin", "data_batch_1"])),
            Err((DataFormat::Cifar10Binary, DataFormat::Cifar10Python))
        );
    }

    #[test]
    fn numbered_sorts_numerically() {
        let v = numbered(
            &s(&[
                "data_batch_10.bin",
                "data_batch_2.bin",
                "data_batch_x.bin",
                "data_batch_1.bin",
            ]),
            "data_batch_",
            ".bin",
        );
        assert_eq!(
            v,
            s(&["data_batch_1.bin", "data_batch_2.bin", "data_batch_10.bin"])
        );
    }
}
