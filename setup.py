"""Build hook: cffi compiles the C hot paths (every .c beside its Python twin) in API mode,
and, where libslirp-dev is installed, the libslirp binding for `net=user`
(devices/slirp_build.py: its own module, so that nothing else needs libslirp)."""
import pathlib
import runpy
import sys

from setuptools import setup

modules = ["vmm/base/native_build.py:ffibuilder"]
slirp = runpy.run_path(str(pathlib.Path(__file__).parent / "devices" / "slirp_build.py"),
                       run_name="slirp_check")
if slirp["available"]():
    modules.append("devices/slirp_build.py:ffibuilder")
else:
    print("akvm: <slirp/libslirp.h> not found: building without user-mode networking "
          "(net=user); install libslirp-dev for it", file=sys.stderr)

setup(cffi_modules=modules)
