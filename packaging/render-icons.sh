#!/usr/bin/env bash
# Renders the app icon from its SVG source into every format the packages use:
#   assets/icons/annt-{32,48,64,128,256,512}.png   Linux hicolor theme + the window icon
#   packaging/macos/annt.icns                      macOS bundle icon
#   packaging/windows/annt.ico                     Windows installer / shortcut icon
# Needs (apt): librsvg2-bin (rsvg-convert), icnsutils (png2icns), icoutils (icotool).
# The outputs are committed, so building a package does not need these tools.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
svg=$root/assets/icon.svg
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$root/assets/icons"
for n in 16 32 48 64 128 256 512; do
  rsvg-convert -w $n -h $n "$svg" -o "$tmp/annt-$n.png"
done
for n in 32 48 64 128 256 512; do
  cp "$tmp/annt-$n.png" "$root/assets/icons/annt-$n.png"
done
# png2icns picks the icns type from each PNG's size (16, 32, 48, 128, 256, 512).
png2icns "$root/packaging/macos/annt.icns" \
  "$tmp"/annt-{16,32,48,128,256,512}.png >/dev/null
# The 256-px image is stored as PNG inside the .ico (-r), as Windows Vista and later read it.
icotool -c -o "$root/packaging/windows/annt.ico" \
  "$tmp"/annt-{16,32,48,64,128}.png -r "$tmp/annt-256.png"
ls -l "$root"/assets/icons/annt-*.png "$root/packaging/macos/annt.icns" "$root/packaging/windows/annt.ico"
