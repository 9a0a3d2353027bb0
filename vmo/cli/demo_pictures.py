"""Pictures of the demo: the hierarchy after each step, drawn by Graphviz as SVG.

`vmo.debug.to_dot` writes the DOT text; drawing it needs the ``graphviz`` Python package (the
``graphviz`` extra of this project) and Graphviz's ``dot`` program. Both are optional: the demo
runs without them, and ``vmo demo --pictures DIR`` says what is missing before it starts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

INSTALL_HINT = ("pip install 'vmo[graphviz]' (or pip install graphviz) for the Python package, "
                "and the dot program from your system's graphviz package "
                "(apt-get install graphviz, dnf install graphviz, brew install graphviz)")


def missing_graphviz() -> str | None:
    """Why pictures cannot be drawn here, or None if they can."""
    try:
        import graphviz  # noqa: F401
    except ImportError:
        return f"the graphviz Python package is not installed; {INSTALL_HINT}"
    if shutil.which("dot") is None:
        return f"Graphviz's dot program is not on PATH; {INSTALL_HINT}"
    return None


def prepare(directory: str | os.PathLike[str]) -> Path:
    """The directory pictures go to, created if needed. Raises `OSError` if it cannot be."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK):
        raise PermissionError(f"{path} is not writable")
    return path


def draw(target: Any, directory: Path, index: int, name: str) -> Path:
    """Draw the hierarchy of ``target`` (a `vmo.Kernel` or `vmo.Vmo`) to
    ``directory/NN-name.svg``; returns the path."""
    import graphviz

    import vmo.debug

    dot = vmo.debug.to_dot(target)
    svg = graphviz.Source(dot).pipe(format="svg")
    path = directory / f"{index:02d}-{name}.svg"
    path.write_bytes(svg)
    return path
