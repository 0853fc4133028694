#!/usr/bin/env python3
"""Drops files on an X11 window the way a file manager does: a real XDND (version 5)
exchange, so the application receives them through its toolkit's drag-and-drop path
(winit's XdndDrop handling for annt), not through a shortcut.

    tools/xdnd_drop.py WINDOW_ID PATH [PATH...]

WINDOW_ID is decimal or 0x-hex (e.g. from `xdotool search --name '^annt'`). Needs
python3-xlib. Exits 0 once the target says XdndFinished (or accepted the drop), 1 when it
refused it, 2 on a timeout.

The source side of the protocol (https://www.freedesktop.org/wiki/Specifications/XDND/):
own the XdndSelection with an invisible window, send XdndEnter (offering text/uri-list),
XdndPosition at the window's centre, wait for XdndStatus, send XdndDrop, serve the
SelectionRequest that follows with the file URIs, and wait for XdndFinished.
"""

import sys
import time
import urllib.parse
from pathlib import Path

from Xlib import X, Xatom, display
from Xlib.protocol import event

XDND_VERSION = 5
TIMEOUT_S = 10.0


def client_window(d, win):
    """The deepest child that advertises XdndAware (toolkits put it on the top level or a
    child), or `win` itself."""
    aware = d.intern_atom("XdndAware")
    stack = [win]
    while stack:
        w = stack.pop()
        prop = w.get_full_property(aware, X.AnyPropertyType)
        if prop is not None:
            return w
        try:
            stack.extend(w.query_tree().children)
        except Exception:  # a child vanished while walking
            pass
    return win


def send(d, target, source, type_name, data):
    ev = event.ClientMessage(
        window=target,
        client_type=d.intern_atom(type_name),
        data=(32, [source.id] + data + [0] * (4 - len(data))),
    )
    target.send_event(ev, event_mask=X.NoEventMask)
    d.flush()


def wait_for(d, source, wanted, deadline, on_request):
    """Events until a ClientMessage of a type in `wanted` arrives; SelectionRequests are
    served on the way."""
    wanted_atoms = {d.intern_atom(w): w for w in wanted}
    while time.monotonic() < deadline:
        while d.pending_events():
            ev = d.next_event()
            if ev.type == X.SelectionRequest:
                on_request(ev)
            elif ev.type == X.ClientMessage and ev.client_type in wanted_atoms:
                return wanted_atoms[ev.client_type], ev
        time.sleep(0.01)
    return None, None


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 64
    d = display.Display()
    root = d.screen().root
    top = d.create_resource_object("window", int(argv[1], 0))
    target = client_window(d, top)
    uris = "".join(
        "file://" + urllib.parse.quote(str(Path(p).resolve())) + "\r\n" for p in argv[2:]
    ).encode()

    source = root.create_window(0, 0, 1, 1, 0, X.CopyFromParent)
    selection = d.intern_atom("XdndSelection")
    uri_list = d.intern_atom("text/uri-list")
    source.set_selection_owner(selection, X.CurrentTime)

    def on_request(req):
        prop = req.property or req.target
        if req.target == uri_list:
            req.requestor.change_property(prop, uri_list, 8, uris)
        else:
            prop = X.NONE
        notify = event.SelectionNotify(
            time=req.time,
            requestor=req.requestor,
            selection=req.selection,
            target=req.target,
            property=prop,
        )
        req.requestor.send_event(notify)
        d.flush()

    # The window's centre in root coordinates (XdndPosition's are the root's): the root's
    # origin seen from the window is minus the window's position.
    geo = top.get_geometry()
    origin = top.translate_coords(root, 0, 0)
    x = -origin.x + geo.width // 2
    y = -origin.y + geo.height // 2

    deadline = time.monotonic() + TIMEOUT_S
    send(d, target, source, "XdndEnter", [XDND_VERSION << 24, uri_list, 0, 0])
    action_copy = d.intern_atom("XdndActionCopy")
    send(d, target, source, "XdndPosition", [0, (x << 16) | y, X.CurrentTime, action_copy])
    kind, status = wait_for(d, source, ["XdndStatus"], deadline, on_request)
    if kind is None:
        print("no XdndStatus from the window", file=sys.stderr)
        return 2
    accepted = status.data[1][1] & 1
    if not accepted:
        send(d, target, source, "XdndLeave", [0])
        print("the window does not accept this drop", file=sys.stderr)
        return 1
    send(d, target, source, "XdndDrop", [0, X.CurrentTime])
    kind, _ = wait_for(d, source, ["XdndFinished"], deadline, on_request)
    if kind is None:
        print("dropped; no XdndFinished before the timeout", file=sys.stderr)
        return 2
    print(f"dropped {len(argv) - 2} path(s) on window {target.id:#x}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
