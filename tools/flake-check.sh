#!/usr/bin/env bash
# Runs tests N times in a row while a second build loads the machine, to show they do not
# flake under load (the issue's "never flake"). Usage, from the repository root:
#   tools/flake-check.sh N [cargo test arguments…]
# e.g. `tools/flake-check.sh 10` (the whole suite) or
#      `tools/flake-check.sh 10 --test engine --test cli --bin annt` (the timing-bound tests).
# The load is a from-scratch release build of annt into a throwaway target folder, started
# again whenever it finishes; it is stopped when the runs end. Exit status: 0 only if every
# run passed. Each run's summary goes to stdout, its full output to target/flake-check/.
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:?usage: tools/flake-check.sh N [cargo test arguments…]}"
shift
logs=target/flake-check
mkdir -p "$logs"
cargo test --locked --no-run "$@" >"$logs/build.txt" 2>&1 || { cat "$logs/build.txt"; exit 1; }
load_dir=$(mktemp -d)
# In a session of its own, so that the whole build (cargo and its compilers) stops at the end.
LOAD_DIR="$load_dir" setsid bash -c 'while true; do
    CARGO_TARGET_DIR="$LOAD_DIR" cargo build --release --locked >/dev/null 2>&1
    rm -rf "$LOAD_DIR"/release
  done' &
load=$!
trap 'kill -- -$load 2>/dev/null; rm -rf "$load_dir"' EXIT
failed=0
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  if cargo test --locked "$@" >"$logs/run-$i.txt" 2>&1; then verdict=passed; else verdict=FAILED; failed=$((failed + 1)); fi
  passed=$(grep -o '[0-9]* passed' "$logs/run-$i.txt" | awk '{s += $1} END {print s + 0}')
  echo "run $i/$runs: $verdict ($passed tests passed, $(( $(date +%s) - start )) s, load: $(cut -d' ' -f1 /proc/loadavg))"
done
echo "$((runs - failed)) of $runs runs passed"
[ "$failed" -eq 0 ]
