"""Settings read from the environment (never from the repo)."""

from __future__ import annotations

import os


def connect_timeout() -> int:
    """Seconds a database connection may take to open (``HPS_CONNECT_TIMEOUT``, default 10): a host
    that drops packets fails with a clear error instead of hanging."""
    return max(1, int(os.environ.get("HPS_CONNECT_TIMEOUT", "10")))
