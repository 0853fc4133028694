#!/usr/bin/env bash
# Builds the Debian package(s) with cargo-deb and prints the path of each .deb.
#   packaging/linux/build-deb.sh            annt       (CPU build, target/release)
#   packaging/linux/build-deb.sh cuda       annt-cuda  (CUDA build, target/cuda/release)
#   packaging/linux/build-deb.sh cuda --no-build   package an existing target/cuda build
# Extra arguments go to cargo-deb (e.g. `--features cudnn`, `--no-build`, `--fast`).
# The CUDA build needs nvcc and the CUDA libraries: first
#   WITH_CUDNN=1 bash tools/cuda/setup-toolchain.sh && source ~/.cache/annt-cuda/env.sh
# (see docs/gpu.md). Packages go to target/debian/ (outside version control).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
variant=
if [ "${1:-}" = cuda ]; then variant=cuda; shift; fi

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "== installing cargo-deb (once, a few minutes)"
  cargo install --locked cargo-deb
fi

# --strip: the release profile keeps line tables (debug = "line-tables-only"), which
# cargo-deb would otherwise ship (~190 MB installed instead of ~15 MB). Panic messages keep
# their file:line (that is not debug info).
args=(--locked --strip --output target/debian "$@")
if [ -n "$variant" ]; then
  # Its own target directory, so the CPU and CUDA builds do not overwrite each other.
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cuda}
  if ! command -v nvcc >/dev/null 2>&1 && [ -f "$HOME/.cache/annt-cuda/env.sh" ]; then
    # shellcheck disable=SC1091
    source "$HOME/.cache/annt-cuda/env.sh"
  fi
  args+=(--variant "$variant")
fi
mkdir -p target/debian
echo "== cargo deb ${args[*]}"
deb=$(cargo deb "${args[@]}" | tail -1)
[ -f "$deb" ] || { echo "cargo deb printed no package path (got: $deb)" >&2; exit 1; }
echo "== built $deb ($(du -h "$deb" | cut -f1))"
dpkg-deb --info "$deb" | sed -n '/Package:/,/Description:/p'
echo "$deb"
