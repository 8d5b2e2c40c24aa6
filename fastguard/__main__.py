"""`python -m fastguard ...`: the `fastguard` command (for images where only the interpreter is on PATH)."""

import sys

from fastguard.cli import main

sys.exit(main())
