//! (in progress: helper)
use super::{DataFormat, Dataset, ImageSet, Normalization};

pub const BUILTIN_NAME: &str = "builtin";

#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    pub seed: u64,
    pub train: usize,
    pub test: usize,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self { seed: 0, train: 10_000, test: 2_000 }
    }
}

pub fn generate(spec: &SyntheticSpec) -> Dataset {
    let _ = spec;
    let train = ImageSet::new(32, 32);
    Dataset {
        name: "built-in".into(),
        format: DataFormat::Builtin,
        source: None,
        classes: vec![],
        normalization: Normalization::compute(&train),
        test: train.clone(),
        train,
    }
}
