"""Build the small test kernels in tests/integration/tiny with GNU as and ld."""
import pathlib
import subprocess

TINY_SRC = pathlib.Path(__file__).parent / "integration" / "tiny" / "tiny.S"


def build_tiny(out_dir: pathlib.Path, text_addr: int = 0x100000) -> pathlib.Path:
    obj = out_dir / "tiny.o"
    elf = out_dir / f"tiny-{text_addr:x}.elf"
    subprocess.run(["as", "--32", "-o", str(obj), str(TINY_SRC)], check=True)
    # -N: one RWX segment at text_addr, nothing in the BIOS area below it.
    subprocess.run(["ld", "-m", "elf_i386", "-N", f"-Ttext={text_addr:#x}", "--no-warn-rwx-segments",
                    "-o", str(elf), str(obj)], check=True)
    return elf


VBLK_DIR = pathlib.Path(__file__).parent / "integration" / "vblk"


def build_vblk(out_dir: pathlib.Path) -> pathlib.Path:
    """tests/integration/vblk: a bare 32-bit kernel driving virtio-blk over virtio-mmio."""
    cflags = ["-m32", "-O2", "-ffreestanding", "-fno-pic", "-fno-pie", "-fno-stack-protector",
              "-fno-builtin", "-nostdlib", "-mgeneral-regs-only", "-fcf-protection=none",
              "-fno-asynchronous-unwind-tables", "-Wall", "-Werror"]
    objs = []
    for src in ("start.S", "vblk.c"):
        obj = out_dir / (src.rsplit(".", 1)[0] + ".o")
        subprocess.run(["gcc", *cflags, "-c", "-o", str(obj), str(VBLK_DIR / src)], check=True)
        objs.append(str(obj))
    elf = out_dir / "vblk.elf"
    subprocess.run(["ld", "-m", "elf_i386", "-N", "-Ttext=0x100000", "--no-warn-rwx-segments",
                    "-o", str(elf), *objs], check=True)
    return elf
