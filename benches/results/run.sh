#!/usr/bin/env bash
# Re-measures every figure the README quotes from this folder, into this folder. Run from
# the repository root after `cargo build --release`; each output file is named after what
# it measured, and the README gives, beside each table, the command that made it.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=benches/results
annt=target/release/annt
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}"

# The quick A/B (the README's first command) with the process's peak RSS from outside.
/usr/bin/time -v "$annt" bench --preset presets/quick-cpu.toml --plan ab \
    --report "$out/quick-cpu-ab.json" >"$out/quick-cpu-ab.md" 2>"$out/quick-cpu-ab.stderr.txt"

# A CPU ablation with 2 repeats (4 arms on the CPU: GA × AMP), shortened to 2 epochs of
# 2 000 images so that its 8 runs take minutes.
"$annt" bench --preset presets/quick-cpu.toml --plan ablation --repeats 2 \
    --train-limit 2000 --epochs 2 \
    --report "$out/quick-cpu-ablation-2x.json" >"$out/quick-cpu-ablation-2x.md" \
    2>"$out/quick-cpu-ablation-2x.stderr.txt"

# Forward + backward speed per model (batch 32, f32, median of 3 steps after 1 warm-up).
ANNT_BENCH_STEPS=3 cargo bench --bench models -- resnet8-tiny resnet18-cifar vit-ti4 \
    >"$out/models-cpu.txt" 2>&1

# The bf16 units' matrix products against gemm's f32, single-threaded (an ignored test).
cargo test --release --lib bf16_products_speed -- --ignored --nocapture 2>/dev/null \
    | grep '×' >"$out/bf16-products-speed.txt"

# Accuracy over seeds (the baseline and the tuned arm of the quick A/B, run alone).
for s in 1 2 3; do
  echo "baseline seed $s: $("$annt" run --preset presets/quick-cpu.toml --seed "$s" 2>&1 | grep -E 'epoch 3:')"
done >"$out/quick-cpu-seeds.txt"
for s in 1 2; do
  echo "tuned seed $s: $("$annt" run --preset presets/quick-cpu.toml --seed "$s" --accum 2 --amp bf16 2>&1 | grep -E 'epoch 3:')"
done >>"$out/quick-cpu-seeds.txt"

# Parsing and the batch pipeline.
cargo bench --bench data_pipeline >"$out/data-pipeline.txt" 2>&1

# annt vs PyTorch on this CPU (needs PyTorch: PYTHON=/path/to/venv/bin/python). Skipped
# without it; the README's CPU table comes from these files.
if [ -n "${PYTHON:-}" ]; then
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
  "$PYTHON" benches/compare_torch.py --python "$PYTHON" --annt "$annt" --device cpu \
      --models resnet8_tiny --batch 64 --modes fp32,amp-bf16 --steps 20 --warmup 5 \
      --threads "$OMP_NUM_THREADS" --rounds 3 --json-out "$out/compare-cpu-resnet8-after.json" \
      --md-out "$out/compare-cpu-resnet8-after.md"
  "$PYTHON" benches/compare_torch.py --python "$PYTHON" --annt "$annt" --device cpu \
      --models resnet18 --batch 32 --modes fp32,amp-bf16 --steps 6 --warmup 2 \
      --threads "$OMP_NUM_THREADS" --rounds 3 --json-out "$out/compare-cpu-resnet18-after.json" \
      --md-out "$out/compare-cpu-resnet18-after.md"
  "$PYTHON" benches/compare_torch.py --python "$PYTHON" --annt "$annt" --device cpu \
      --models vit_tiny_p4,efficientnet_b0 --res 32 --batch 32 --modes fp32,amp-bf16 --steps 4 \
      --warmup 1 --threads "$OMP_NUM_THREADS" --rounds 3 --json-out "$out/compare-cpu-vit-effnet-after.json" \
      --md-out "$out/compare-cpu-vit-effnet-after.md"
fi
