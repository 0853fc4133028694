//! Classification metrics on the host: confusion matrix, accuracy, per-class precision,
//! recall and F1, and macro-F1 (scikit-learn's `f1_score(average="macro",
//! labels=range(k), zero_division=0)`: every class counts, a class never predicted nor
//! present scores 0).

use candle_core::{D, DType, Tensor};
use serde::{Deserialize, Serialize};

/// Row = true class, column = predicted class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    pub classes: usize,
    /// Row-major `classes × classes` counts.
    pub counts: Vec<u64>,
}

/// Precision, recall and F1 of one class.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Test images of this class.
    pub support: u64,
}

impl ConfusionMatrix {
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            counts: vec![0; classes * classes],
        }
    }
    /// Adds predictions; pairs with an out-of-range class are ignored.
    pub fn add(&mut self, truth: &[u32], predicted: &[u32]) {
        for (&t, &p) in truth.iter().zip(predicted) {
            let (t, p) = (t as usize, p as usize);
            if t < self.classes && p < self.classes {
                self.counts[t * self.classes + p] += 1;
            }
        }
    }
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.classes)
            .map(|i| self.counts[i * self.classes + i])
            .sum();
        let total = self.total();
        if total == 0 {
            0.0
        } else {
            correct as f64 / total as f64
        }
    }
    pub fn per_class(&self) -> Vec<ClassMetrics> {
        let k = self.classes;
        (0..k)
            .map(|c| {
                let tp = self.counts[c * k + c] as f64;
                let support: u64 = self.counts[c * k..(c + 1) * k].iter().sum();
                let predicted: u64 = (0..k).map(|r| self.counts[r * k + c]).sum();
                let precision = if predicted > 0 {
                    tp / predicted as f64
                } else {
                    0.0
                };
                let recall = if support > 0 {
                    tp / support as f64
                } else {
                    0.0
                };
                let f1 = if precision + recall > 0.0 {
                    2.0 * precision * recall / (precision + recall)
                } else {
                    0.0
                };
                ClassMetrics {
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect()
    }
    pub fn macro_f1(&self) -> f64 {
        let per = self.per_class();
        if per.is_empty() {
            0.0
        } else {
            per.iter().map(|m| m.f1).sum::<f64>() / per.len() as f64
        }
    }
}

/// Index of the largest logit per row of an `n × k` tensor (first on ties).
pub fn argmax_rows(logits: &Tensor) -> candle_core::Result<Vec<u32>> {
    logits
        .to_dtype(DType::F32)?
        .argmax(D::Minus1)?
        .to_dtype(DType::U32)?
        .to_vec1()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_scikit_learn() {
        // from sklearn.metrics import f1_score, accuracy_score
        // y = [0,0,1,1,2,2,2,3]; p = [0,1,1,1,2,0,2,0]
        // f1_score(y, p, average="macro", labels=range(5), zero_division=0) = 0.43333…
        // (class 3 is never predicted, class 4 neither present nor predicted: both 0)
        let mut m = ConfusionMatrix::new(5);
        m.add(&[0, 0, 1, 1, 2, 2, 2, 3], &[0, 1, 1, 1, 2, 0, 2, 0]);
        assert!((m.accuracy() - 5.0 / 8.0).abs() < 1e-12);
        // per class F1: 0 → p 1/3 r 1/2 → 0.4; 1 → p 2/3 r 1 → 0.8; 2 → p 1 r 2/3 → 0.8
        assert!(
            (m.macro_f1() - (0.4 + 0.8 + 0.8) / 5.0).abs() < 1e-12,
            "{}",
            m.macro_f1()
        );
        let pc = m.per_class();
        assert_eq!(pc[2].support, 3);
        assert!((pc[1].precision - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn argmax_takes_the_largest_logit_per_row() {
        let t = Tensor::new(
            &[[0.1f32, 2.0, -1.0], [5.0, 1.0, 4.0]],
            &candle_core::Device::Cpu,
        )
        .expect("t");
        assert_eq!(argmax_rows(&t).expect("argmax"), vec![1, 0]);
    }
}
