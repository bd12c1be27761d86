"""cffi build script: compiles the C hot paths into vmm.native._akvm.

cffi releases the GIL around every call, so a vCPU thread sitting in
KVM_RUN never blocks the other vCPUs or the device threads.
"""
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).parent
SOURCES = ["run.c", "fastpath.c", "virtq.c", "blkq.c", "slwalk.c", "serial.c", "pciconf.c", "iotlb.c", "qi.c",
           "vtddoor.c"]

ffibuilder = FFI()
ffibuilder.cdef((HERE / "akvm_native.h").read_text())
ffibuilder.set_source(
    "vmm.native._akvm",
    '#include "akvm_native.h"\n',
    sources=[str(HERE / s) for s in SOURCES],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
