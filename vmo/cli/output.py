"""Where the command line writes: rich styling on a terminal, plain text otherwise.

`Output` is what the demo (`vmo.cli.demo`) writes to; `make_output` picks `RichOutput` or
`PlainOutput`; `isatty` is the terminal test the commands share (``vmo fuzz``'s live display
in `vmo.testing.console` uses it too).
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence
from typing import Any, Protocol, TextIO


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
    if not isatty(sys.stdout):
        return PlainOutput()
    try:
        return RichOutput()
    except ImportError:  # rich is a declared dependency, but a broken install should still run
        return PlainOutput()


def isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False

