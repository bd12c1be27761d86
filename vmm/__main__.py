"""`python -m akvm` and the `akvm` command."""
import sys

from akvm.boot.image import BootImage


def main(argv: list[str] | None = None) -> int:
    # Before the command line's own imports: the builder's (pyelftools,
    # construct) are the longest part of a start, and run on another CPU.
    image = BootImage.prepare()
    try:
        from akvm.cli import main as cli_main
        return cli_main(argv, image)
    finally:
        image.cancel()      # after a --help or a bad option; a no-op once finished


if __name__ == "__main__":
    sys.exit(main())
