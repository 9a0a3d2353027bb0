"""Text that leaves this machine without its paths: repro files written by ``vmo fuzz``.

A repro file is committed next to the tests and replayed on other machines, so it must not name
where things were on the machine that wrote it (a checkout under a home directory, a temporary
directory, a virtual environment). `scrub_paths` rewrites the paths a failure message or a
hypothesis note may carry into placeholders that still say what they were.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from pathlib import Path

#: Absolute paths of the operating system itself (not of this machine's layout): kept.
_SYSTEM_ROOTS = ("/dev/", "/proc/", "/sys/")

# An absolute path: a slash at the start of a word (after a space, quote, bracket, ``=`` or
# the start of the text) followed by path characters, with at least one more slash.
_ABSOLUTE = re.compile(r"(?<![\w./~<>-])/+[\w.+@%-]+(?:/[\w.+@%-]*)+")


def _roots() -> list[tuple[str, str]]:
    """(prefix, placeholder) pairs, longest prefix first, so the most specific one wins."""
    import vmo

    pairs: dict[str, str] = {}

    def add(path: str | None, placeholder: str) -> None:
        if path:
            real = os.path.realpath(path)
            for p in {path, real}:
                if p and p != "/" and p not in pairs:
                    pairs[p.rstrip("/")] = placeholder

    add(str(Path(vmo.__file__).resolve().parent.parent), "<vmo>")  # the checkout or site-dir
    for key in ("purelib", "platlib", "stdlib", "platstdlib"):
        add(sysconfig.get_paths().get(key), f"<python {key}>")
    add(sys.prefix, "<python prefix>")
    add(sys.base_prefix, "<python base prefix>")
    add(tempfile.gettempdir(), "<tmp>")
    with contextlib.suppress(OSError):  # the working directory was removed
        add(os.getcwd(), "<cwd>")
    add(os.path.expanduser("~"), "~")
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def _literal(text: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: text


def scrub_paths(text: str) -> str:
    """``text`` with every absolute path of this machine replaced: the vmo checkout (or
    install), Python's directories, the temporary directory, the working directory and the
    home directory by placeholders (``<vmo>/vmo/cow_pages.py``, ``<tmp>/...``, ``~/...``);
    any other absolute path by ``<path>/`` and its last component. Paths of the operating
    system's own interfaces (``/dev``, ``/proc``, ``/sys``) are kept."""
    for prefix, placeholder in _roots():
        # A function as the replacement: the placeholder is literal text, not a template.
        text = re.compile(re.escape(prefix) + r"(?![\w.+@%-])").sub(
            _literal(placeholder), text)

    def other(m: re.Match[str]) -> str:
        path = "/" + m.group(0).lstrip("/")
        if path.startswith(_SYSTEM_ROOTS):
            return path
        return "<path>/" + path.rstrip("/").rsplit("/", 1)[-1]

    return _ABSOLUTE.sub(other, text)


__all__ = ["scrub_paths"]
