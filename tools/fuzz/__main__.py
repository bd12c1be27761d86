"""python -m tools.fuzz [NAME...] [--ops N]: long campaigns against hostile input.

Each campaign drives one of akvm's guest-facing paths with random input for at
least N operations (default 1,000,000) and reports how many it ran, how long
it took and what it found: an exception, a C path disagreeing with its Python
twin, or (in a sanitizer build, .ci/run's) a report from ASan or UBSan, which
aborts the run. The tests in tests/ run the same checks for a few thousand
operations; these are the soak.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import sys
import time

# name -> the module (with run() and WHAT) or module:function (its docstring says what)
CAMPAIGNS = {"bus": "tools.fuzz.bus", **{name: f"tools.fuzz.twins:{name}" for name in
                                         ("virtq", "blk", "slwalk", "qi", "iotlb", "fastpath")}}


def campaign(name: str):
    """(run(ops, seed) -> (ops, findings, detail), what it drives)."""
    module, _, function = CAMPAIGNS[name].partition(":")
    module = importlib.import_module(module)
    if not function:
        return module.run, module.WHAT
    fn = getattr(module, function)
    return fn, " ".join(fn.__doc__.split())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", choices=list(CAMPAIGNS) + [[]],
                   help="campaigns (default: all)")
    p.add_argument("--ops", type=int, default=1_000_000, help="operations per campaign")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    failed = 0
    print("| campaign | operations | seconds | findings |")
    print("| --- | --- | --- | --- |")
    for name in args.names or CAMPAIGNS:
        run, what = campaign(name)
        start = time.monotonic()
        # Quiet: the notices machines print as they are built (logging keeps the real stderr).
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ops, findings, detail = run(args.ops, args.seed)
        failed += bool(findings)
        print(f"| {name}: {what} | {ops} ({detail}) | {time.monotonic() - start:.0f} | "
              f"{'; '.join(findings) or 'none'} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
