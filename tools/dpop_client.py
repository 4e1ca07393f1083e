#!/usr/bin/env python3
"""Make a DPoP request (RFC 9449) from a checkout: runs ``gateway.tokens.dpop_client``.

Installed, the same client is ``gateway dpop-request`` (or ``python -m gateway.tokens.dpop_client``);
``--help`` lists the flags.

    python tools/dpop_client.py --token-endpoint http://127.0.0.1:9400/token http://127.0.0.1:8080/dpop/orders
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from gateway.tokens.dpop_client import main

if __name__ == "__main__":
    sys.exit(main(prog="dpop_client.py"))
