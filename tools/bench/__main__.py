"""python -m tools.bench [NAME...]: run benchmarks, print the table, write results.md."""
from __future__ import annotations

import argparse
import datetime
import importlib
import pathlib
import sys

from tools.bench.common import Row, ensure_qemu, machine_description

BENCHMARKS = ["boot", "exits", "akaros", "memory", "guest", "virtio", "snapshot", "gdb", "ioat",
              "net"]
RESULTS = pathlib.Path(__file__).with_name("results.md")


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
    rows: list[Row] = []
    for name in args.names or BENCHMARKS:
        rows += importlib.import_module(f"tools.bench.{name}").run()
    table = format_table(rows)
    header = f"akvm benchmarks, {datetime.date.today()}, {machine_description()}"
    print(header)
    print(table)
    RESULTS.write_text(f"# {header}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
