"""Shared fixtures: skip markers for tests that need /dev/kvm, gcc/binutils or QEMU;
hypothesis profiles.

Profiles (HYPOTHESIS_PROFILE, default `ci` when CI is set, else hypothesis's own):
  ci     derandomized (the same examples every run), no deadline: CI is reproducible
  long   20 times each test's examples, random: a soak before a release, or after
         a change to a C path (the campaigns in tools/fuzz go further)
Tests give their example counts through examples(n), which the profile scales.
"""
import gc
import os
import shutil

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("long", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))


def examples(n: int) -> int:
    """A test's example count under the loaded profile (`long`: 20 times n)."""
    return n * settings().max_examples // 100


def kvm_usable() -> str | None:
    """None when /dev/kvm can be opened, else the reason it cannot."""
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist on this host"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no read/write permission on /dev/kvm"
    return None


_KVM_REASON = kvm_usable()
needs_kvm = pytest.mark.skipif(_KVM_REASON is not None, reason=f"needs KVM: {_KVM_REASON}")


def open_fds() -> set[str]:
    """This process's open descriptors, once the collector has run the finalizers of
    models earlier tests dropped (they close their eventfds then: a pytest-xdist worker
    runs many tests in one process)."""
    gc.collect()
    return set(os.listdir("/proc/self/fd"))
needs_binutils = pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None,
                                    reason="needs GNU as and ld to build test kernels")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86_64 is not installed")


@pytest.fixture(scope="session")
def tiny_kernel(tmp_path_factory):
    """tests/integration/tiny/tiny.S as a Multiboot ELF32 at 1 MiB."""
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("needs GNU as and ld to build test kernels")
    from tests.kernels import build_tiny
    return build_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_kernel_at_64m(tmp_path_factory):
    """The same kernel linked at 64 MiB: too big for a 32 MiB guest."""
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("needs GNU as and ld to build test kernels")
    from tests.kernels import build_tiny
    return build_tiny(tmp_path_factory.mktemp("tiny64m"), 0x4000000)


@pytest.fixture(scope="session")
def io_shim(tmp_path_factory):
    """tests/shim/ioshim.c as an LD_PRELOAD library: a disk with a volatile write
    cache (held writes, lost when the process dies) and slow reads, for one file."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the I/O shim")
    import pathlib
    import subprocess
    out = tmp_path_factory.mktemp("shim") / "ioshim.so"
    src = pathlib.Path(__file__).parent / "shim" / "ioshim.c"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(out),
                    str(src), "-ldl", "-lpthread"], check=True)
    return out


def shim_env(shim, path, **settings) -> dict:
    """The environment that puts `shim` (io_shim) in front of the file at `path`."""
    st = os.stat(path)
    preload = " ".join(p for p in (os.environ.get("LD_PRELOAD"), str(shim)) if p)  # ASan first
    env = dict(os.environ, LD_PRELOAD=preload, AKVM_SHIM_FILE=f"{st.st_dev}:{st.st_ino}")
    env.update({f"AKVM_SHIM_{k.upper()}": str(v) for k, v in settings.items()})
    return env
