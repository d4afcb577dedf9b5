"""``python -m parconv.plan``: see parconv.plan.cli."""

import sys

from .cli import main

sys.exit(main())
