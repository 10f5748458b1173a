"""``python -m fastalex``: the command line (see :mod:`fastalex.cli`)."""

import sys

from .cli import main

sys.exit(main())
