#!/usr/bin/env bash
# The GPU check in one short call, for a machine with an NVIDIA GPU, the CUDA 13 libraries
# and PyTorch (for the yardstick) but no Rust and no network. Build the binary elsewhere:
#
#   bash tools/cuda/setup-toolchain.sh && source ~/.cache/annt-cuda/env.sh   # (WITH_CUDNN=1)
#   cargo build --release --features cuda,cudnn && strip -o annt-cuda target/release/annt
#
# then, on the GPU machine, from the repository root:
#
#   bash benches/gpu_check.sh ./annt-cuda OUT_DIR            # ~9 minutes at most
#   bash benches/gpu_check.sh --dry-run target/release/annt OUT_DIR   # CPU build, ~3 min
#
# Stages (each with its own time limit, so one slow stage cannot eat the others' time):
#   1. `annt selftest --json` and its table           -> selftest.json, selftest.txt
#   2. benches/compare_torch.py: annt vs PyTorch eager -> compare.json, compare.md
#      (ResNet-50-CIFAR 32 px batch 256, EfficientNet-B0 224 batch 96, ViT-B/16 224 batch 64;
#       fp32, tf32, bf16, fp16)
#   3. a shortened ResNet-50-CIFAR A/B, tuned = fp16 + GA x2 + pinned memory, on the built-in
#      data set (no download)                          -> ab.json, ab.html, ab.md, ab.csv
#   plus env.txt (GPU, driver, versions) and summary.md (every stage's status and tables).
# The dry run runs the same stages on the CPU with small workloads (resnet8-tiny) and writes
# the same files; the PyTorch stage records "not run" where PyTorch is not installed.
# Exit code: 0 when every stage passed, 1 otherwise (the files are written either way).
set -uo pipefail

dry=0
if [ "${1:-}" = "--dry-run" ]; then
  dry=1
  shift
fi
if [ $# -ne 2 ]; then
  echo "usage: $0 [--dry-run] ANNT_BINARY OUT_DIR" >&2
  exit 2
fi
annt=$(realpath "$1")
out=$2
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(realpath "$out")
[ -x "$annt" ] || { echo "gpu_check: $annt is not an executable" >&2; exit 2; }

# PyTorch's wheels carry the CUDA 13 runtime libraries a CUDA build of annt links
# (libcudart, cuBLAS, cuRAND, cuDNN); the driver provides libcuda.so.1.
py=${PYTHON:-python3}
if sp=$("$py" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))' 2>/dev/null); then
  export LD_LIBRARY_PATH="$sp/nvidia/cu13/lib:$sp/nvidia/cudnn/lib:${LD_LIBRARY_PATH:-}"
  have_torch=1
else
  have_torch=0
fi

if [ $dry = 1 ]; then
  device=cpu
  models=resnet8_tiny
  modes=fp32,amp-bf16
  steps=5 warmup=2 batch_args=(--batch 32)
  ab_args=(--preset "$here/../presets/quick-cpu.toml" --device cpu --max-images 1024 --train-limit 2048 --test-limit 512)
  limits=(600 600 600)
else
  device=cuda
  models=resnet50,efficientnet_b0,vit_b_16
  modes=fp32,tf32,amp-bf16,amp-fp16
  steps=30 warmup=5 batch_args=()
  ab_args=(--preset "$here/../presets/resnet50-cifar10.toml" --data builtin --device cuda:0 --epochs 2 --max-images 12800 --test-limit 2000)
  limits=(120 300 90)
fi

status=()
run_stage() { # name limit command...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$out/log.txt"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=10 "$limit" "$@" >>"$out/log.txt" 2>&1
  local rc=$?
  local secs=$((SECONDS - t0))
  if [ $rc = 0 ]; then
    status+=("| $name | passed | ${secs} s |")
  elif [ $rc = 124 ]; then
    status+=("| $name | timed out after ${limit} s | ${secs} s |")
  else
    status+=("| $name | failed (exit $rc) | ${secs} s |")
  fi
  return $rc
}

: >"$out/log.txt"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "annt: $("$annt" --version 2>&1)"
  echo "binary: $annt"
  echo "dry run: $dry"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null || echo "torch: not installed"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) ($(nproc) cores)"
} >"$out/env.txt"

ok=0
run_stage "selftest" "${limits[0]}" bash -c "'$annt' selftest --json ${device:+--device $device} > '$out/selftest.json'; rc=\$?; '$annt' selftest ${device:+--device $device} > '$out/selftest.txt' 2>&1; exit \$rc" || ok=1
run_stage "annt vs PyTorch" "${limits[1]}" "$py" "$here/compare_torch.py" --annt "$annt" --device "$device" \
  --models "$models" --modes "$modes" --steps "$steps" --warmup "$warmup" "${batch_args[@]}" \
  --json-out "$out/compare.json" --md-out "$out/compare.md" || ok=1
run_stage "A/B (GA + AMP + PM)" "${limits[2]}" "$annt" bench "${ab_args[@]}" --plan ab \
  --report "$out/ab.json" --report "$out/ab.html" --report "$out/ab.md" --report "$out/ab.csv" || ok=1

{
  echo "# annt GPU check$([ $dry = 1 ] && echo ' (dry run on the CPU build)')"
  echo
  echo '```'
  cat "$out/env.txt"
  echo '```'
  echo
  echo "| stage | status | wall |"
  echo "|---|---|---|"
  printf '%s\n' "${status[@]}"
  [ $have_torch = 0 ] && { echo; echo "PyTorch is not installed here: the comparison has annt's figures only."; }
  for f in compare.md ab.md; do
    if [ -s "$out/$f" ]; then
      echo
      echo "## $f"
      echo
      cat "$out/$f"
    fi
  done
  if [ -s "$out/selftest.txt" ]; then
    echo
    echo "## selftest"
    echo
    echo '```'
    cat "$out/selftest.txt"
    echo '```'
  fi
} >"$out/summary.md"
echo "gpu_check: wrote $(ls "$out" | tr '\n' ' ')"
exit $ok
