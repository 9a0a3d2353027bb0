"""docs/api.md keeps in step with the code: every exported name and every public member of the
main classes is documented there, and no document points outside the repository."""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import pytest

import vmo

ROOT = Path(vmo.__file__).resolve().parent.parent
API = ROOT / "docs" / "api.md"
TEXT = API.read_text() if API.is_file() else ""
# Every code block and every span in backquotes: a name is documented when it appears in one
# as a whole word.
FENCED = re.findall(r"^```[^\n]*\n(.*?)^```", TEXT, re.M | re.S)
SPANS = FENCED + re.findall(r"`([^`]+)`", re.sub(r"^```[^\n]*\n.*?^```", "", TEXT,
                                                 flags=re.M | re.S))

MODULES = ["vmo", "vmo.pager", "vmo.pager.swap", "vmo.testing", "vmo.debug",
           "vmo.mmu.workload"]


def _documented(name: str) -> bool:
    word = re.compile(rf"(?<![\w]){re.escape(name)}(?![\w])")
    return any(word.search(span) for span in SPANS)


def test_the_reference_is_in_the_repository() -> None:
    assert API.is_file(), "docs/api.md is the project's API reference"


@pytest.mark.parametrize("module", MODULES)
def test_every_exported_name_is_documented(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [n for n in mod.__all__ if not _documented(n)]
    assert not missing, f"{module} exports names docs/api.md does not mention: {missing}"


def _classes() -> list[type]:
    from vmo.mmu.workload import RemoteView, Workload
    from vmo.pager import FilePager, FilePagerMetrics
    from vmo.pager.swap import SwapMetrics, SwapSource, SwapStatus, SwapTransition
    from vmo.testing import Failure, RunResult

    return [vmo.Kernel, vmo.Vmo, vmo.Pager, vmo.Mapping, vmo.PinnedRange, vmo.MemoryStats,
            vmo.VmoInfo, vmo.LockState, vmo.FaultStats, vmo.PageRequest, vmo.DirtyRange,
            FilePager, FilePagerMetrics, SwapSource, SwapStatus, SwapMetrics, SwapTransition,
            Workload, RemoteView, RunResult, Failure]


def _enums() -> list[type]:
    from vmo.pager.swap import SwapState

    return [vmo.Status, vmo.VmoOptions, vmo.VmoOp, vmo.ChildOptions, vmo.VmoInfoFlags,
            vmo.Perms, vmo.PagerVmoOptions, vmo.PagerOp, vmo.PageRequestCommand,
            vmo.DirtyRangeOptions, SwapState]


@pytest.mark.parametrize("cls", _classes(), ids=lambda c: c.__name__)
def test_every_public_member_is_documented(cls: type) -> None:
    members = [n for n in vars(cls) if not n.startswith("_")]
    members += [a.name for a in getattr(cls, "__attrs_attrs__", ())]
    missing = sorted({n for n in members if not _documented(n)})
    assert not missing, f"{cls.__name__} members docs/api.md does not mention: {missing}"


@pytest.mark.parametrize("enum", _enums(), ids=lambda e: e.__name__)
def test_every_enum_value_is_documented(enum: type) -> None:
    missing = [m.name for m in enum if not _documented(m.name)]  # type: ignore[attr-defined]
    assert not missing, f"{enum.__name__} values docs/api.md does not mention: {missing}"


def test_the_contract_sections_are_there() -> None:
    for heading in ("## Errors", "## The kernel", "## `Vmo`", "## Pager (`zx_pager_*`)",
                    "## Mappings (`vmo.Mapping`)", "## Swap (`vmo.pager.swap`)",
                    "## Trace (`k.trace()`)", "## Names exported from `vmo`",
                    "## Inspection (`vmo.debug`)"):
        assert heading in TEXT, heading


def _documents() -> list[Path]:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            *sorted((ROOT / "bench").glob("*.md"))]
    return docs + sorted((ROOT / "vmo").rglob("*.py"))


@pytest.mark.parametrize("path", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_outside_the_repository(path: Path) -> None:
    text = path.read_text()
    for bad in ("../shared", "/work/shared", "shared/docs", "docs/API.md"):
        assert bad not in text, f"{path.relative_to(ROOT)} points at {bad}"
    # Relative links of the Markdown documents lead to files of the repository.
    if path.suffix == ".md":
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = (path.parent / target).resolve()
            assert resolved.is_relative_to(ROOT) and resolved.exists(), \
                f"{path.relative_to(ROOT)} links to {target}"


def _readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"one README example with {marker!r}"
    return found[0]


def test_readme_file_pager_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from vmo.mmu.fault_handler import unavailable_reason

    if unavailable_reason() is not None:
        pytest.skip(unavailable_reason() or "")
    code = _readme_block("FilePager(k, path)")
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    lines = capsys.readouterr().out.split()
    assert lines == ["8388608", "1", "2048", "0", "b'**'"], lines


def _svg_texts(svg: str) -> list[str]:
    import html

    texts = [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]
    return [t for t in texts if t not in ("L", "R")]  # the edges' labels


def _dot_lines(dot: str) -> list[str]:
    lines = []
    for label in re.findall(r'label="\{(.*?)\}"', dot):
        label = label.replace("\\(", "(").replace("\\)", ")")
        lines += [p for p in re.split(r"\\n|\\l|\|", label) if p]
    return lines


def test_tutorial_pictures_show_the_demo_as_it_is() -> None:
    """The tutorial's pictures are `vmo demo --pictures` output; when the demo (or the core's
    frame allocation) changes, regenerate them: ``vmo demo --pictures /tmp/p`` and copy the
    files named here into docs/pictures/."""
    from vmo import cli

    pictures = sorted((ROOT / "docs" / "pictures").glob("*.svg"))
    tutorial = (ROOT / "docs" / "tutorial.md").read_text()
    assert pictures, "the tutorial has pictures"
    names = [s.name for s in cli.DEMO_STEPS]
    for pic in pictures:
        assert f"(pictures/{pic.name})" in tutorial, f"{pic.name} is not used"
        index, name = pic.stem.split("-", 1)
        assert names.index(name) + 1 == int(index), pic.name
        demo = cli.Demo(cli.PlainOutput(open(os.devnull, "w")))  # noqa: SIM115
        try:
            for step in cli.DEMO_STEPS[:int(index)]:
                step.run(demo)
            want = _dot_lines(vmo.debug.to_dot(demo.k))
        finally:
            demo.close()
            demo.out.stream.close()  # type: ignore[attr-defined]
        # Node ids (``#N``) count nodes of every kernel of the process: not compared.
        got = [re.sub(r"^#\d+ ", "", t) for t in _svg_texts(pic.read_text())]
        want = [re.sub(r"^#\d+ ", "", t) for t in want]
        assert want and got == want, f"{pic.name} is stale: {got} != {want}"
