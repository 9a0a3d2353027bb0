"""The explorer's web application: a WSGI callable serving one page and a small JSON API.

Routes (everything else is a 404 with a JSON body):

- ``GET /``: the page (``static/index.html``, which draws everything itself, SVG included).
- ``GET /api/info``: ``{"mode": "live" | "replay", "title", "kind", "page_size", "ops"}``.
- ``GET /api/steps?since=N``: the timeline from step ``N``: ``{"steps": [...], "total"}``.
- ``POST /api/op`` with ``{"op": name, "args": {...}}``: run one operation on the live kernel
  (`session.Session.apply`); the answer is its step, whose ``status`` is the `ZxError` status
  name when the call failed. A replay has no live kernel: ``ERR_NOT_SUPPORTED``.
- ``POST /api/reset``: a fresh live kernel.

The server never answers 500: a request it cannot parse is a 400 with the reason, an
operation that fails is a step that says why, and an unexpected exception anywhere is caught
and reported as ``ERR_INTERNAL`` (and printed to stderr) while the server keeps serving.
"""

from __future__ import annotations

import json
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from vmo.errors import Status, ZxError
from vmo.explore.session import Session
from vmo.pmm import PAGE_SIZE

MAX_BODY = 64 * 1024
StartResponse = Callable[..., Any]


def _page() -> bytes:
    return resources.files("vmo.explore").joinpath("static/index.html").read_bytes()


class ExplorerApp:
    """The WSGI application. Live mode drives ``session``; replay mode shows ``replay`` (a
    `replay.load` result) and refuses operations."""

    def __init__(self, session: Session | None = None,
                 replay: dict[str, Any] | None = None, *, title: str = "vmo explore") -> None:
        if (session is None) == (replay is None):
            raise ValueError("give exactly one of session and replay")
        self.session = session
        self.replay = replay
        self.title = replay["title"] if replay is not None else title
        self._lock = threading.Lock()
        self.page = _page()
        self.demo = False  # a live session that starts on the demo's steps

    # ---------------------------------------------------------------- WSGI

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        try:
            status, ctype, body = self._route(environ)
        except _HttpError as e:
            status, ctype, body = e.status, "application/json", _json(
                {"status": "ERR_INVALID_ARGS", "error": e.message})
        except Exception as e:  # noqa: BLE001 - never a 500: say what broke and keep serving
            traceback.print_exc(file=sys.stderr)
            status, ctype, body = "200 OK", "application/json", _json(
                {"status": Status.ERR_INTERNAL.name, "ok": False,
                 "error": f"internal error: {type(e).__name__}: {e}"})
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body))),
                                ("Cache-Control", "no-store"),
                                ("X-Content-Type-Options", "nosniff")])
        return [body]

    def _route(self, environ: dict[str, Any]) -> tuple[str, str, bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        if path in ("/", "/index.html"):
            _method(method, "GET")
            return "200 OK", "text/html; charset=utf-8", self.page
        if path == "/api/info":
            _method(method, "GET")
            return _ok(self.info())
        if path == "/api/steps":
            _method(method, "GET")
            query = parse_qs(environ.get("QUERY_STRING", ""))
            try:
                since = max(0, int(query.get("since", ["0"])[0]))
            except ValueError:
                raise _HttpError("400 Bad Request", "since must be an integer") from None
            steps = self._steps()
            return _ok({"steps": steps[since:], "total": len(steps)})
        if path == "/api/op":
            _method(method, "POST")
            req = _read_json(environ)
            if self.session is None:
                return _ok({"ok": False, "status": Status.ERR_NOT_SUPPORTED.name,
                            "error": "this is a replay: operations need a live kernel"})
            return _ok(self.session.apply(req.get("op"), req.get("args") or {}))
        if path == "/api/reset":
            _method(method, "POST")
            if self.session is None:
                return _ok({"ok": False, "status": Status.ERR_NOT_SUPPORTED.name,
                            "error": "this is a replay"})
            with self._lock:
                old, self.session = self.session, Session()
            old.close()
            return _ok({"ok": True})
        return "404 Not Found", "application/json", _json(
            {"status": Status.ERR_NOT_FOUND.name, "error": f"no such page: {path[:100]}"})

    # ---------------------------------------------------------------- data

    def info(self) -> dict[str, Any]:
        return {"mode": "live" if self.session is not None else "replay",
                "title": self.title,
                "kind": self.replay["kind"] if self.replay is not None else "live",
                "page_size": PAGE_SIZE, "demo": self.demo,
                "ops": sorted(self.session.ops) if self.session is not None else []}

    def _steps(self) -> list[dict[str, Any]]:
        if self.replay is not None:
            return list(self.replay["steps"])
        assert self.session is not None
        with self.session.lock:
            return list(self.session.steps)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


class _HttpError(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _method(got: str, want: str) -> None:
    if got != want:
        raise _HttpError("405 Method Not Allowed", f"use {want}")


def _json(obj: Any) -> bytes:
    return json.dumps(obj, default=str).encode()


def _ok(obj: Any) -> tuple[str, str, bytes]:
    return "200 OK", "application/json", _json(obj)


def _read_json(environ: dict[str, Any]) -> dict[str, Any]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise _HttpError("400 Bad Request", "bad Content-Length") from None
    if length < 0 or length > MAX_BODY:
        raise _HttpError("400 Bad Request", f"the body must be at most {MAX_BODY} bytes")
    raw = environ["wsgi.input"].read(length) if length else b""
    try:
        obj = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise _HttpError("400 Bad Request", "the body is not JSON") from None
    if not isinstance(obj, dict):
        raise _HttpError("400 Bad Request", "the body must be a JSON object")
    return obj


__all__ = ["ExplorerApp", "ZxError"]
