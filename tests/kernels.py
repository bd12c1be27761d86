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
