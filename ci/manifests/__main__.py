"""``python -m ci.manifests``: see the package's docstring."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
