#!/usr/bin/env bash
# Installs a built annt .deb (and optionally annt-cuda's), checks that the binary runs and
# that the desktop entry and icons land where desktops look, then removes the package(s).
#   packaging/linux/test-deb.sh target/debian/annt_*.deb [target/debian/annt-cuda_*.deb]
# With ANNT_SCREENSHOT=OUT.png it also starts the installed app through its desktop entry
# under Xvfb (screenshot.sh, `gio launch`; ANNT_FILES are passed as the entry's %F) and saves
# a screenshot of the window. ANNT_CUDA_LIBS: LD_LIBRARY_PATH for running annt-cuda.
# Needs root (dpkg) and network or a local mirror for `apt-get -f install` of missing
# run-time libraries. Leaves the system as it found it, apart from those libraries.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 annt_VERSION_ARCH.deb [annt-cuda_VERSION_ARCH.deb]" >&2; exit 2; }
debs=("$@")
for d in "${debs[@]}"; do [ -f "$d" ] || { echo "no such file: $d" >&2; exit 2; }; done
export DEBIAN_FRONTEND=noninteractive
fail() { echo "FAIL: $*" >&2; exit 1; }
names=()
for d in "${debs[@]}"; do names+=("$(dpkg-deb --field "$d" Package)"); done
cleanup() { dpkg --purge "${names[@]}" >/dev/null 2>&1 || true; }
trap cleanup EXIT
for n in "${names[@]}"; do
  if dpkg -s "$n" >/dev/null 2>&1; then fail "$n is already installed; remove it first"; fi
done

echo "== package metadata"
for d in "${debs[@]}"; do
  echo "$d: $(du -h "$d" | cut -f1)"
  dpkg-deb --field "$d" Package Version Architecture Installed-Size Depends Recommends
done

echo "== dpkg -i"
if ! dpkg -i "${debs[@]}"; then
  echo "-- missing dependencies; apt-get -f install"
  apt-get -f install -y -q
fi
for n in "${names[@]}"; do
  [ "$(dpkg-query -W -f '${Status}' "$n")" = "install ok installed" ] || fail "$n not installed"
done

echo "== files"
dpkg -L "${names[@]}" | grep -E '^/usr/(bin|share/(applications|icons|annt|doc))/' | sort

echo "== the binary runs"
command -v annt | grep -qx /usr/bin/annt || fail "annt is not /usr/bin/annt on PATH"
annt --help | head -5
annt --version
annt models | head -5
annt data inspect builtin | head -4
# Without a display the window fails with a clear sentence, not a crash.
set +e
out=$(env -u DISPLAY -u WAYLAND_DISPLAY ANNT_LOG=off annt 2>&1); rc=$?
set -e
echo "annt (no display): exit $rc: $out"
[ $rc -eq 1 ] && grep -q "cannot open the window" <<<"$out" || fail "window error not reported"

echo "== desktop entry and icons"
apps=/usr/share/applications
[ -f $apps/annt.desktop ] || fail "no $apps/annt.desktop"
desktop-file-validate $apps/annt.desktop && echo "desktop-file-validate $apps/annt.desktop: OK"
grep -E '^(Exec|Icon|MimeType)=' $apps/annt.desktop
for s in 32 48 64 128 256 512; do
  f=/usr/share/icons/hicolor/${s}x${s}/apps/annt.png
  [ -f $f ] || fail "no $f"
  got=$(python3 -c 'import struct,sys; d=open(sys.argv[1],"rb").read(24); print("%dx%d" % struct.unpack(">II", d[16:24]))' $f)
  [ "$got" = "${s}x${s}" ] || fail "$f is $got"
  echo "$f: $got"
done
[ -f /usr/share/icons/hicolor/scalable/apps/annt.svg ] || fail "no scalable icon"
echo "/usr/share/icons/hicolor/scalable/apps/annt.svg: present"
ls /usr/share/annt/presets | grep -q quick-cpu.toml || fail "presets not installed"
echo "/usr/share/annt/presets: $(ls /usr/share/annt/presets | wc -l) presets"
[ -f /usr/share/doc/annt/README.md ] || fail "no README in /usr/share/doc/annt"
[ -f /usr/share/doc/annt/copyright ] || fail "no copyright file"
if command -v gio >/dev/null 2>&1; then
  # What a file manager's "Open with" list uses: the entry's MIME types, per the installed
  # database (update-desktop-database runs from dpkg's trigger when desktop-file-utils is in).
  grep -h 'annt.desktop' /usr/share/applications/mimeinfo.cache 2>/dev/null | head -6 || true
fi
if printf '%s\n' "${names[@]}" | grep -qx annt-cuda; then
  echo "== annt-cuda"
  [ -x /usr/bin/annt-cuda ] || fail "no /usr/bin/annt-cuda"
  desktop-file-validate $apps/annt-cuda.desktop && echo "desktop-file-validate $apps/annt-cuda.desktop: OK"
  # It links the CUDA libraries: without them it cannot start; show what it says.
  # ANNT_CUDA_LIBS (a LD_LIBRARY_PATH) points it at CUDA libraries installed elsewhere.
  set +e
  LD_LIBRARY_PATH=${ANNT_CUDA_LIBS:-} annt-cuda --version 2>&1 | head -3
  LD_LIBRARY_PATH=${ANNT_CUDA_LIBS:-} annt-cuda models 2>&1 | head -3
  set -e
fi

if [ -n "${ANNT_SCREENSHOT:-}" ]; then
  echo "== started through its desktop entry (gio launch, under Xvfb)"
  "$(dirname "$0")/screenshot.sh" "$ANNT_SCREENSHOT" $apps/annt.desktop wait 3
fi

echo "== remove"
dpkg --purge "${names[@]}"
[ ! -e /usr/bin/annt ] || fail "/usr/bin/annt left behind"
[ ! -e $apps/annt.desktop ] || fail "desktop entry left behind"
trap - EXIT
echo "PASS: ${names[*]} installed, checked and removed"
