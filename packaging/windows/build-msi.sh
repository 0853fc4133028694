#!/usr/bin/env bash
# Builds the Windows installer target/windows/annt-VERSION-x86_64.msi on Linux:
#   packaging/windows/build-msi.sh                    cross-compile annt.exe, then the MSI
#   packaging/windows/build-msi.sh --exe PATH.exe     package an annt.exe built elsewhere
#   packaging/windows/build-msi.sh --check            validate annt.wxs with a placeholder
#                                                     exe (no Windows build; seconds)
# Needs (apt): wixl (msitools); for the cross build also gcc-mingw-w64-x86-64 and
# `rustup target add x86_64-pc-windows-gnu` (~6 min build on 2 cores).
# On Windows itself, build with `cargo build --release` and use WiX 3 (candle/light) with
# the same -d variables, or run this script under WSL.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
exe=; check=
case "${1:-}" in
  --exe) exe=$2 ;;
  --check) check=1 ;;
  "") ;;
  *) echo "usage: $0 [--exe annt.exe | --check]" >&2; exit 2 ;;
esac
out=target/windows
stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
if [ -n "$check" ]; then
  printf 'MZ placeholder, not a program\n' > "$stage/annt.exe"
elif [ -z "$exe" ]; then
  cargo build --release --locked --target x86_64-pc-windows-gnu
  cp target/x86_64-pc-windows-gnu/release/annt.exe "$stage/annt.exe"
else
  cp "$exe" "$stage/annt.exe"
fi
# wixl resolves sources relative to the current directory: stage everything in one place.
mkdir -p "$stage/presets"
cp presets/*.toml "$stage/presets/"
cp packaging/windows/annt.wxs packaging/windows/annt.ico README.md "$stage/"
(
  cd "$stage"
  # One component per preset file, generated so that a new preset needs no .wxs edit.
  find presets -name '*.toml' | LC_ALL=C sort |
    wixl-heat -p presets/ --component-group Presets --var var.PresetsDir \
      --directory-ref PRESETSDIR --win64 > presets.wxs
  wixl -a x64 -D Version="$version" -D ExeSource=annt.exe -D PresetsDir=presets \
    -D IconSource=annt.ico -D ReadmeSource=README.md -D Win64=yes \
    -o annt.msi annt.wxs presets.wxs
)
mkdir -p "$out"
if [ -n "$check" ]; then
  echo "annt.wxs: wixl built an MSI ($(stat -c %s "$stage/annt.msi") bytes, placeholder exe)"
  if command -v msiinfo >/dev/null 2>&1; then
    msiinfo export "$stage/annt.msi" Shortcut | tail -1
  fi
  exit 0
fi
msi=$out/annt-$version-x86_64.msi
mv "$stage/annt.msi" "$msi"
echo "$msi ($(du -h "$msi" | cut -f1))"
