"""The explorer's server side without a browser: the WSGI app's routes, that no request makes
it answer 500 or leaves the kernel invalid, the session's operations, and the replays."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmo import debug
from vmo.cli.explore import serve
from vmo.explore.app import ExplorerApp
from vmo.explore.replay import load, load_trace
from vmo.explore.session import DEMO_OPS, OP_NAMES, Session, demo_session

ROOT = Path(__file__).resolve().parent.parent
REPRO = ROOT / "tests" / "data" / "repro_fork_without_copy.py"


def call(app: ExplorerApp, method: str, path: str, body: bytes = b"",
         query: str = "") -> tuple[str, Any]:
    out: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        out["status"] = status
        out["headers"] = dict(headers)

    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    data = b"".join(app(environ, start_response))
    if out["headers"]["Content-Type"].startswith("application/json"):
        return out["status"], json.loads(data)
    return out["status"], data


@pytest.fixture
def app():  # type: ignore[no-untyped-def]
    a = ExplorerApp(session=Session())
    yield a
    a.close()


def test_page_and_info(app: ExplorerApp) -> None:
    status, page = call(app, "GET", "/")
    assert status == "200 OK" and b"<svg id=\"tree\"" in page
    status, info = call(app, "GET", "/api/info")
    assert info["mode"] == "live" and "snapshot" in info["ops"]


def test_operations_make_steps_with_events(app: ExplorerApp) -> None:
    for op, args in [("create", {"size": "0x2000"}), ("write", {"koid": "1", "text": "hi"}),
                     ("snapshot", {"koid": "1"}), ("write", {"koid": "1", "text": "x"})]:
        _, step = call(app, "POST", "/api/op", json.dumps({"op": op, "args": args}).encode())
        assert step["ok"], step
    assert [e["kind"] for e in step["events"]] == ["fork"]
    tree = step["state"]["trees"][0]
    assert [n["kind"] for n in tree] == ["hidden", "vmo", "vmo"]
    assert tree[0]["pages"][0]["split"] == "L"
    _, steps = call(app, "GET", "/api/steps", query="since=2")
    assert steps["total"] == 5 and [s["index"] for s in steps["steps"]] == [2, 3, 4]


def test_bad_arguments_are_steps_with_their_status(app: ExplorerApp) -> None:
    call(app, "POST", "/api/op", b'{"op": "create", "args": {"size": "4096"}}')
    cases = [
        ({"op": "write", "args": {"koid": "zz"}}, "ERR_INVALID_ARGS"),
        ({"op": "write", "args": {"koid": "1", "offset": "0x10000", "text": "a"}},
         "ERR_OUT_OF_RANGE"),
        ({"op": "close", "args": {"koid": "9"}}, "ERR_BAD_HANDLE"),
        ({"op": "resize", "args": {"koid": "1", "size": "8192"}}, "ERR_UNAVAILABLE"),
        ({"op": "frobnicate", "args": {}}, "ERR_NOT_SUPPORTED"),
        ({"op": "child", "args": {"koid": "1", "kind": "slice", "offset": "1"}},
         "ERR_INVALID_ARGS"),
    ]
    for body, status in cases:
        code, step = call(app, "POST", "/api/op", json.dumps(body).encode())
        assert code == "200 OK"
        assert step["status"] == status and not step["ok"] and step["valid"], step


def test_malformed_requests_are_4xx(app: ExplorerApp) -> None:
    assert call(app, "POST", "/api/op", b"not json")[0].startswith("400")
    assert call(app, "POST", "/api/op", b"[1, 2]")[0].startswith("400")
    assert call(app, "GET", "/api/op")[0].startswith("405")
    assert call(app, "GET", "/nowhere")[0].startswith("404")
    assert call(app, "GET", "/api/steps", query="since=x")[0].startswith("400")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=8)
_args = st.dictionaries(
    st.sampled_from(["koid", "size", "offset", "length", "text", "kind", "op", "resizable",
                     "name"]),
    st.one_of(st.sampled_from(["1", "2", "0", "-1", "0x1000", "4096", "18446744073709551615",
                               "snapshot", "slice", "ZERO", "LOCK", "", "0x", "1e3"]),
              _json_values),
    max_size=6)


@settings(max_examples=120, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from([*OP_NAMES, "bogus", ""]), _args),
                    min_size=1, max_size=8))
def test_no_request_answers_500_or_breaks_the_kernel(ops: list[tuple[str, Any]]) -> None:
    app = ExplorerApp(session=Session())
    try:
        call(app, "POST", "/api/op", b'{"op": "create", "args": {"size": "0x3000"}}')
        for op, args in ops:
            status, step = call(app, "POST", "/api/op",
                                json.dumps({"op": op, "args": args}).encode())
            assert status == "200 OK"
            assert step["status"] != "ERR_INTERNAL", step
            assert step["valid"], step["problem"]
        assert app.session is not None
        debug.validate(app.session.kernel)
    finally:
        app.close()


@settings(max_examples=60, deadline=None)
@given(body=st.one_of(st.binary(max_size=40), _json_values.map(lambda v: json.dumps(v).encode())))
def test_no_body_answers_500(body: bytes) -> None:
    app = ExplorerApp(session=Session())
    try:
        status, _ = call(app, "POST", "/api/op", body)
        assert status[:3] in ("200", "400")
    finally:
        app.close()


def test_demo_session_runs_every_step() -> None:
    s = demo_session()
    try:
        assert len(s.steps) == len(DEMO_OPS) + 1
        bad = [(st["op"], st["error"]) for st in s.steps if not st["ok"] or not st["valid"]]
        assert bad == []
        kinds = {e["kind"] for st in s.steps for e in st["events"]}
        assert {"clone", "fork", "migrate", "merge", "release", "supply"} <= kinds
    finally:
        s.close()


def test_replay_of_a_repro_runs_to_the_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the repro names its mutant catalogue relative to the checkout
    r = load(str(REPRO))
    steps = r["steps"]
    assert r["kind"] == "repro"
    assert steps[-1]["error"].startswith("Mismatch: koid 2 content differs")
    assert all(s["ok"] for s in steps[:-1])
    fork_step = next(s for s in steps if any(e["kind"] == "fork" for e in s["events"]))
    child = next(c for c in fork_step["compare"] if c["koid"] == 2)
    assert [p["equal"] for p in child["pages"]] == [False, True, True]
    # The mutant is no longer applied once the replay is loaded.
    import inspect

    from vmo.cow_pages import CowPages

    assert "MUTANT" not in inspect.getsource(CowPages._clone_cow_page_locked)


def test_replay_of_a_trace_file(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text(
        "import vmo\nfrom vmo import ChildOptions\n"
        "with vmo.Kernel(1 << 20) as k:\n"
        "    v = k.vmo_create(2 * 4096)\n    v.write(b'a' * 8192)\n"
        "    c = v.create_child(ChildOptions.SNAPSHOT, 0, 8192)\n"
        "    c.write(b'b')\n    v.write(b'c', 4096)\n    c.close()\n")
    out = tmp_path / "t.jsonl"
    subprocess.run([sys.executable, "-m", "vmo", "trace", "-o", str(out), "--",
                    sys.executable, str(script)], check=True, capture_output=True)
    r = load(str(out))
    assert r["kind"] == "trace"
    by_op = {s["op"]: s for s in r["steps"]}
    after_clone = by_op["clone"]["state"]["trees"]
    assert [n["kind"] for n in after_clone[0]] == ["hidden", "vmo", "vmo"]
    merged = by_op["merge"]["state"]["trees"][0]
    assert len(merged) == 1 and merged[0]["koid"] == 1
    # Page 1 the left side forked itself; page 0 (the right side had forked it: split bit R)
    # is the left side's alone after the close and moves in, as the merge event says.
    assert [(p["off"], p["split"]) for p in merged[0]["pages"]] == [(0, ""), (1, "")]
    assert by_op["merge"]["events"][0]["moved"] == 1


@pytest.mark.parametrize("text", ["", "{\"kind\": 3}\n", "{\"kind\": \"clone\", \"koid\": []}",
                                  "{not json"])
def test_bad_trace_files_are_invalid_args(text: str) -> None:
    from vmo import Status, ZxError

    if not text:
        assert len(load_trace(text)["steps"]) == 1
        return
    with pytest.raises(ZxError) as e:
        load_trace(text)
    assert e.value.status == Status.ERR_INVALID_ARGS


def test_files_that_are_neither(tmp_path: Path) -> None:
    from vmo import ZxError

    for name, text in [("a.py", "x = (\n"), ("b.py", "print(1)\n"), ("c.txt", "hello")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ZxError):
            load(str(tmp_path / name))
    with pytest.raises(ZxError):
        load(str(tmp_path / "missing.jsonl"))


# `vmo` as run from a terminal, where Ctrl-C raises KeyboardInterrupt. A process started in
# the background by a non-interactive shell (`cmd &`) inherits SIGINT ignored, and Python then
# leaves it ignored; a child also inherits a blocked SIGINT. Full-suite runs started that way
# hung here (the child's main thread kept sleeping): the child is given a terminal's SIGINT.
_AS_AT_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "sys.argv = ['vmo', *sys.argv[1:]]; runpy.run_module('vmo', run_name='__main__')")


def test_vmo_explore_command_binds_localhost_and_stops(tmp_path: Path) -> None:
    # -X faulthandler: should the server not stop, SIGABRT makes it print every thread's stack.
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", _AS_AT_A_TERMINAL,
                             "explore", "--port", "0", "--no-open"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "api/info", timeout=10) as resp:
            assert json.load(resp)["mode"] == "live"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            out, err = proc.communicate(timeout=30)
            pytest.fail(f"vmo explore did not stop within 30 s of SIGINT; its threads:\n{err}")
    assert proc.returncode == 0, err


_SIGINT_TO_SERVER_THREAD = """
import signal, sys, threading, time
from vmo.cli import main

signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal (see above)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

def poke():
    while True:
        server = next((t for t in threading.enumerate() if t.name == "vmo-explore"), None)
        if server is not None:
            break
        time.sleep(0.05)
    time.sleep(0.3)
    signal.pthread_kill(server.ident, signal.SIGINT)

threading.Thread(target=poke, daemon=True).start()
sys.exit(main(["explore", "--port", "0", "--no-open"]))
"""


def test_vmo_explore_stops_when_sigint_lands_on_a_server_thread() -> None:
    # The kernel may hand a process's SIGINT to any thread; Python acts on it only when the
    # main thread runs bytecode again. The command used to block in Event().wait() for good.
    proc = subprocess.run([sys.executable, "-c", _SIGINT_TO_SERVER_THREAD],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "serving" in proc.stdout


def test_serve_in_process() -> None:
    app = ExplorerApp(session=Session())
    server = serve(app, "127.0.0.1", 0)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            assert resp.status == 200
    finally:
        server.shutdown()
        server.server_close()
        app.close()


def test_explore_usage_errors(capfd: pytest.CaptureFixture[str]) -> None:
    from vmo.cli import main

    assert main(["explore", "--demo", str(REPRO)]) == 2
    assert main(["explore", "--port", "70000", "--no-open"]) == 2
    assert main(["explore", "/nonexistent.jsonl", "--no-open"]) == 1
    assert "cannot read" in capfd.readouterr().err
