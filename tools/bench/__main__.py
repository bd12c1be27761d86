"""python -m tools.bench [NAME...]: run benchmarks, print their tables, and replace their
sections of results.md (the other benchmarks' sections stay as they were)."""
from __future__ import annotations

import argparse
import datetime
import importlib
import os
import pathlib
import re
import sys

from tools.bench.common import Row, ensure_qemu, machine_description

BENCHMARKS = ["boot", "exits", "akaros", "memory", "guest", "virtio", "snapshot", "gdb", "ioat",
              "net"]
RESULTS = pathlib.Path(__file__).with_name("results.md")
PREAMBLE = ("# akvm benchmarks\n\nOne section per benchmark, as `python -m tools.bench NAME` "
            "last wrote it: the date, the host, and its load average when the run began "
            "(these machines are shared; ratios come from one run, side by side).\n")
SECTION = re.compile(r"^## (\w+): ", re.M)


def format_table(rows: list[Row]) -> str:
    lines = ["| benchmark | akvm | other | ratio akvm/other | note |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        other = f"{r.other:.2f} {r.unit} ({r.other_name})" if r.other is not None else "n/a"
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "n/a"
        lines.append(f"| {r.name} | {r.akvm:.2f} {r.unit} | {other} | {ratio} | {r.note} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__)
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        p.error(f"no such benchmark: {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    ensure_qemu()
    sections = read_sections()
    for name in args.names or BENCHMARKS:
        load = os.getloadavg()[0]
        rows = importlib.import_module(f"tools.bench.{name}").run()
        sections[name] = (f"## {name}: {datetime.date.today()}, {machine_description()}, "
                          f"load average {load:.1f}\n\n{format_table(rows)}\n")
        print(sections[name])
        write_sections(sections)       # a long run keeps what it measured so far
    return 0


def read_sections() -> dict[str, str]:
    """results.md's sections by benchmark name."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    starts = [(m.start(), m.group(1)) for m in SECTION.finditer(text)] + [(len(text), None)]
    return {name: text[start:end].rstrip("\n") + "\n"
            for (start, name), (end, _) in zip(starts, starts[1:])}


def write_sections(sections: dict[str, str]) -> None:
    order = [n for n in BENCHMARKS if n in sections] + [n for n in sections if n not in BENCHMARKS]
    RESULTS.write_text(PREAMBLE + "".join(f"\n{sections[n]}" for n in order))


if __name__ == "__main__":
    sys.exit(main())
