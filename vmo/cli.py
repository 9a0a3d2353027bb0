"""The ``vmo`` command line.

Subcommands:

- ``vmo demo``: a narrated, step-by-step tour of the core (snapshots and hidden nodes,
  copy-on-write and split bits, merging, at-least-on-write clones, slices, discardable VMOs)
  on a small in-process kernel, for students and teachers.
- ``vmo fuzz``: a fuzz campaign of the oracle state machine with a live display, or
  (``--mutants``) the mutation check; the work is in `vmo.testing.console`.
- ``vmo swap``: the swap experiment (a VMO moved out and faulted back by a workload); the work
  is in `vmo.pager.swap.cli`.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its parser and sets
``func`` to a handler ``(args) -> int``; `_SUBCOMMANDS` lists them in ``--help`` order. To add
``vmo fuzz`` or ``vmo bench``, write the pair and append the adder to `_SUBCOMMANDS` (see the
comment there). Handlers import what they need themselves, so that ``vmo demo`` does not pay
for the imports of a fuzzer.

The demo is a list of `DemoStep`s (`DEMO_STEPS`). A step is a function of a `Demo`: it narrates
(`Demo.say`), runs Python snippets shown as an interactive-session transcript (`Demo.run`: the
code shown is exactly the code that runs), shows the hierarchy (`Demo.show_tree`, the text of
`vmo.debug.dump`) and checks that the core did what the narration claims (`Demo.expect`). After
every step the runner prints the committed bytes of every live VMO and ``k.memory_stats()``,
and runs `vmo.debug.validate`. A step that needs something the machine may lack (a pager
thread, userfaultfd for mappings) gives an ``available`` callable that returns why not.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TextIO

import attrs

# ---------------------------------------------------------------------------- output


class Output(Protocol):
    """Where the demo writes: styled with rich (`RichOutput`) or plain text (`PlainOutput`)."""

    def banner(self, title: str, text: str) -> None: ...
    def step(self, index: int, total: int, title: str) -> None: ...
    def say(self, text: str) -> None: ...
    def transcript(self, text: str) -> None: ...
    def tree(self, title: str, text: str) -> None: ...
    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]],
              caption: str = "") -> None: ...
    def ok(self, text: str) -> None: ...
    def problem(self, title: str, text: str) -> None: ...
    def ask(self, prompt: str) -> str: ...


def _plain_markup(text: str) -> str:
    """The narration is written in a small subset of Markdown; plain text keeps the
    backquotes (they mark code) and drops the emphasis."""
    return text.replace("**", "")


class PlainOutput:
    """Plain text, ASCII only, no escape sequences: for pipes, logs and ``--plain``."""

    WIDTH = 88

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    def _print(self, text: str = "") -> None:
        self.stream.write(text + "\n")

    def _wrap(self, text: str, indent: str = "") -> str:
        paras = [p.strip() for p in textwrap.dedent(text).strip().split("\n\n")]
        return "\n\n".join(
            textwrap.fill(" ".join(p.split()), self.WIDTH, initial_indent=indent,
                          subsequent_indent=indent)
            for p in paras if p)

    def banner(self, title: str, text: str) -> None:
        self._print("#" * self.WIDTH)
        self._print(f"# {title}")
        self._print("#" * self.WIDTH)
        self._print(self._wrap(_plain_markup(text)))

    def step(self, index: int, total: int, title: str) -> None:
        self._print()
        self._print("=" * self.WIDTH)
        self._print(f"Step {index}/{total}: {title}")
        self._print("=" * self.WIDTH)

    def say(self, text: str) -> None:
        self._print()
        self._print(self._wrap(_plain_markup(text)))

    def transcript(self, text: str) -> None:
        self._print()
        for line in text.splitlines():
            self._print(f"    {line}".rstrip())

    def tree(self, title: str, text: str) -> None:
        self._print()
        self._print(f"  {title}:")
        for line in text.splitlines():
            self._print(f"    {line}")

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]],
              caption: str = "") -> None:
        self._print()
        self._print(f"  {title}:")
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
        fmt = "    " + "  ".join(f"{{:<{w}}}" for w in widths)
        self._print(fmt.format(*columns).rstrip())
        self._print(fmt.format(*("-" * w for w in widths)).rstrip())
        for r in rows:
            self._print(fmt.format(*r).rstrip())
        if caption:
            self._print(self._wrap(caption, indent="    "))

    def ok(self, text: str) -> None:
        self._print()
        self._print(textwrap.fill(text, self.WIDTH, initial_indent="  [ok] ",
                                  subsequent_indent="       "))

    def problem(self, title: str, text: str) -> None:
        self._print()
        self._print(f"!! {title}")
        for line in text.splitlines():
            self._print(f"!! {line}")

    def ask(self, prompt: str) -> str:
        self.stream.write(prompt)
        self.stream.flush()
        return input()


# Styles for the text of `vmo.debug.dump`: hidden nodes, split bits and names stand out.
_DUMP_STYLES = [
    (r"#\d+", "bold"),
    (r"\bhidden\b", "bold yellow"),
    (r"\bslice\b", "bold blue"),
    (r"\((?:L\.|\.R|LR)\)", "bold magenta"),
    (r"'[^']*'", "cyan"),
    (r"\bzero marker\b", "dim"),
    (r"\[discardable [^\]]*\]", "red"),
]


def _rich_tree(text: str) -> Any:
    """The text of `vmo.debug.dump` as a `rich.tree.Tree` (guide lines show the hierarchy and
    long lines wrap under their node), or None if the text is not the indented shape dump
    prints: node lines ``#<id> ...`` indented two spaces per level, each followed by its page
    lines indented four more."""
    from rich.text import Text
    from rich.tree import Tree

    def styled(line: str) -> Text:
        t = Text(line)
        for pattern, style in _DUMP_STYLES:
            t.highlight_regex(pattern, style)
        return t

    top = Tree("", hide_root=True, guide_style="green")
    # Per node: its tree entry, its depth, and its label lines (node line, then page lines).
    stack: list[tuple[Any, int]] = [(top, -1)]
    labels: list[tuple[Any, list[str]]] = []
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        if stripped.startswith("#"):
            if indent % 2:
                return None
            depth = indent // 2
            while stack[-1][1] >= depth:
                stack.pop()
            if stack[-1][1] != depth - 1:
                return None
            node = stack[-1][0].add("")
            stack.append((node, depth))
            labels.append((node, [stripped]))
        elif labels:
            labels[-1][1].append("  " + stripped)
        else:
            return None
    for node, lines in labels:
        node.label = styled("\n".join(lines))
    return top


class RichOutput:
    """Panels, rules, syntax-highlighted transcripts and tables from `rich`."""

    def __init__(self, *, force_terminal: bool | None = None) -> None:
        from rich.console import Console

        # No ``file``: rich writes to whatever sys.stdout is at the time (pytest's capture too).
        self.console = Console(force_terminal=force_terminal, highlight=False)

    def banner(self, title: str, text: str) -> None:
        from rich.markdown import Markdown
        from rich.panel import Panel

        self.console.print(Panel(Markdown(text), title=f"[bold]{title}", border_style="cyan"))

    def step(self, index: int, total: int, title: str) -> None:
        self.console.print()
        self.console.rule(f"[bold cyan]Step {index}/{total}[/] [bold]{title}", style="cyan")

    def say(self, text: str) -> None:
        from rich.markdown import Markdown

        self.console.print(Markdown(textwrap.dedent(text).strip()))

    def transcript(self, text: str) -> None:
        from rich.panel import Panel
        from rich.syntax import Syntax

        syntax = Syntax(text, "pycon", theme="ansi_dark", background_color="default",
                        word_wrap=True)
        self.console.print(Panel(syntax, title="python", title_align="left",
                                 border_style="blue"))

    def tree(self, title: str, text: str) -> None:
        from rich.panel import Panel
        from rich.text import Text

        body: Any = _rich_tree(text)
        if body is None:  # not the shape we know: show the text as it is
            body = Text(text)
            for pattern, style in _DUMP_STYLES:
                body.highlight_regex(pattern, style)
        self.console.print(Panel(body, title=title, title_align="left", border_style="green"))

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]],
              caption: str = "") -> None:
        from rich.table import Table

        t = Table(title=title, title_justify="left", caption=caption or None,
                  caption_justify="left")
        for i, c in enumerate(columns):
            t.add_column(c, justify="right" if i >= 2 else "left", no_wrap=i < 2)
        for r in rows:
            t.add_row(*r)
        self.console.print(t)

    def ok(self, text: str) -> None:
        self.console.print(f"[bold green]\u2713[/] {text}")

    def problem(self, title: str, text: str) -> None:
        from rich.panel import Panel
        from rich.text import Text

        self.console.print(Panel(Text(text), title=f"[bold red]{title}", border_style="red"))

    def ask(self, prompt: str) -> str:
        return self.console.input(f"[dim]{prompt}[/]")


def make_output(plain: bool, force_rich: bool) -> Output:
    """``--plain`` wins; otherwise rich, unless stdout is not a terminal (a pipe, a file, a
    test's capture), where plain text is what a reader of the log wants. ``--rich`` forces
    styled output anyway (for ``| less -R``)."""
    if plain:
        return PlainOutput()
    if force_rich:
        return RichOutput(force_terminal=True)
    if not _isatty(sys.stdout):
        return PlainOutput()
    try:
        return RichOutput()
    except ImportError:  # rich is a declared dependency, but a broken install should still run
        return PlainOutput()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------------------- the demo


class DemoError(Exception):
    """The core did not do what the narration says it does (a bug in the core, or in a step)."""


class DemoQuit(Exception):  # noqa: N818 - control flow: the user typed q at a pause
    pass


def _fmt_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 2**20:
        return f"{n / 1024:g} KiB"
    return f"{n / 2**20:g} MiB"


class Demo:
    """What a step works with: the output, the namespace its snippets run in, and checks.

    The namespace holds the kernel (``k``) and every VMO a snippet created, under the names the
    snippets gave them; the per-step statistics list the open VMOs found there.
    """

    def __init__(self, out: Output) -> None:
        self.out = out
        self.ns: dict[str, Any] = {"__name__": "__vmo_demo__"}
        self.validations = 0

    # -- running code ------------------------------------------------------------------

    def run(self, code: str, *, errors: bool = False) -> Any:
        """Run ``code`` statement by statement as an interactive session would, and show the
        session: ``>>>`` lines, then the repr of each expression statement's value.

        A `vmo.ZxError` is shown as the session would show it, and is allowed only with
        ``errors=True``. Returns the value of the last expression statement (or None).
        """
        from vmo import ZxError

        code = textwrap.dedent(code).strip("\n")
        tree = ast.parse(code)
        lines: list[str] = []
        last: Any = None
        for stmt in tree.body:
            src = ast.get_source_segment(code, stmt) or ""
            src_lines = src.splitlines()
            lines.append(">>> " + src_lines[0])
            lines.extend("... " + s for s in src_lines[1:])
            if isinstance(stmt, ast.For | ast.While | ast.If | ast.With | ast.Try):
                lines.append("...")
            try:
                if isinstance(stmt, ast.Expr):
                    last = eval(compile(ast.Expression(stmt.value), "<demo>", "eval"), self.ns)
                    if last is not None:
                        lines.append(repr(last))
                else:
                    exec(compile(ast.Module([stmt], []), "<demo>", "exec"), self.ns)
                    last = None
            except ZxError as e:
                lines.append("Traceback (most recent call last):")
                lines.append("  ...")
                lines.append(f"vmo.ZxError: {e}")
                last = e
                if not errors:
                    self.out.transcript("\n".join(lines))
                    raise DemoError(f"unexpected error from {src_lines[0]!r}: {e}") from e
        self.out.transcript("\n".join(lines))
        return last

    def __getitem__(self, name: str) -> Any:
        return self.ns[name]

    @property
    def k(self) -> Any:
        return self.ns["k"]

    # -- showing state -----------------------------------------------------------------

    def dump(self, target: str = "k") -> str:
        import vmo.debug

        return vmo.debug.dump(self.ns[target])

    def show_tree(self, target: str = "k") -> str:
        """Show ``vmo.debug.dump(<target>)``; returns its text for `expect` checks."""
        text = self.dump(target)
        self.out.tree(f"vmo.debug.dump({target})", text or "(no VMOs)")
        return text

    def say(self, text: str) -> None:
        self.out.say(text)

    def expect(self, condition: bool, claim: str) -> None:
        """The narration relies on ``claim``; stop the tour if the core disagrees."""
        if not condition:
            raise DemoError(f"expected: {claim}")

    def vmo_pages(self) -> int:
        return int(self.k.memory_stats().vmo_pages)

    def open_vmos(self) -> list[tuple[str, Any]]:
        from vmo import Vmo

        return [(name, obj) for name, obj in self.ns.items()
                if isinstance(obj, Vmo) and not obj.closed]

    def show_stats(self) -> None:
        """Committed bytes of every open VMO (``get_info``) and ``k.memory_stats()``."""
        if "k" not in self.ns or self.k.closed:
            return
        from vmo import PAGE_SIZE

        rows = []
        total = 0
        for name, v in self.open_vmos():
            info = v.get_info()
            total += info.committed_bytes
            rows.append([name, repr(info.name), str(info.koid), str(info.parent_koid or "-"),
                         _fmt_bytes(info.size_bytes), str(info.committed_bytes),
                         str(info.populated_bytes)])
        st = self.k.memory_stats()
        held = st.vmo_pages * PAGE_SIZE
        caption = (f"k.memory_stats(): vmo_pages={st.vmo_pages} ({_fmt_bytes(held)}), "
                   f"free_pages={st.free_pages} of {st.total_pages}, discardable "
                   f"locked/unlocked pages={st.discardable_locked_pages}/"
                   f"{st.discardable_unlocked_pages}. ")
        if len(self.open_vmos()) == len(self.k.live_vmos()):
            lost = st.unreachable_pages * PAGE_SIZE
            self.expect(total + lost == held,
                        f"committed_bytes of all VMOs ({total}) plus unreachable pages "
                        f"({lost}) sum to the frames VMOs hold ({held})")
            caption += (f"Sum of committed_bytes = {total}"
                        + (f" + unreachable {lost}" if lost else "")
                        + f" = vmo_pages x {PAGE_SIZE}: every frame is charged to exactly one "
                        "VMO" + (", or kept unreachable until a merge." if lost else "."))
        if rows:
            self.out.table("get_info() of the open VMOs (committed_bytes, populated_bytes)",
                           ["variable", "name", "koid", "parent", "size", "committed",
                            "populated"], rows, caption)
        else:
            self.out.say(caption)

    def validate(self) -> None:
        if "k" not in self.ns or self.k.closed:
            return
        import vmo.debug

        vmo.debug.validate(self.k)
        self.validations += 1
        self.out.ok("vmo.debug.validate(k): every invariant holds (split bits, backlinks, "
                    "parent limits, attribution, frame accounting, discardable lists).")

    def close(self) -> None:
        k = self.ns.get("k")
        if k is not None:
            k.close()


@attrs.define(frozen=True)
class DemoStep:
    """One step of the tour. ``available`` returns why the step cannot run here, or None."""

    name: str
    title: str
    run: Callable[[Demo], None]
    available: Callable[[], str | None] = lambda: None


# -- the steps ---------------------------------------------------------------------------


def step_create(demo: Demo) -> None:
    demo.say("""
        A **VMO** (virtual memory object) is an array of pages that processes read, write and
        map. Creating one allocates no memory: a page is *committed* (given a frame of
        physical memory) the first time it is written. Our kernel's physical memory is one
        memfd of 16 MiB, the *arena*, cut into page frames.
        """)
    demo.run("""
        from vmo import Kernel, PAGE_SIZE, ChildOptions, VmoOptions, VmoOp
        k = Kernel(memory=16 * 2**20)
        v = k.vmo_create(4 * PAGE_SIZE)
        v.name = "original"
        for i in range(3):
            v.write(b"page %d" % i, i * PAGE_SIZE)
        v.read(6, PAGE_SIZE)
        v.read(6, 3 * PAGE_SIZE)
        v.get_info().committed_bytes
        """)
    demo.show_tree("v")
    demo.expect(demo["v"].get_info().committed_bytes == 3 * demo["PAGE_SIZE"], "3 pages committed")
    demo.say("""
        The VMO is 4 pages long and we wrote into 3 of them, so 3 frames of the arena hold its
        content (`committed_bytes` = 3 x 4096). Page 3 was never written: reading it returns
        zeros from the shared zero page and commits nothing. The dump lists the node's page
        list: page offset, the frame that holds it, and two split bits `(..)` that only matter
        in hidden nodes (next steps).
        """)


def step_snapshot(demo: Demo) -> None:
    demo.say("""
        A **snapshot** clone (`ChildOptions.SNAPSHOT`) sees the parent's content as it was at
        the moment of the clone, and never any later write of either side. Zircon makes one
        without copying a single page.
        """)
    before = demo.vmo_pages()
    demo.run("""
        snap = v.create_child(ChildOptions.SNAPSHOT, 0, v.get_size())
        snap.name = "snapshot"
        snap.read(6, PAGE_SIZE)
        """)
    text = demo.show_tree("v")
    demo.expect("hidden" in text, "a hidden node appears")
    demo.expect(demo.vmo_pages() == before, "a snapshot allocates no page")
    demo.expect(demo["snap"].get_info().committed_bytes == 0, "the snapshot is attributed nothing")
    demo.say(f"""
        The node that held the pages became a **hidden** parent (the top line of the dump).
        Hidden nodes are frozen: nobody writes to them again. It has two children: the
        original, now the *left* child (it keeps the VMO's identity, koid
        {demo['v'].koid}), and the snapshot, the *right* child. Both are empty ("pages 0"):
        their reads fall through to the hidden parent. `vmo_pages` is still {before}: nothing
        was copied. The hidden node carries the original's attribution id (as Zircon's
        `page_attribution_user_id`): the shared pages are charged to the original, so the
        snapshot's `committed_bytes` is 0 for now.
        """)


def step_cow(demo: Demo) -> None:
    demo.say("""
        Now write on both sides. The first write to a shared page **forks** it: the writer gets
        its own copy of the frame (copy-on-write) and the hidden parent's page records which
        side forked it in its **split bits**: L for the left child, R for the right.
        """)
    before = demo.vmo_pages()
    demo.run("""
        v.write(b"PAGE 0", 0)
        snap.write(b"snap 1", PAGE_SIZE)
        v.read(6, 0), snap.read(6, 0)
        v.read(6, PAGE_SIZE), snap.read(6, PAGE_SIZE)
        """)
    text = demo.show_tree("v")
    demo.expect("(L.)" in text and "(.R)" in text, "split bits L and R appear in the hidden node")
    demo.expect(demo.vmo_pages() == before + 2, "two writes fork two pages")
    page = demo["PAGE_SIZE"]
    demo.expect(demo["v"].get_info().committed_bytes == 3 * page
                and demo["snap"].get_info().committed_bytes == 2 * page,
                "the shared page is attributed to the left child only")
    demo.say(f"""
        In the hidden node, `(L.)` on page 0x0 says the original forked it: only the right side
        (the snapshot) still sees that frame. `(.R)` on page 0x1000 says the snapshot forked
        it. Page 0x2000 was written by nobody and is still shared `(..)`. A page split both
        ways would be visible to nobody, so the kernel frees it instead of setting both bits.
        Each side's reads show its own writes only. Two forks cost two frames: `vmo_pages` went
        from {before} to {demo.vmo_pages()}. In `get_info`, the still-shared page 0x2000
        counts for the original only (the hidden node carries its id); a split page counts
        for the one side that still sees it. So the original is charged 3 pages (its fork of
        0x0, and 0x1000 and 0x2000 of the hidden node) and the snapshot 2 (its fork of
        0x1000, and the hidden node's old 0x0).
        """)


def step_merge(demo: Demo) -> None:
    demo.say("""
        Close the snapshot. A hidden node with one child has no reason to exist: Zircon
        **merges** it into the remaining child (`MergeContentWithChild`).
        """)
    before = demo.vmo_pages()
    demo.run("""
        snap.close()
        v.read(6, 0), v.read(6, PAGE_SIZE), v.read(6, 2 * PAGE_SIZE)
        """)
    text = demo.show_tree("v")
    demo.expect("hidden" not in text, "the hidden node is gone")
    demo.expect(demo.vmo_pages() == 3, "3 frames remain")
    demo.say(f"""
        The hidden node disappeared and the original is a single node again. Pages it could
        still see (0x1000, 0x2000) **migrated** into it: moved, not copied, so their frame
        numbers did not change. The old page 0x0, marked `(L.)`, had been superseded by the
        original's own fork and was visible only to the snapshot: it was freed, together with
        the snapshot's private page. `vmo_pages` went from {before} to {demo.vmo_pages()}.
        """)


def step_at_least_on_write(demo: Demo) -> None:
    demo.say("""
        `SNAPSHOT_AT_LEAST_ON_WRITE` promises less than a snapshot: the child *may* see the
        parent's later writes to pages it has not written itself. That freedom is what lets a
        pager-backed VMO (a file's cache) be cloned cheaply. On an **anonymous** VMO like ours
        Zircon upgrades it to a full snapshot, and so does this model.
        """)
    demo.run("""
        alow = v.create_child(ChildOptions.SNAPSHOT_AT_LEAST_ON_WRITE, 0, v.get_size())
        alow.name = "at-least-on-write"
        v.write(b"later!", 2 * PAGE_SIZE)
        v.read(6, 2 * PAGE_SIZE), alow.read(6, 2 * PAGE_SIZE)
        alow.get_info().flags
        """)
    text = demo.show_tree("v")
    demo.expect("hidden" in text, "the at-least-on-write clone of an anonymous VMO is a snapshot")
    demo.expect(demo["alow"].read(6, 2 * demo["PAGE_SIZE"]) == b"page 2",
             "the clone does not see the parent's later write")
    demo.say("""
        The hidden parent is back, exactly as for `SNAPSHOT`, and the clone still reads
        "page 2" where the original now has "later!": snapshot semantics. Its flags say
        `IS_COW_CLONE`. Closing it merges the tree once more.
        """)
    demo.run("alow.close()")


def step_slice(demo: Demo) -> None:
    demo.say("""
        A **slice** (`ChildOptions.SLICE`) is a window onto part of its parent, not a copy: it
        owns no pages and shares the parent's both ways.
        """)
    demo.run("""
        sl = v.create_child(ChildOptions.SLICE, PAGE_SIZE, 2 * PAGE_SIZE)
        sl.name = "slice"
        sl.write(b"via slice", 0)
        v.read(9, PAGE_SIZE)
        v.write(b"via parent", 2 * PAGE_SIZE)
        sl.read(10, PAGE_SIZE)
        sl.get_info().committed_bytes
        """)
    text = demo.show_tree("v")
    demo.expect("slice" in text, "the slice appears below the original")
    demo.expect(demo["v"].read(9, demo["PAGE_SIZE"]) == b"via slice", "a slice write shows in the parent")
    demo.say("""
        The slice covers pages 1 and 2 of the original, so its offset 0 is the original's
        0x1000: the write through the slice is read back through the parent, and the other way
        round. It holds no pages ("pages 0") and its `committed_bytes` is 0: the frames are
        the parent's, and attributed to it. A slice must lie inside its parent and cannot be
        resized:
        """)
    demo.run("""
        v.create_child(ChildOptions.SLICE, 3 * PAGE_SIZE, 2 * PAGE_SIZE)
        sl.close()
        """, errors=True)


def step_discardable(demo: Demo) -> None:
    demo.say("""
        A **discardable** VMO holds data its owner can regenerate (a decoded image, a cache).
        While it is locked the kernel must keep it; once unlocked, memory pressure may discard
        all of it at once. `LOCK` and `UNLOCK` always cover the whole VMO.
        """)
    demo.run("""
        cache = k.vmo_create(4 * PAGE_SIZE, VmoOptions.DISCARDABLE)
        cache.name = "cache"
        cache.op_range(VmoOp.LOCK, 0, cache.get_size())
        cache.write(b"cached" * 2048)
        cache.op_range(VmoOp.UNLOCK, 0, cache.get_size())
        k.memory_stats().discardable_unlocked_pages
        """)
    demo.show_tree("cache")
    demo.expect(demo.k.memory_stats().discardable_unlocked_pages == 3,
             "3 pages of an unlocked discardable VMO")
    demo.say("""
        The first `LOCK` found nothing discarded (`discarded_size=0`). We wrote 12 KiB (3
        pages) and unlocked it: its pages are now reclaim candidates, counted in
        `discardable_unlocked_pages`.
        """)


def step_reclaim(demo: Demo) -> None:
    demo.say("""
        Memory runs short: the kernel **reclaims** discardable VMOs, whole VMOs at a time,
        oldest unlock first.
        """)
    demo.run("""
        k.reclaim_discardable(target_pages=3)
        cache.read(6)
        cache.op_range(VmoOp.LOCK, 0, cache.get_size())
        cache.read(6)
        cache.op_range(VmoOp.UNLOCK, 0, cache.get_size())
        """, errors=True)
    demo.show_tree("cache")
    demo.expect(demo["cache"].get_info().committed_bytes == 0, "a discarded VMO holds no page")
    demo.say("""
        Reclaim freed all 3 pages. Until the owner locks it again, reading a discarded VMO
        fails with `ERR_NOT_FOUND`. The next `LOCK` succeeds and reports `discarded_size` =
        16384, the whole VMO: the owner learns that it must regenerate the content, which now
        reads as zeros.
        """)


def step_pager(demo: Demo) -> None:
    demo.say("""
        A **pager-backed** VMO gets its content from a *user pager* (a file system, a network
        cache) instead of zeros. When the VMO needs a page it does not have, the kernel sends
        the pager a **page request**; the pager fills an auxiliary VMO and moves its pages in
        with `supply_pages`. This pager keeps its "disk" in a dict, logs every request, and
        answers on the thread that needs the page (handler mode).
        """)
    demo.run("""
        from vmo import PagerOp, PagerVmoOptions, PageRequestCommand
        disk = {i: b"block %d " % i * 512 for i in range(4)}
        log = []
        def handler(request):
            first, count = request.offset // PAGE_SIZE, request.length // PAGE_SIZE
            log.append((request.command.name, first, count))
            if request.command == PageRequestCommand.READ:
                aux = k.vmo_create(request.length)
                aux.write(b"".join(disk[first + i] for i in range(count)))
                pager.supply_pages(request.vmo, request.offset, request.length, aux, 0)
                aux.close()
            elif request.command == PageRequestCommand.DIRTY:
                pager.op_range(PagerOp.DIRTY, request.vmo, request.offset, request.length)
        pager = k.pager_create(handler)
        pv = pager.create_vmo(4 * PAGE_SIZE, PagerVmoOptions.TRAP_DIRTY)
        pv.name = "pager-backed"
        pv.read(7, 2 * PAGE_SIZE)
        log
        """)
    text = demo.show_tree("pv")
    demo.expect(demo["log"] == [("READ", 2, 1)], "one READ request for page 2")
    demo.expect("clean" in text, "a supplied page starts Clean")
    demo.say("""
        Reading page 2 sent one READ request; the handler supplied the block and the read
        retried and found it. The dump shows the page **Clean**: the same as the pager's copy.
        `supply_zero` is the *supply-zero offset*: pages before it come from the pager, pages
        after it (after the VMO grows) are zeros the kernel makes by itself. The aux VMO gave
        its frame away: supplying moves pages, it does not copy them.

        Writing is tracked. This VMO was created with `TRAP_DIRTY`, so the first write to a
        Clean page asks the pager first (a DIRTY request: a file system could refuse it when
        the disk is full).
        """)
    demo.run("""
        pv.write(b"BLOCK 2", 2 * PAGE_SIZE)
        log[-1]
        pager.query_dirty_ranges(pv, 0, pv.get_size())
        """)
    text = demo.show_tree("pv")
    demo.expect(demo["log"][-1] == ("DIRTY", 2, 1), "a DIRTY request before the write")
    demo.expect("dirty" in text, "the written page is Dirty")
    demo.say("""
        The page is **Dirty** now, and `query_dirty_ranges` reports it: the pager's copy is
        stale. **Writeback** makes it Clean again: `WRITEBACK_BEGIN` marks the range
        AwaitingClean, the pager copies the bytes out, and `WRITEBACK_END` marks it Clean (a
        write in between would leave it Dirty, so no store is ever lost).
        """)
    demo.run("""
        for r in pager.query_dirty_ranges(pv, 0, pv.get_size()):
            pager.op_range(PagerOp.WRITEBACK_BEGIN, pv, r.offset, r.length)
            for page in range(r.offset // PAGE_SIZE, (r.offset + r.length) // PAGE_SIZE):
                disk[page] = pv.read(PAGE_SIZE, page * PAGE_SIZE)
            pager.op_range(PagerOp.WRITEBACK_END, pv, r.offset, r.length)
        pager.query_dirty_ranges(pv, 0, pv.get_size())
        disk[2][:7]
        """)
    demo.expect(demo["disk"][2][:7] == b"BLOCK 2", "the write reached the pager's disk")
    demo.say("""
        Clean pages are cheap to drop: the pager can always supply them again. Under memory
        pressure the kernel **evicts** them (least recently used first; Dirty, AwaitingClean
        and pinned pages never go). The next access simply asks the pager again.
        """)
    demo.run("""
        pv.read(7, 0)
        k.reclaim(target_pages=10)
        pv.get_info().committed_bytes
        pv.read(7, 2 * PAGE_SIZE)
        log[-1]
        """)
    demo.expect(demo["log"][-1] == ("READ", 2, 1), "the evicted page is requested again")
    demo.expect(demo["pv"].read(7, 2 * demo["PAGE_SIZE"]) == b"BLOCK 2",
                "the page comes back with the written-back content")
    demo.say("""
        `reclaim` evicted both Clean pages (0 and 2), leaving `committed_bytes` 0; reading
        page 2 again sent a new READ request, and it came back with the content the writeback
        stored. Closing the pager detaches its VMOs (their later requests fail with
        `ERR_BAD_STATE`) and sends a COMPLETE request.
        """)
    demo.run("""
        pager.close()
        log[-1]
        pv.read(1, 3 * PAGE_SIZE)
        pv.close()
        """, errors=True)
    demo.expect(demo["log"][-1] == ("COMPLETE", 0, 0), "closing the pager sends COMPLETE")


def step_mapping(demo: Demo) -> None:
    demo.say("""
        A **mapping** (`v.map()`) places the VMO's pages in real memory. Nothing is copied up
        front: the first access to a page takes a real page fault, which Linux hands to the
        kernel's fault handler thread through **userfaultfd**. The handler looks the page up
        in the VMO (the same lookup a read or write uses: copy-on-write, zero fill, pager
        requests) and installs a copy of it. Pages are installed **read-only**, so the first
        store faults too and the VMO sees it. `m.read`/`m.write` copy to and from the mapped
        addresses with the GIL released; `fault_stats()` counts what the handler did.
        """)
    demo.run("""
        m = v.map()
        m.length // PAGE_SIZE, m.fault_stats().faults
        m.read(6, 0)
        m.read(10, 2 * PAGE_SIZE)
        m.fault_stats()
        """)
    st = demo["m"].fault_stats()
    demo.expect(st.read_faults == 1 and st.pages_installed == 4,
                "one read fault installs the 4 pages (fault-around)")
    demo.say("""
        The first load took one read fault, and the handler installed the faulting page and
        its neighbours at once (**fault-around**, up to 16 pages): the second load found its
        page already there. Now store through the mapping into page 3, which nobody wrote yet.
        """)
    before = demo.vmo_pages()
    demo.run("""
        m.write(b"STORED", 3 * PAGE_SIZE)
        m.fault_stats().wp_faults
        v.read(6, 3 * PAGE_SIZE)
        v.write(b"via v.write", 3 * PAGE_SIZE)
        m.read(11, 3 * PAGE_SIZE)
        """)
    demo.expect(demo.vmo_pages() == before + 1, "the store committed page 3")
    demo.expect(demo["m"].read(11, 3 * demo["PAGE_SIZE"]) == b"via v.write",
                "a v.write shows through the mapping")
    demo.say(f"""
        The store hit a read-only page: a **write-protect fault**. The handler did the VMO's
        write lookup (page 3 was zeros, so it committed a frame: `vmo_pages` went from
        {before} to {demo.vmo_pages()}) and made the page writable in the mapping: from then on
        the mapping's copy is the authoritative one. `v.read` still returned the stored bytes
        because the kernel *recalls* a written page (write-protect it, copy it back) before it
        reads the frame, and `v.write` drops the mapping's copy so the next load faults and
        sees the new bytes. A snapshot makes every mapped page read-only again, so the next
        store forks its page, as a write through `v.write` would:
        """)
    demo.run("""
        snap = v.create_child(ChildOptions.SNAPSHOT, 0, v.get_size())
        m.write(b"after", 0)
        v.read(5, 0), snap.read(6, 0)
        snap.close()
        m.unmap()
        v.read(5, 0)
        m.read(1)
        """, errors=True)
    demo.expect(demo["v"].read(5, 0) == b"after", "the store after the snapshot is in v")
    demo.say("""
        The snapshot kept "PAGE 0" while the mapping's store forked the page for `v`.
        Unmapping keeps every store in the VMO; any access after it fails with
        `ERR_BAD_STATE`, never a crash or a hang. (Workloads in other processes can map VMOs
        too and touch them with plain loads and stores: see `vmo.pager.remote`.)
        """)


def step_swap(demo: Demo) -> None:
    demo.say("""
        A **swap source** (`vmo.pager.swap.SwapSource`, after crosvm's vmm-swap) backs VMOs
        that behave as anonymous memory, but whose pages can be moved out of the arena:
        `move_to_staging` copies them to a staging memfd and frees their frames (and gives the
        memory back to the host), `swap_out` writes them to a swap file, and any later access
        takes a page back from staging, else from the file, else zero-fills it.
        """)
    demo.run("""
        from vmo.pager.swap import SwapSource
        swap = SwapSource(k)
        sv = swap.create_vmo(8 * PAGE_SIZE)
        sv.name = "swapped"
        sv.write(b"swap me " * 4096)
        held = k.memory_stats().vmo_pages
        swap.move_to_staging()
        held - k.memory_stats().vmo_pages
        swap.swap_out()
        swap.status().state
        sv.read(7, 3 * PAGE_SIZE)
        metrics = swap.status().metrics
        metrics.copied_from_file_pages, metrics.swap_pages, metrics.resident_pages
        """)
    metrics = demo["metrics"]
    demo.expect(metrics.swap_pages == 7 and metrics.copied_from_file_pages == 1,
                "7 pages out, 1 read back from the file")
    demo.say("""
        Reading page 3 brought it back from the swap file; the other seven are still out.
        `swap_in` brings everything back eagerly, and the state says where the pages are
        (`READY`: all in the arena). Closing the source keeps the VMO's content in the arena.
        """)
    demo.run("""
        swap.swap_in()
        swap.status().state
        swap.close()
        sv.read(7, 5 * PAGE_SIZE)
        sv.close()
        """)
    demo.expect(demo["sv"].closed, "the swapped VMO is closed")


def step_cleanup(demo: Demo) -> None:
    demo.say("Close the remaining VMOs: every frame goes back to the arena.")
    demo.run("""
        cache.close()
        v.close()
        k.memory_stats().vmo_pages
        """)
    demo.expect(demo.vmo_pages() == 0, "no frame is held after every VMO is closed")


def _mapping_unavailable() -> str | None:
    from vmo.pager.fault_handler import unavailable_reason

    return unavailable_reason()


# The tour, in order. Later steps (a user pager supplying pages, mappings taking real page
# faults) go before "cleanup"; give them an ``available`` callable if they need userfaultfd.
DEMO_STEPS: list[DemoStep] = [
    DemoStep("create", "Create and write a VMO", step_create),
    DemoStep("snapshot", "Snapshot: the hidden parent appears", step_snapshot),
    DemoStep("cow", "Write on both sides: copy-on-write and split bits", step_cow),
    DemoStep("merge", "Close one side: the hidden node merges away", step_merge),
    DemoStep("at-least-on-write", "An at-least-on-write clone (upgraded to a snapshot)",
             step_at_least_on_write),
    DemoStep("slice", "A slice shares pages both ways", step_slice),
    DemoStep("discardable", "A discardable VMO: lock, write, unlock", step_discardable),
    DemoStep("reclaim", "Reclaim discards it; LOCK reports it", step_reclaim),
    DemoStep("pager", "A user pager: supply, dirty, write back, evict", step_pager),
    DemoStep("mapping", "Map it: real page faults served through the VMO", step_mapping,
             available=_mapping_unavailable),
    DemoStep("swap", "Swap: staging memory and a swap file under a VMO", step_swap),
    DemoStep("cleanup", "Close everything", step_cleanup),
]

_INTRO = """
Every call below runs for real: the kernel is `vmo.Kernel`, an emulation of Zircon's virtual
memory objects whose physical memory is a memfd, and the session transcripts show the exact
Python that runs. After each step the tour prints the hierarchy (`vmo.debug.dump`), the
committed bytes of each VMO (`get_info`) and of the kernel (`k.memory_stats()`), and runs
`vmo.debug.validate(k)`, which checks every invariant of the model.
"""


def run_demo(out: Output, *, pause: bool = False,
             steps: Sequence[DemoStep] | None = None) -> int:
    """Run the tour; returns the exit status (0: every step ran and validated)."""
    from vmo import InvariantError

    steps = list(DEMO_STEPS if steps is None else steps)
    demo = Demo(out)
    start = time.perf_counter()
    out.banner("vmo demo: a tour of Zircon's VMO model", _INTRO)
    try:
        for i, step in enumerate(steps, 1):
            if pause and i > 1:
                try:
                    answer = out.ask(f"-- Enter for step {i}/{len(steps)}, q to quit -- ")
                except EOFError:
                    pause = False
                    answer = ""
                if answer.strip().lower() in ("q", "quit"):
                    raise DemoQuit
            out.step(i, len(steps), step.title)
            why_not = step.available()
            if why_not:
                out.say(f"(skipped: {why_not})")
                continue
            step.run(demo)
            demo.show_stats()
            demo.validate()
    except DemoQuit:
        out.say("Tour stopped.")
        return 0
    except InvariantError as e:
        out.problem("vmo.debug.validate found a broken invariant",
                    f"{e}\n\nThis is a bug in the core; please report it with the step name.")
        return 1
    except DemoError as e:
        out.problem("The core did not behave as the tour says", str(e))
        return 1
    finally:
        demo.close()
    elapsed = time.perf_counter() - start
    out.say(f"Tour done in {elapsed:.2f} s: {len(steps)} steps, `vmo.debug.validate` ran "
            f"{demo.validations} times and found every invariant intact.")
    return 0


# ---------------------------------------------------------------------------- subcommands


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="a narrated tour of the VMO model (snapshots, copy-on-write, slices, ...)",
        description="Walk through Zircon's VMO model step by step on a small in-process "
                    "kernel, showing the hierarchy and validating every invariant after each "
                    "step.")
    style = p.add_mutually_exclusive_group()
    style.add_argument("--plain", action="store_true",
                       help="plain text, no colors (the default when stdout is not a terminal)")
    style.add_argument("--rich", action="store_true",
                       help="styled output even when stdout is not a terminal")
    p.add_argument("--step", action="store_true",
                   help="pause for Enter between steps (ignored when stdin is not a terminal)")
    p.add_argument("--list", action="store_true", help="list the steps and exit")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.list:
        for i, step in enumerate(DEMO_STEPS, 1):
            print(f"{i:2}. {step.name:<20} {step.title}")
        return 0
    out = make_output(args.plain, args.rich)
    return run_demo(out, pause=args.step and _isatty(sys.stdin))


def _add_fuzz(sub: Any) -> None:
    p = sub.add_parser(
        "fuzz", help="fuzz the core against the oracle state machine; --mutants checks that "
                     "the fuzzer catches deliberately broken cores",
        description="Run the oracle state machine (vmo.testing) for a time or a number of "
                    "steps with a live display of what it exercised. On failure the shrunk "
                    "program is printed and saved as a pytest file. With --mutants, run a "
                    "campaign against each deliberately broken core in fuzz/mutants/ and "
                    "print which were killed. See docs/fuzzing.md.")
    p.add_argument("--time", type=float, metavar="SECONDS",
                   help="run for SECONDS (default 60 unless --steps is given; with --mutants, "
                        "the budget of each mutant)")
    p.add_argument("--steps", type=int, metavar="N", help="stop after N rule calls")
    p.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                   help="processes sharing the example database (with --mutants: mutants run "
                        "at a time)")
    p.add_argument("--seed", type=int, help="hypothesis seed (default: random, printed)")
    p.add_argument("--db", metavar="PATH|URL",
                   help="example database shared by jobs and later runs: a directory "
                        "(default: .hypothesis/vmo-fuzz), or redis://HOST:PORT/DB to share it "
                        "with other machines (layered with --local-db)")
    p.add_argument("--local-db", metavar="PATH", default=".hypothesis/vmo-fuzz",
                   help="with --db redis://...: the local directory layered with it "
                        "(default: %(default)s)")
    p.add_argument("--db-readonly", metavar="PATH|URL", action="append", default=[],
                   help="also replay the programs of this database (a directory or a Redis "
                        "URL) but never write to it (repeat for several)")
    p.add_argument("--no-db", action="store_true", help="use no writable example database")
    p.add_argument("--machine", metavar="MODULE:CLASS",
                   help="the state machine to fuzz (default vmo.testing.machine:VmoStateMachine)")
    p.add_argument("--program-steps", type=int, metavar="N",
                   help="rule calls per program (hypothesis stateful_step_count; default 50)")
    p.add_argument("--failures-dir", metavar="DIR", default="fuzz/failures",
                   help="where a failing program is saved as test_repro_<seed>.py "
                        "(default: %(default)s)")
    style = p.add_mutually_exclusive_group()
    style.add_argument("--plain", action="store_true", help="plain status lines, no live panel")
    style.add_argument("--rich", action="store_true",
                       help="the live panel even when stdout is not a terminal")
    p.add_argument("--mutants", action="store_true",
                   help="run a campaign against every mutant of fuzz/mutants/ (one subprocess "
                        "each) and print the table")
    p.add_argument("--mutant", metavar="NAME", action="append",
                   help="with --mutants: only these (repeat); alone: fuzz with this mutant "
                        "applied")
    p.add_argument("--list-mutants", action="store_true", help="list the mutants and exit")
    p.add_argument("--mutants-dir", metavar="DIR",
                   help="the mutant catalogue (default: fuzz/mutants of this checkout)")
    p.add_argument("--robust", action="store_true",
                   help="run the robustness campaign instead (bad input, injected faults, "
                        "threads, killed workloads, leaks) for --time seconds; see "
                        "docs/robustness.md")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON on stdout (the live display goes to stderr)")
    p.set_defaults(func=_cmd_fuzz)


def _cmd_fuzz(args: argparse.Namespace) -> int:
    if args.robust:
        from vmo.testing import robust

        return robust.main(60.0 if args.time is None else args.time, args.seed)
    from vmo.testing.console import fuzz_command

    return fuzz_command(args)


def _add_swap(sub: Any) -> None:
    from vmo.pager.swap.cli import add_parser

    add_parser(sub)


# Every subcommand, in --help order: each adder declares a parser and sets ``func``.
# - ``vmo bench`` (bench/bench_core.py): add ``_add_bench`` here.
_SUBCOMMANDS: list[Callable[[Any], None]] = [
    _add_demo,
    _add_fuzz,
    _add_swap,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmo",
        description="Zircon's VMO model (copy-on-write hierarchy, pagers, swap) over real "
                    "memory.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vmo`` console script and of ``python -m vmo``."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already reported by argparse
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``vmo demo | head``): stop quietly, and keep the interpreter's
        # final flush from complaining about the same pipe.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1


__all__ = ["DEMO_STEPS", "Demo", "DemoStep", "build_parser", "main", "run_demo"]
