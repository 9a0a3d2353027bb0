"""Build hook: everything else is in pyproject.toml. The cffi module is compiled from the
system headers at install time (see vmo/mmu/_uffd_build.py)."""

from setuptools import setup

setup(cffi_modules=["vmo/mmu/_uffd_build.py:ffibuilder"])
