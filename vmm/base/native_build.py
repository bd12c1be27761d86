"""cffi build script: compiles every C file of the package into akvm.base._native.

The C sits beside the Python it mirrors (vmm/, devices/, iommu/); each X.c
has an X.h with its declarations. cffi's cdef parser does not preprocess,
so the headers go through the C preprocessor first with AKVM_CDEF defined
(which hides inline bodies and system includes, and shows the constants
Python wants from <linux/*.h>); every #define then becomes `#define NAME
...`, so its value is the compiler's, written once in C.

cffi releases the GIL around every call, so a vCPU thread sitting in
KVM_RUN never blocks the other vCPUs or the device threads.
"""
import os
import pathlib
import re
import shlex
import subprocess

from cffi import FFI

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("vmm", "devices", "iommu")     # akvm, akvm.devices, akvm.iommu
_DEFINE = re.compile(r"#define\s+(\w+)\s+\S")


def _files(pattern: str) -> list[pathlib.Path]:
    return sorted(p for d in PACKAGE_DIRS for p in (ROOT / d).rglob(pattern))


def _cdef(headers: list[pathlib.Path], include_dirs: list[str]) -> str:
    includes = "".join(f'#include "{h.name}"\n' for h in headers)
    cpp = shlex.split(os.environ.get("CC", "cc")) + [
        "-x", "c", "-E", "-P", "-dD", "-undef", "-DAKVM_CDEF", *(f"-I{d}" for d in include_dirs), "-"]
    text = subprocess.run(cpp, input=includes, capture_output=True, text=True, check=True).stdout
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            m = _DEFINE.match(line)
            if not m or m.group(1).startswith("_") or m.group(1) == "AKVM_CDEF":
                continue        # predefined macros, include guards, #undef
            line = f"#define {m.group(1)} ..."
        lines.append(line)
    return "\n".join(lines)


def make_builder() -> FFI:
    headers, sources = _files("*.h"), _files("*.c")
    include_dirs = sorted({str(h.parent) for h in headers})
    builder = FFI()
    builder.cdef(_cdef(headers, include_dirs))
    builder.set_source(
        "akvm.base._native",
        "".join(f'#include "{h.name}"\n' for h in headers),
        sources=[str(s.relative_to(ROOT)) for s in sources],
        include_dirs=include_dirs,
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
