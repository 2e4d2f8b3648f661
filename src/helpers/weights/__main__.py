"""``python -m helpers.weights``: see :mod:`helpers.weights_cli`."""

from ..weights_cli import main

raise SystemExit(main())
