//! Pretrained weights (placeholder).
