"""``vmo explore [FILE] [--demo] [--host 127.0.0.1] [--port N] [--no-open]``.

Serves the explorer (`vmo.explore.app`) with the standard library's WSGI server, one thread
per request, bound to 127.0.0.1 unless ``--host`` says otherwise (the page drives a kernel:
do not expose it). ``FILE`` is a trace (``vmo trace -o``) or a repro file (``vmo fuzz``) to
replay; ``--demo`` opens a live kernel on the demo's steps. It prints the URL and opens a
browser unless ``--no-open`` or there is no display.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import webbrowser
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from vmo.errors import ZxError
from vmo.explore.app import ExplorerApp

DEFAULT_PORT = 8731


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's kept-alive connection must not hold up the exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


def make_app(file: str | None = None, demo: bool = False) -> ExplorerApp:
    import vmo.explore.replay as replay
    from vmo.explore.session import Session, demo_session

    if file is not None:
        return ExplorerApp(replay=replay.load(file))
    app = ExplorerApp(session=demo_session() if demo else Session(),
                      title="vmo explore: the demo" if demo else "vmo explore")
    app.demo = demo
    return app


def serve(app: ExplorerApp, host: str, port: int) -> WSGIServer:
    """A started server (``server.serve_forever`` on a daemon thread); ``shutdown()`` and
    ``server_close()`` stop it."""
    server = make_server(host, port, app, server_class=_ThreadingServer,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="vmo-explore", daemon=True).start()
    return server


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "explore", help="a web page showing a live kernel, or replaying a trace or repro file",
        description="Serve the explorer: the clone tree with page lists, split bits and "
                    "markers drawn as SVG, the arena's frames and a timeline of events; "
                    "forms drive a live kernel, or FILE (a vmo trace -o file or a vmo fuzz "
                    "repro) is replayed step by step.")
    p.add_argument("file", nargs="?", metavar="FILE", help="a trace (.jsonl) or repro (.py)")
    p.add_argument("--demo", action="store_true", help="open on the demo's steps")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="port (default %(default)s; 0 picks a free one)")
    p.add_argument("--no-open", action="store_true", help="do not open a browser")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    if args.file and args.demo:
        print("vmo explore: give FILE or --demo, not both", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"vmo explore: --port {args.port} is not a port number", file=sys.stderr)
        return 2
    try:
        app = make_app(args.file, args.demo)
    except ZxError as e:
        print(f"vmo explore: {e}", file=sys.stderr)
        return 1
    try:
        server = serve(app, args.host, args.port)
    except OSError as e:
        print(f"vmo explore: cannot listen on {args.host}:{args.port}: {e.strerror}",
              file=sys.stderr)
        app.close()
        return 1
    host, port = str(server.server_address[0]), int(server.server_address[1])
    shown = f"[{host}]" if ":" in str(host) else host
    url = f"http://{shown}:{port}/"
    print(f"vmo explore: serving {app.title} at {url} (Ctrl-C stops)", flush=True)
    if not args.no_open and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        webbrowser.open(url)
    try:
        # Wake twice a second rather than block for good: Python runs a signal's handler in
        # the main thread when that thread next runs bytecode, and a SIGINT the kernel hands
        # to one of the server's threads does not interrupt the main thread's wait.
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
        app.close()
    return 0
