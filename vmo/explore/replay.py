"""Recorded runs the explorer steps through: a `vmo fuzz` repro file, or a `vmo trace` file.

A repro file (`vmo.testing.run.write_repro`) is a pytest file whose test builds a state
machine, calls its rules in order inside ``try`` and tears down in ``finally``. `load_repro`
runs it one statement at a time (its module-level imports first, then ``state = Machine()``,
then each call), and after each records the kernel's picture and, for every VMO the oracle
knows, the oracle's expected content beside the kernel's (page by page: equal or not, and
the first bytes of each). The statement that fails (the bug the repro shows) is the last step,
with its error. Running a repro file runs its Python code, as pytest would: open only files
you would run.

A trace file holds events only, so `load_trace` rebuilds what the events say about the trees
(nodes, hidden nodes, which pages each node holds) and draws that: a lighter picture than a
live kernel's, with one step per event.
"""

from __future__ import annotations

import ast
import contextlib
import json
from typing import Any

from vmo.errors import Status, ZxError
from vmo.explore.state import kernel_state
from vmo.pmm import PAGE_SIZE

MAX_REPLAY_STEPS = 5000
PREVIEW_BYTES = 12


def load(path: str) -> dict[str, Any]:
    """A replay (``{"title", "kind", "steps"}``) of the file at ``path``: a trace if its first
    line is a JSON object, else a repro. ``ZxError`` when it is neither."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ZxError(Status.ERR_IO, f"cannot read {path}: {e}") from None
    first = text.lstrip()[:1]
    if first == "{":
        return load_trace(text, path)
    return load_repro(text, path)


# ---------------------------------------------------------------------------- repro files

def _preview(data: bytes) -> str:
    head = data[:PREVIEW_BYTES]
    if not any(head):
        return "zeros" if not any(data) else "zeros…"
    return head.hex(" ")


def _compare(machine: Any) -> list[dict[str, Any]]:
    """Oracle against kernel, per live VMO and page."""
    out: list[dict[str, Any]] = []
    oracle = getattr(machine, "oracle", None)
    real = getattr(machine, "real", {})
    if oracle is None:
        return out
    for ov in oracle.live():
        v = real.get(ov.koid)
        want = ov.content()
        row: dict[str, Any] = {"oracle_koid": ov.koid, "koid": getattr(v, "koid", 0),
                               "size": len(want) // PAGE_SIZE, "pages": []}
        try:
            got = v.read(len(want), 0) if v is not None else b""
            row["error"] = ""
        except ZxError as e:
            got, row["error"] = b"", f"{e.status.name}: {e}"
        for off in range(0, len(want), PAGE_SIZE):
            w, g = want[off:off + PAGE_SIZE], got[off:off + PAGE_SIZE]
            row["pages"].append({"off": off // PAGE_SIZE, "equal": w == g,
                                 "oracle": _preview(w),
                                 "kernel": _preview(g) if g else "—"})
        out.append(row)
    return out


def load_repro(text: str, path: str = "<repro>") -> dict[str, Any]:
    try:
        tree = ast.parse(text, path)
    except (SyntaxError, ValueError) as e:
        raise ZxError(Status.ERR_INVALID_ARGS, f"{path} is neither a trace nor Python: {e}"
                      ) from None
    # Module-level imports and names the test may use (``Machine = Module.Machine``).
    prelude: list[ast.stmt] = [n for n in tree.body
                               if isinstance(n, ast.Import | ast.ImportFrom | ast.Assign)]
    func = next((n for n in tree.body if isinstance(n, ast.FunctionDef)
                 and n.name.startswith("test")), None)
    if func is None:
        raise ZxError(Status.ERR_INVALID_ARGS, f"{path} has no test function: not a repro")
    body = func.body
    # A repro with a context (``with MUTANT.applied(): _replay()``): the steps are in
    # _replay, and they run inside that context.
    contexts = [item.context_expr for n in func.body if isinstance(n, ast.With)
                for item in n.items]
    replay = next((n for n in tree.body if isinstance(n, ast.FunctionDef)
                   and n.name == "_replay"), None)
    if replay is not None:
        body = replay.body
    setup = [n for n in body if not isinstance(n, ast.Try)]
    tries = [n for n in body if isinstance(n, ast.Try)]
    if not setup or not tries:
        raise ZxError(Status.ERR_INVALID_ARGS,
                      f"{path}: expected `state = Machine()` and a try block, as vmo fuzz "
                      "writes them")
    ns: dict[str, Any] = {"__name__": "vmo_replay"}
    steps: list[dict[str, Any]] = []

    def run(stmts: list[ast.stmt], label: str) -> str:
        code = compile(ast.Module(body=stmts, type_ignores=[]), path, "exec")
        try:
            exec(code, ns)  # noqa: S102 - replaying the user's repro file, as pytest would
        except Exception as e:  # the failure the repro records, or anything it raises
            return f"{type(e).__name__}: {e}"
        return ""

    def snapshot(label: str, error: str) -> None:
        machine = ns.get("state")
        k = getattr(machine, "k", None)
        state = kernel_state(k) if k is not None else {"trees": [], "frames": {}, "vmos": []}
        steps.append({"index": len(steps), "op": label, "args": {}, "ok": not error,
                      "status": "FAILED" if error else "OK", "error": error, "result": "",
                      "events": events_since(), "valid": True, "problem": "",
                      "state": state, "compare": _compare(machine) if machine else []})

    collected: list[dict[str, Any]] = []
    traced: list[Any] = []

    def events_since() -> list[dict[str, Any]]:
        out = list(collected)
        collected.clear()
        return out

    error = run(prelude, "imports")
    stack = contextlib.ExitStack()
    for i, expr in enumerate(contexts):
        if error:
            break
        error = run([ast.parse(f"_vmo_context_{i} = {ast.unparse(expr)}").body[0]], "")
        if not error:
            try:
                stack.enter_context(ns[f"_vmo_context_{i}"])
            except Exception as e:  # noqa: BLE001 - reported as the replay's first step
                error = f"{type(e).__name__}: {e}"
    error = error or run(setup, "setup")
    machine = ns.get("state")
    k = getattr(machine, "k", None)
    if k is not None and not error:
        traced.append(k.trace(lambda e: collected.append(e.to_dict())))
    snapshot(ast.unparse(setup[-1]) if setup else "setup", error)
    try:
        if not error:
            for stmt in tries[0].body:
                if len(steps) >= MAX_REPLAY_STEPS:
                    break
                err = run([stmt], "")
                snapshot(ast.unparse(stmt), err)
                if err:
                    break
    finally:
        for t in traced:
            t.close()
        stack.close()
        teardown = getattr(machine, "teardown", None)
        if callable(teardown):
            with contextlib.suppress(Exception):  # a broken machine's teardown: keep the replay
                teardown()
    return {"title": f"replay of {path}", "kind": "repro", "steps": steps}


# ---------------------------------------------------------------------------- trace files

class _TraceModel:
    """Trees as the events describe them (see the module docstring). Nodes are dicts shaped
    like `state.kernel_state`'s, with ``pages`` holding what the events placed there."""

    def __init__(self) -> None:
        self.nodes: dict[int, dict[str, Any]] = {}
        self.node_of_koid: dict[int, int] = {}

    def _node(self, nid: int) -> dict[str, Any]:
        n = self.nodes.get(nid)
        if n is None:
            n = {"id": nid, "parent": 0, "children": [], "kind": "vmo", "koid": 0, "name": "",
                 "size": 0, "parent_offset": 0, "parent_start_limit": 0, "parent_limit": 0,
                 "pager": False, "discardable": "", "attribution": 0, "committed": 0,
                 "pages": [], "more_pages": 0, "_pages": {}}
            self.nodes[nid] = n
        return n

    def _attach(self, parent: int, child: int) -> None:
        c = self._node(child)
        if c["parent"] and c["parent"] in self.nodes:
            old = self.nodes[c["parent"]]["children"]
            if child in old:
                old.remove(child)
        c["parent"] = parent
        if parent:
            kids = self._node(parent)["children"]
            if child not in kids:
                kids.append(child)

    def apply(self, d: dict[str, Any]) -> None:
        kind = d.get("kind")
        g = d.get
        if kind == "vmo_create":
            n = self._node(g("node", 0))
            n["koid"], n["size"] = g("koid", 0), g("size", 0)
            self.node_of_koid[n["koid"]] = n["id"]
        elif kind == "vmo_close":
            closing = self.nodes.get(g("node", 0))
            if closing is not None:
                n = closing
                n["koid"] = 0
                if not n["children"]:
                    self._remove(n["id"])
        elif kind == "clone":
            parent_node = self.node_of_koid.get(g("koid", 0), 0)
            right = self._node(g("right", 0))
            right["parent_offset"], right["parent_limit"] = g("offset", 0), g("length", 0)
            if g("mode") == "slice":
                right["kind"] = "slice"
            if g("hidden"):
                hidden, left = self._node(g("hidden", 0)), self._node(g("left", 0))
                old = self.nodes.get(parent_node)
                # The parent VMO's node becomes the hidden node; the VMO moves to the left.
                left["koid"] = g("koid", 0)
                left["size"] = old["size"] if old is not None else 0
                hidden["kind"], hidden["koid"] = "hidden", 0
                left["parent_limit"] = left["size"]
                left["_side"], right["_side"] = "L", "R"
                self.node_of_koid[g("koid", 0)] = left["id"]
                self._attach(hidden["id"], left["id"])
                self._attach(hidden["id"], right["id"])
            elif parent_node:
                self._attach(parent_node, right["id"])
        elif kind in ("fork", "migrate"):
            src = self._node(g("node", 0))
            page = src["_pages"].get(g("offset", 0), {"off": g("offset", 0), "frame": 0,
                                                      "split": ""})
            if kind == "migrate":
                src["_pages"].pop(g("offset", 0), None)
                moved = dict(page, off=g("to_offset", 0), split="")
            else:
                src["_pages"][g("offset", 0)] = dict(page, split=page.get("split", "") +
                                                    ("L" if g("split") == "left" else "R"))
                moved = {"off": g("to_offset", 0), "frame": 0, "split": ""}
            self._node(g("to_node", 0))["_pages"][g("to_offset", 0)] = moved
        elif kind == "marker":
            pages = self._node(g("node", 0))["_pages"]
            if g("added"):
                pages[g("offset", 0)] = {"off": g("offset", 0), "marker": True}
            else:
                pages.pop(g("offset", 0), None)
        elif kind == "supply":
            pages = self._node(g("node", 0))["_pages"]
            self._node(g("node", 0))["pager"] = True
            for off in range(g("offset", 0), g("offset", 0) + min(g("length", 0), 256)):
                pages[off] = {"off": off, "frame": 0, "split": "", "dirty": "clean"}
        elif kind == "dirty":
            page = self._node(g("node", 0))["_pages"].setdefault(
                g("offset", 0), {"off": g("offset", 0), "frame": 0, "split": ""})
            page["dirty"] = "dirty"
        elif kind in ("evict",):
            self._node(g("node", 0))["_pages"].pop(g("offset", 0), None)
        elif kind == "discard":
            self._node(g("node", 0))["_pages"].clear()
        elif kind == "merge":
            merged = self.nodes.get(g("node", 0))
            child = self._node(g("child", 0))
            if merged is not None:
                hidden = merged
                # A page carrying the child's split bit was forked by the child's side
                # already: stale. The others move in where the child has nothing.
                side = child.get("_side", "")
                for off, p in hidden["_pages"].items():
                    c_off = off - child["parent_offset"]
                    if c_off < 0 or c_off in child["_pages"] or (side and side in
                                                                 p.get("split", "")):
                        continue
                    child["_pages"][c_off] = dict(p, off=c_off, split="")
                child["parent_offset"] += hidden["parent_offset"]
                grand = hidden["parent"]
                if grand in self.nodes:  # the child takes the hidden node's place
                    kids = self.nodes[grand]["children"]
                    if hidden["id"] in kids:
                        kids[kids.index(hidden["id"])] = child["id"]
                child["parent"] = grand
                child["_side"] = hidden.get("_side", "")
                del self.nodes[hidden["id"]]

    def _remove(self, nid: int) -> None:
        n = self.nodes.pop(nid, None)
        if n is None:
            return
        if n["parent"] in self.nodes:
            kids = self.nodes[n["parent"]]["children"]
            if nid in kids:
                kids.remove(nid)
        for c in n["children"]:
            if c in self.nodes:
                self.nodes[c]["parent"] = 0

    def picture(self) -> dict[str, Any]:
        trees = []
        for root in [n for n in self.nodes.values() if not n["parent"]]:
            tree, stack = [], [root["id"]]
            while stack:
                n = self.nodes.get(stack.pop())
                if n is None:
                    continue
                out = {k: v for k, v in n.items() if not k.startswith("_")}
                out["pages"] = [n["_pages"][o] for o in sorted(n["_pages"])][:64]
                out["children"] = list(n["children"])
                tree.append(out)
                stack.extend(reversed(n["children"]))
            trees.append(tree)
        trees.sort(key=lambda t: t[0]["id"])
        return {"trees": trees, "frames": {}, "vmos": [], "page_size": PAGE_SIZE,
                "closed": False, "from_events": True}


def load_trace(text: str, path: str = "<trace>") -> dict[str, Any]:
    """One step per event of the first kernel in the file (``kernel`` 1, or unnumbered)."""
    model = _TraceModel()
    steps: list[dict[str, Any]] = [{"index": 0, "op": "start", "args": {}, "ok": True,
                                    "status": "OK", "error": "", "result": "", "events": [],
                                    "valid": True, "problem": "", "state": model.picture()}]
    for n, line in enumerate(text.splitlines(), 1):
        if len(steps) > MAX_REPLAY_STEPS:
            break
        line = line.strip()
        if not line:
            continue
        try:
            d = json.loads(line)
        except ValueError:
            raise ZxError(Status.ERR_INVALID_ARGS, f"{path}:{n}: not JSON") from None
        if not isinstance(d, dict) or not isinstance(d.get("kind"), str):
            raise ZxError(Status.ERR_INVALID_ARGS, f"{path}:{n}: not a trace event")
        if d.get("kernel", 1) != 1:
            continue
        try:
            model.apply(d)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ZxError(Status.ERR_INVALID_ARGS,
                          f"{path}:{n}: malformed {d['kind']} event ({e})") from None
        label = " ".join(f"{k}={v}" for k, v in d.items()
                         if k not in ("kind", "seq", "time", "kernel"))
        steps.append({"index": len(steps), "op": d["kind"], "args": {}, "ok": True,
                      "status": "OK", "error": "", "result": label, "events": [d],
                      "valid": True, "problem": "", "state": model.picture()})
    return {"title": f"replay of {path}", "kind": "trace", "steps": steps}
