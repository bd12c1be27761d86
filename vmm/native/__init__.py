"""C hot paths, built by cffi in API mode at install time (see build.py)."""
from vmm.native._akvm import ffi, lib  # noqa: F401
