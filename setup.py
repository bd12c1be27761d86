"""Build hook: cffi compiles the C hot paths (every .c beside its Python twin) in API mode."""
from setuptools import setup

setup(cffi_modules=["vmm/base/native_build.py:ffibuilder"])
