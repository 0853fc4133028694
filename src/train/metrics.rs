//! Classification metrics on the host: confusion matrix, accuracy, per-class precision,
//! recall and F1, and macro-F1.
//!
//! Macro-F1 follows scikit-learn's `f1_score(average="macro", labels=range(k),
//! zero_division=0)`: every one of the `k` classes counts, including a class that is neither
//! present in the evaluation set nor ever predicted (it scores 0). scikit-learn's default
//! (no `labels`) averages only over the classes seen in `y_true ∪ y_pred`; annt passes all
//! classes instead so that runs on different subsets of one data set share a denominator and
//! a model that never predicts a class is not rewarded for it.

use candle_core::{D, Tensor};
use serde::{Deserialize, Serialize};

/// Counts of (true class, predicted class) pairs: the one statistic every other metric here
/// is derived from, and small enough (`k²` integers) to store in a result and merge across
/// batches or workers without losing anything.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    /// Number of classes `k`; the matrix is `k × k`.
    pub classes: usize,
    /// Row-major `classes × classes` counts: row = true class, column = predicted class.
    pub counts: Vec<u64>,
}

/// Precision, recall and F1 of one class, with scikit-learn's `zero_division=0`: a ratio
/// whose denominator is 0 is reported as 0 rather than NaN, so results stay serialisable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Of the samples predicted as this class, the fraction that are this class.
    pub precision: f64,
    /// Of the samples of this class, the fraction predicted as this class.
    pub recall: f64,
    /// Harmonic mean of precision and recall, computed as `2·tp / (support + predicted)`
    /// exactly as scikit-learn does.
    pub f1: f64,
    /// Number of evaluated samples whose true class is this one.
    pub support: u64,
}

impl ConfusionMatrix {
    /// An empty `classes × classes` matrix.
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    /// Counts one (truth, prediction) pair per position. Extra elements of the longer slice
    /// are ignored, and so is a pair with a class `≥ classes` (a label outside the model's
    /// head cannot be placed in the matrix; counting it elsewhere would skew every metric).
    pub fn add(&mut self, truth: &[u32], predicted: &[u32]) {
        let k = self.classes;
        for (&t, &p) in truth.iter().zip(predicted) {
            let (t, p) = (t as usize, p as usize);
            if t < k && p < k {
                self.counts[t * k + p] += 1;
            }
        }
    }

    /// Adds another matrix's counts to this one (e.g. from another evaluation shard).
    /// Matrices of different sizes are combined over their common top-left block, which
    /// keeps the operation total without panicking; callers merge matrices of one model.
    pub fn merge(&mut self, other: &Self) {
        if other.classes == self.classes {
            for (a, b) in self.counts.iter_mut().zip(&other.counts) {
                *a += b;
            }
            return;
        }
        let k = self.classes.min(other.classes);
        for t in 0..k {
            for p in 0..k {
                self.counts[t * self.classes + p] += other.counts[t * other.classes + p];
            }
        }
    }

    /// Number of samples counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Count in row `truth`, column `predicted`; 0 outside the matrix.
    pub fn get(&self, truth: usize, predicted: usize) -> u64 {
        if truth < self.classes && predicted < self.classes {
            self.counts[truth * self.classes + predicted]
        } else {
            0
        }
    }

    /// Fraction of samples whose prediction equals the truth; 0 when nothing was counted.
    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.classes).map(|i| self.get(i, i)).sum();
        ratio(correct, self.total())
    }

    /// Precision, recall, F1 and support of every class, in class order (scikit-learn's
    /// `precision_recall_fscore_support(labels=range(k), zero_division=0)`).
    pub fn per_class(&self) -> Vec<ClassMetrics> {
        let k = self.classes;
        (0..k)
            .map(|c| {
                let tp = self.get(c, c);
                let support: u64 = (0..k).map(|p| self.get(c, p)).sum();
                let predicted: u64 = (0..k).map(|t| self.get(t, c)).sum();
                ClassMetrics {
                    precision: ratio(tp, predicted),
                    recall: ratio(tp, support),
                    f1: ratio(2 * tp, support + predicted),
                    support,
                }
            })
            .collect()
    }

    /// Unweighted mean of the per-class F1 over all `classes` (see the module docs for why
    /// absent classes are included); 0 for a matrix with no classes.
    pub fn macro_f1(&self) -> f64 {
        let per = self.per_class();
        if per.is_empty() {
            0.0
        } else {
            per.iter().map(|m| m.f1).sum::<f64>() / per.len() as f64
        }
    }
}

/// `num / den`, or 0 when `den` is 0 (scikit-learn's `zero_division=0`).
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Index of the largest logit in each row of an `n × k` logits tensor of any dtype on any
/// device, copied to the host (the first index wins on ties on the CPU). An empty batch
/// gives an empty vector; a tensor that is not two-dimensional is an error.
pub fn argmax_rows(logits: &Tensor) -> candle_core::Result<Vec<u32>> {
    let (n, k) = logits.dims2()?;
    if n == 0 {
        return Ok(Vec::new());
    }
    if k == 0 {
        return Err(candle_core::Error::Msg(format!(
            "argmax_rows: logits of shape {n}×0 have no class to pick"
        )));
    }
    logits.argmax(D::Minus1)?.to_vec1()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn small_case_matches_scikit_learn_with_all_labels() {
        // /tmp/tv/bin/python (scikit-learn 1.9.1):
        // from sklearn.metrics import f1_score, accuracy_score
        // from sklearn.metrics import precision_recall_fscore_support as prfs
        // y = [0,0,1,1,2,2,2,3]; p = [0,1,1,1,2,0,2,0]
        // f1_score(y, p, average="macro", labels=range(5), zero_division=0)  # 0.4
        // f1_score(y, p, average="macro", zero_division=0)  # 0.5 (default: labels seen only)
        // accuracy_score(y, p)                                # 0.625
        // prfs(y, p, labels=range(5), zero_division=0)
        //   precision [1/3, 2/3, 1.0, 0, 0]  recall [0.5, 1.0, 2/3, 0, 0]
        //   f1 [0.4, 0.8, 0.8, 0, 0]         support [2, 2, 3, 1, 0]
        let mut m = ConfusionMatrix::new(5);
        m.add(&[0, 0, 1, 1, 2, 2, 2, 3], &[0, 1, 1, 1, 2, 0, 2, 0]);
        assert_eq!(m.total(), 8);
        assert!(close(m.accuracy(), 0.625));
        assert!(close(m.macro_f1(), 0.4), "{}", m.macro_f1());
        let pc = m.per_class();
        let expect = [
            (1.0 / 3.0, 0.5, 0.4, 2),
            (2.0 / 3.0, 1.0, 0.8, 2),
            (1.0, 2.0 / 3.0, 0.8, 3),
            (0.0, 0.0, 0.0, 1),
            (0.0, 0.0, 0.0, 0),
        ];
        for (c, (got, (p, r, f, s))) in pc.iter().zip(expect).enumerate() {
            assert!(
                close(got.precision, p) && close(got.recall, r) && close(got.f1, f),
                "class {c}: {got:?}"
            );
            assert_eq!(got.support, s, "class {c}");
        }
    }

    /// The generator the scikit-learn snippet below reproduces.
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 33
    }

    #[test]
    fn thousand_samples_match_scikit_learn() {
        // M = 2**64
        // def lcg(s):
        //     while True:
        //         s = (s*6364136223846793005 + 1442695040888963407) % M
        //         yield s >> 33
        // g = lcg(42); k = 10; y = []; p = []
        // for _ in range(1000):
        //     t = next(g) % k
        //     pr = t if next(g) % 100 < 60 else next(g) % (k-1)
        //     if pr == 9: pr = 8
        //     y.append(t); p.append(pr)
        // f1_score(y, p, average="macro", labels=range(k), zero_division=0)
        //   # 0.5619419293697151
        // accuracy_score(y, p)  # 0.592
        // prfs(y, p, labels=range(k), zero_division=0)[2]  # f1 per class, below
        // prfs(y, p, labels=range(k), zero_division=0)[3]  # support, below
        let k = 10u64;
        let mut s = 42u64;
        let (mut y, mut p) = (Vec::new(), Vec::new());
        for _ in 0..1000 {
            let t = lcg(&mut s) % k;
            let mut pr = if lcg(&mut s) % 100 < 60 {
                t
            } else {
                lcg(&mut s) % (k - 1)
            };
            if pr == 9 {
                pr = 8;
            }
            y.push(t as u32);
            p.push(pr as u32);
        }
        // Two halves merged must equal one pass.
        let mut m = ConfusionMatrix::new(10);
        m.add(&y[..400], &p[..400]);
        let mut rest = ConfusionMatrix::new(10);
        rest.add(&y[400..], &p[400..]);
        m.merge(&rest);
        let mut whole = ConfusionMatrix::new(10);
        whole.add(&y, &p);
        assert_eq!(m, whole);

        assert!(close(m.macro_f1(), 0.5619419293697151), "{}", m.macro_f1());
        assert!(close(m.accuracy(), 0.592));
        let f1 = [
            0.6461538461538462,
            0.6387434554973822,
            0.6428571428571429,
            0.6082474226804123,
            0.6536585365853659,
            0.6787330316742082,
            0.6213592233009708,
            0.6637168141592921,
            0.4659498207885305,
            0.0,
        ];
        let support = [98, 93, 89, 96, 99, 109, 104, 109, 116, 87];
        for (c, m) in m.per_class().iter().enumerate() {
            assert!(close(m.f1, f1[c]), "class {c}: {} vs {}", m.f1, f1[c]);
            assert_eq!(m.support, support[c], "class {c}");
        }
    }

    #[test]
    fn empty_and_out_of_range_inputs_score_zero_without_panicking() {
        let mut m = ConfusionMatrix::new(3);
        assert_eq!((m.total(), m.accuracy(), m.macro_f1()), (0, 0.0, 0.0));
        m.add(&[0, 7, 1], &[0, 1, 9]);
        assert_eq!(m.total(), 1, "pairs with an unknown class are dropped");
        assert_eq!(ConfusionMatrix::new(0).macro_f1(), 0.0);
        let json = serde_json::to_string(&m).expect("json");
        assert_eq!(
            serde_json::from_str::<ConfusionMatrix>(&json).expect("back"),
            m
        );
    }

    #[test]
    fn argmax_takes_the_largest_logit_per_row_in_every_float_dtype() {
        let t = Tensor::new(
            &[[0.1f32, 2.0, -1.0], [5.0, 1.0, 4.0], [-3.0, -2.0, -1.0]],
            &Device::Cpu,
        )
        .expect("t");
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
            let t = t.to_dtype(dtype).expect("dtype");
            assert_eq!(argmax_rows(&t).expect("argmax"), vec![1, 0, 2], "{dtype:?}");
        }
        let ties = Tensor::new(&[[1f32, 1.0, 0.0]], &Device::Cpu).expect("t");
        assert_eq!(argmax_rows(&ties).expect("argmax"), vec![0]);
        let empty = Tensor::zeros((0, 10), DType::F32, &Device::Cpu).expect("t");
        assert_eq!(argmax_rows(&empty).expect("argmax"), Vec::<u32>::new());
        let flat = Tensor::new(&[1f32, 2.0], &Device::Cpu).expect("t");
        assert!(argmax_rows(&flat).is_err());
    }
}
