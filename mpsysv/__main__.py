"""``python -m mpsysv``: the command line (see ``mpsysv.cli``)."""

import sys

from .cli import main

sys.exit(main())
