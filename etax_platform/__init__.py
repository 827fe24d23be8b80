"""Shared platform code every service may import.

Nothing here knows about a particular service's domain: settings, the gRPC server
bootstrap, error mapping, storage (SQL and key-value), personal-information protection,
access tokens and the clock.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Generated protobuf modules live in <repo>/gen and import each other by proto path
# (`from etax.common.v1 import ...`), so that directory must be importable.
_GEN = Path(__file__).resolve().parent.parent / "gen"
if _GEN.is_dir() and str(_GEN) not in sys.path:
    sys.path.insert(0, str(_GEN))
