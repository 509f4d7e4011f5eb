"""``python -m unroll_utils.sweep ...``: the command line of :mod:`unroll_utils.sweep.cli`."""

import sys

from unroll_utils.sweep.cli import main

sys.exit(main())
