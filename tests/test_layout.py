"""The layout shows the architecture (DESIGN.md's layers, STYLE.md's "Layout"): `vmo/` holds
only the layers, and no import cycle joins `vmo`'s modules.

What counts as an import (read with `ast`, never by importing): every ``import`` and
``from ... import`` anywhere in a module, function-local ones included (they are runtime
dependencies all the same), except those under ``if TYPE_CHECKING:``. ``from P import n``
depends on ``P`` (its ``__init__`` runs and binds ``n``) and on ``P.n`` when that is a module;
``import P.m`` depends on ``P.m``. The packages a dotted name passes through are not counted:
a package whose ``__init__`` re-exports its modules is the façade over them, and counting it
would make every re-export a cycle.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import vmo

PACKAGE = Path(vmo.__file__).resolve().parent

# DESIGN.md's layers, bottom up, and what each holds at the top level of vmo/.
LAYERS: dict[str, set[str]] = {
    "physical memory": {"pmm.py"},
    "page list": {"page_list.py"},
    "copy-on-write hierarchy": {"cow_pages.py"},
    # Handles, argument checking and status codes, and the types of the calls.
    "objects and syscalls": {"vm_object.py", "kernel.py", "_args.py", "errors.py", "types.py"},
    "page sources": {"pager"},
    "memory-management unit": {"mmu"},
    # Validators and dumps, the event trace, the command line, the explorer, fuzz harnesses.
    "tooling": {"debug.py", "trace.py", "cli", "explore", "testing"},
    "package": {"__init__.py", "__main__.py", "py.typed"},
}
# Earlier module paths kept so that user code keeps working: each is the very module object
# of its new place (the alias modules replace themselves in sys.modules).
ALIASES = {
    "vmo.mapping": "vmo.mmu.mapping",
    "vmo.pager.uffd": "vmo.mmu.uffd",
    "vmo.pager.fault_handler": "vmo.mmu.fault_handler",
    "vmo.pager.remote": "vmo.mmu.workload",
    "vmo.pager.swap.cli": "vmo.cli.swap",
    "vmo.trace_cli": "vmo.cli.trace",
    "vmo.explore.cli": "vmo.cli.explore",
}
TOP_LEVEL_ALIASES = {"mapping.py", "trace_cli.py"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of vmo/: dotted name -> (path, is a package)."""
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts.pop()
        mods[".".join(parts)] = (path, is_pkg)
    return mods


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """The module's runtime imports, at any depth (an explicit stack: no recursion)."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            # Of an ``if TYPE_CHECKING:`` only the ``else`` branch runs.
            visible = (child.orelse if isinstance(child, ast.If) and _is_type_checking(child)
                       else [child])
            for stmt in visible:
                if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    found.append(stmt)
                stack.append(stmt)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the vmo modules it imports at run time (see the module docstring)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        package = name if is_pkg else name.rpartition(".")[0]
        targets: list[str] = []
        for imp in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(imp, ast.Import):
                targets += [alias.name for alias in imp.names]
                continue
            if imp.level:
                base = package.split(".")[: len(package.split(".")) - imp.level + 1]
                origin = ".".join(base + ([imp.module] if imp.module else []))
            else:
                origin = imp.module or ""
            targets.append(origin)
            targets += [f"{origin}.{alias.name}" for alias in imp.names]
        graph[name] = {t for t in targets if t in mods and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_cycle_among_vmo_modules() -> None:
    graph = import_graph()
    found = cycles(graph)
    detail = "\n".join(
        ", ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in found)
    assert not found, f"import cycles among vmo's modules:\n{detail}"


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e", "f"]]


def test_type_checking_imports_do_not_count_and_local_ones_do() -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    import vmo.kernel\nelse:\n    import vmo.pmm\n"
                     "def f():\n    import vmo.debug\n")
    names = sorted(a.name for imp in _imports(tree) for a in imp.names)
    assert names == ["TYPE_CHECKING", "vmo.debug", "vmo.pmm"]


def test_top_level_holds_only_the_layers() -> None:
    allowed = set().union(*LAYERS.values()) | TOP_LEVEL_ALIASES
    present = {p.name for p in PACKAGE.iterdir()
               if p.name != "__pycache__" and (p.suffix in (".py", ".typed") or
                                               (p / "__init__.py").is_file())}
    strays = sorted(present - allowed)
    assert not strays, f"vmo/ holds modules outside DESIGN.md's layers: {strays}"
    assert {"pmm.py", "page_list.py", "cow_pages.py", "pager", "mmu", "cli"} <= present


def test_pager_holds_page_sources_only() -> None:
    # The MMU's old paths stay as aliases; everything else in vmo/pager/ is a page source.
    names = {p.stem for p in (PACKAGE / "pager").glob("*.py")}
    assert names == {"__init__", "source", "user_pager", "file_pager",
                     "uffd", "fault_handler", "remote"}
    assert (PACKAGE / "pager" / "swap").is_dir()


@pytest.mark.parametrize("old", sorted(ALIASES))
def test_old_module_paths_are_the_new_modules(old: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(ALIASES[old])


def test_old_public_import_paths_work() -> None:
    from vmo.mmu.workload import Workload
    from vmo.pager import FilePager
    from vmo.pager.fault_handler import set_deadlock_timeout, unavailable_reason
    from vmo.pager.remote import Workload as OldWorkload
    from vmo.pager.uffd import MemoryFault

    assert OldWorkload is Workload and callable(unavailable_reason)
    assert callable(set_deadlock_timeout) and issubclass(MemoryFault, BaseException)
    assert FilePager.__module__ == "vmo.pager.file_pager"
    assert vmo.Mapping.__module__ == "vmo.mmu.mapping"
