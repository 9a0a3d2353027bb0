"""``vmo explore``: a local web page that shows a kernel's clone trees and what each operation
did to them, driven through forms, or replaying a trace or a fuzz repro.

- `vmo.explore.state`: the picture of a kernel as JSON (nodes, page lists, frames).
- `vmo.explore.session`: a live kernel, the forms' operations on it, and the timeline.
- `vmo.explore.replay`: replays of `vmo trace` files and `vmo fuzz` repro files.
- `vmo.explore.app`: the WSGI application (one page, a small JSON API, never a 500).
- `vmo.cli.explore`: the ``vmo explore`` command and its server (``vmo.explore.cli`` is an alias).
"""
