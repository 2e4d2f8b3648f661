"""``python -m helpers.weights``: see :mod:`helpers.weights.cli`."""

from .cli import main

raise SystemExit(main())
