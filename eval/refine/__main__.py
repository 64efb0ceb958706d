"""``python -m eval.refine refine ...``: the ``refine`` subcommand on its own."""

import sys

from .cli import main

sys.exit(main())
