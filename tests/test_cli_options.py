"""``vmo --version``, ``vmo demo STEP``, ``vmo demo --pictures DIR`` and the labels of
`vmo.debug.to_dot` that the pictures show."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import vmo
from vmo import PAGE_SIZE, ChildOptions, Kernel, cli
from vmo.cli import demo_pictures


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out
    assert re.match(r"vmo \S+ \(Python 3\.\d+", out), out
    assert vmo.__version__ in out
    assert vmo.__version__ != "0+unknown", "the test environment installs the package"


def test_demo_starts_at_a_named_step(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--plain", "pager"]) == 0
    out = capsys.readouterr().out
    names = [s.name for s in cli.DEMO_STEPS]
    index = names.index("pager") + 1
    assert f"Starting at step {index}, `pager`" in out
    assert f"Step {index}/{len(names)}:" in out
    # The earlier steps ran (the state is theirs) but showed nothing.
    assert "Step 1/" not in out and "snap.name = \"snapshot\"" not in out
    assert ">>> from vmo import PagerOp" in out
    assert "Tour done" in out
    shown = len(names) - index + 1
    available = sum(1 for s in cli.DEMO_STEPS[index - 1:] if s.available() is None)
    assert out.count("[ok] vmo.debug.validate(k)") == available
    assert f"{shown} steps" in out


@pytest.mark.parametrize("name", [s.name for s in cli.DEMO_STEPS])
def test_every_step_can_start_the_tour(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--plain", name]) == 0
    assert "Tour done" in capsys.readouterr().out


def test_demo_unknown_step(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "no-such-step"]) == 2
    err = capsys.readouterr().err
    assert "no step named 'no-such-step'" in err and "pager" in err
    with pytest.raises(ValueError, match="no demo step named"):
        cli.run_demo(cli.PlainOutput(), start_at="no-such-step")


def test_demo_pictures_without_graphviz(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name, *a, **k: None)
    assert cli.main(["demo", "--pictures", str(tmp_path / "pics")]) == 2
    err = capsys.readouterr().err
    assert "cannot draw pictures" in err
    assert "apt-get install graphviz" in err and "pip install" in err
    assert not (tmp_path / "pics").exists(), "nothing is written when pictures cannot be drawn"


def test_demo_pictures_unwritable_directory(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    if demo_pictures.missing_graphviz():
        pytest.skip(demo_pictures.missing_graphviz() or "")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert cli.main(["demo", "--pictures", str(blocker / "pics")]) == 2
    assert "cannot write to" in capsys.readouterr().err


@pytest.mark.skipif(demo_pictures.missing_graphviz() is not None,
                    reason=demo_pictures.missing_graphviz() or "")
def test_demo_pictures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pics = tmp_path / "pics"
    assert cli.main(["demo", "--plain", "--pictures", str(pics), "cow"]) == 0
    out = capsys.readouterr().out
    names = [s.name for s in cli.DEMO_STEPS]
    start = names.index("cow")
    shown = [(i + 1, s) for i, s in enumerate(cli.DEMO_STEPS) if i >= start
             and s.available() is None]
    files = sorted(p.name for p in pics.iterdir())
    assert files == [f"{i:02d}-{s.name}.svg" for i, s in shown]
    cow = (pics / f"{start + 1:02d}-cow.svg").read_text()
    assert cow.startswith("<?xml") and "<svg" in cow
    assert "hidden" in cow and "parent window 0x0..0x4000" in cow
    assert f"{len(files)} pictures in" in out


def test_to_dot_labels_are_readable() -> None:
    with Kernel(memory=1 << 20) as k:
        v = k.vmo_create(4 * PAGE_SIZE)
        v.write(b"x" * 3 * PAGE_SIZE)
        snap = v.create_child(ChildOptions.SNAPSHOT, 0, 4 * PAGE_SIZE)
        part = v.create_child(ChildOptions.SNAPSHOT, PAGE_SIZE, 2 * PAGE_SIZE)
        dot = vmo.debug.to_dot(k)
        assert "parent window 0x0..0x4000" in dot
        assert "parent window 0x0..0x2000, parent offset 0x1000" in dot
        assert "..." not in dot.replace("\\l...", "") and "[0x" not in dot
        snap.close()
        part.close()
