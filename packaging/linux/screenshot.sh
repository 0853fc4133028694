#!/usr/bin/env bash
# Starts annt under Xvfb, waits for its window to render, runs optional actions, and saves a
# screenshot:   packaging/linux/screenshot.sh OUT.png [BINARY] [ACTION…]
# BINARY may be a desktop entry (…/annt.desktop): it is then started as a desktop does,
# with `gio launch ENTRY $ANNT_FILES` (the files, if any, become the entry's %F).
# ACTIONS, in order, after the first frame: click X Y · wait SECONDS · type TEXT (keystrokes
# into the focused field) · key KEYS (xdotool key names, e.g. ctrl+a) · drop PATH (a real XDND drop through
# tools/xdnd_drop.py, as a file manager does).
# Needs (apt): xvfb xauth xdotool imagemagick python3-xlib.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
if [ "${1:-}" != "--inner" ]; then
  export XDG_RUNTIME_DIR=$(mktemp -d)
  unset WAYLAND_DISPLAY
  exec xvfb-run -a -s "-screen 0 1280x820x24" "$0" --inner "$@"
fi
shift
out=$1; bin=${2:-target/release/annt}; shift 2 || shift $#
pid=
if [[ $bin == *.desktop ]]; then
  # shellcheck disable=SC2086  # ANNT_FILES is a list of paths
  gio launch "$bin" ${ANNT_FILES:-}
else
  "$bin" & pid=$!
fi
wid=
for _ in $(seq 1 150); do
  wid=$(xdotool search --name '^annt' 2>/dev/null | head -1 || true)
  [ -n "$wid" ] && break
  sleep 0.2
done
[ -n "$wid" ] || { echo "no annt window appeared" >&2; [ -z "$pid" ] || kill $pid; exit 1; }
# A desktop launch does not give us the child: ask the window for it (_NET_WM_PID).
[ -n "$pid" ] || pid=$(xdotool getwindowpid "$wid")
if [[ $bin == *.desktop ]]; then
  echo "window $wid belongs to: $(tr '\0' ' ' </proc/$pid/cmdline)"
  # What a dock or task bar uses to match the entry and draw the icon.
  xprop -id "$wid" WM_CLASS 2>/dev/null || true
  xprop -id "$wid" -f _NET_WM_ICON 32c ' = $0 x $1 px\n' _NET_WM_ICON 2>/dev/null || true
fi
sleep 3
while [ $# -gt 0 ]; do
  case $1 in
    click) xdotool mousemove --window "$wid" "$2" "$3" click 1; shift 3 ;;
    wait) sleep "$2"; shift 2 ;;
    key) xdotool key "$2"; shift 2 ;;
    type) xdotool type --delay 20 "$2"; shift 2 ;;
    drop) /usr/bin/python3 "$here/tools/xdnd_drop.py" "$wid" "$2"; shift 2 ;;
    *) echo "unknown action $1" >&2; kill $pid; exit 2 ;;
  esac
done
sleep 1
import -window "$wid" "$out"
kill $pid; wait $pid 2>/dev/null || while kill -0 $pid 2>/dev/null; do sleep 0.1; done
echo "screenshot: $out"
