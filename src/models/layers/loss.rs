//! Cross-entropy with label smoothing, PyTorch's definition, computed in f32.

use candle_core::{D, DType, Result, Tensor};

use super::activation::log_softmax;

/// Mean over the batch of `(1 − ε)·(−log p[y]) + ε·mean_k(−log p[k])`, as
/// `torch.nn.functional.cross_entropy(logits, labels, label_smoothing=ε)`.
/// `logits`: `n × k` (any float dtype); `labels`: `n` class indices (u32).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, label_smoothing: f64) -> Result<Tensor> {
    let logp = log_softmax(logits)?;
    let labels = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
    let nll = logp.gather(&labels, D::Minus1)?.squeeze(1)?.neg()?;
    let per_sample = if label_smoothing > 0.0 {
        let smooth = logp.mean(D::Minus1)?.neg()?;
        ((nll * (1.0 - label_smoothing))? + (smooth * label_smoothing)?)?
    } else {
        nll
    };
    per_sample.mean_all()
}
