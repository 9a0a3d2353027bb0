"""Fuzz harnesses of `vmo`: mutants of the core (`fuzz.mutants`), the atheris entry point
(`fuzz/atheris_fuzz.py`) and the long-running state machine runner. See docs/fuzzing.md."""
