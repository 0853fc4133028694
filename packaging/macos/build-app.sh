#!/usr/bin/env bash
# Builds annt.app and annt-VERSION.dmg ON A MAC (Xcode command-line tools + rustup):
#   packaging/macos/build-app.sh            universal binary (arm64 + x86_64)
#   packaging/macos/build-app.sh --native   this Mac's architecture only (faster)
#   packaging/macos/build-app.sh --layout-only BINARY
#                                           just lay out annt.app around BINARY (also works
#                                           on Linux, to check the bundle's structure)
# Output: target/macos/annt.app and target/macos/annt-VERSION.dmg.
# The bundle is ad-hoc signed (runs on the Mac that built it; on others Gatekeeper asks the
# user to allow it in System Settings → Privacy & Security). Distributing to other Macs
# needs a Developer ID: set SIGN_IDENTITY="Developer ID Application: …" and notarise the
# .dmg with `xcrun notarytool submit … --wait` then `xcrun stapler staple`.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
out=target/macos
app=$out/annt.app
mode=${1:-universal}

case "$mode" in
  --layout-only) bin=$2 ;;
  --native)
    cargo build --release --locked
    bin=target/release/annt ;;
  universal)
    rustup target add aarch64-apple-darwin x86_64-apple-darwin
    cargo build --release --locked --target aarch64-apple-darwin
    cargo build --release --locked --target x86_64-apple-darwin
    mkdir -p "$out"
    lipo -create -output "$out/annt-universal" \
      target/aarch64-apple-darwin/release/annt target/x86_64-apple-darwin/release/annt
    bin=$out/annt-universal ;;
  *) echo "usage: $0 [--native | --layout-only BINARY]" >&2; exit 2 ;;
esac

rm -rf "$app"
mkdir -p "$app/Contents/MacOS" "$app/Contents/Resources/presets"
cp "$bin" "$app/Contents/MacOS/annt"
chmod 755 "$app/Contents/MacOS/annt"
sed "s/@VERSION@/$version/g" packaging/macos/Info.plist > "$app/Contents/Info.plist"
printf 'APPL????' > "$app/Contents/PkgInfo"
cp packaging/macos/annt.icns "$app/Contents/Resources/annt.icns"
# The window's Presets menu finds these (Contents/Resources/presets).
cp presets/*.toml "$app/Contents/Resources/presets/"
cp README.md "$app/Contents/Resources/"
echo "bundle: $app"
[ "$mode" = --layout-only ] && exit 0

plutil -lint "$app/Contents/Info.plist"
codesign --force --deep --options runtime --sign "${SIGN_IDENTITY:--}" "$app"
codesign --verify --verbose "$app"

dmg=$out/annt-$version.dmg
stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
cp -R "$app" "$stage/"
ln -s /Applications "$stage/Applications"
rm -f "$dmg"
hdiutil create -volname "annt $version" -srcfolder "$stage" -ov -format UDZO "$dmg"
echo "disk image: $dmg"
