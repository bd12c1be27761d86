"""Build hook: cffi compiles the C hot paths (vmm/native) in API mode."""
from setuptools import setup

setup(cffi_modules=["vmm/native/build.py:ffibuilder"])
