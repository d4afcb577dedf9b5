"""``python -m parconv`` is ``python -m parconv.run`` (see there)."""

import sys

from parconv.run import main_or_abort

if __name__ == "__main__":
    sys.exit(main_or_abort())
