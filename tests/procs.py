"""Process checks the tests of worker lifetimes share."""

from __future__ import annotations

import psutil


def alive(pid: int) -> bool:
    """Running, not a zombie its parent has yet to reap (a killed worker is gone either way)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
