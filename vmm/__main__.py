"""`python -m akvm` and the `akvm` command."""
import sys

from akvm.boot.image import BootImage


def main(argv: list[str] | None = None) -> int:
    # Before the command line's own imports: the builder's (pyelftools,
    # construct) are the longest part of a start, and run on another CPU.
    args = sys.argv[1:] if argv is None else argv
    # A restore boots nothing: no builder to fork.
    restore = any(a == "--restore" or a.startswith("--restore=") for a in args)
    image = BootImage.prepare(fork=False if restore else None)
    try:
        from akvm.cli import main as cli_main
        return cli_main(argv, image)
    finally:
        image.cancel()      # after a --help or a bad option; a no-op once finished


if __name__ == "__main__":
    sys.exit(main())
