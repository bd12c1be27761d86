"""`python -m vmm` is `akvm`."""
import sys

from vmm.cli import main

sys.exit(main())
