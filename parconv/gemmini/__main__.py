"""``python -m parconv.gemmini``: see `parconv.gemmini.cli`."""

from .cli import main

raise SystemExit(main())
