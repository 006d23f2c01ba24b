"""Parsing of human units on the command line: memory sizes and durations."""

from __future__ import annotations

import re

from autofit.errors import UsageError

GiB = 1024**3
MAX_MEMORY = 1024**5  # beyond any device: a typo, and past it floats overflow

_MEM_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}
_DUR_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
_NUM = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*$")


def parse_memory(text: str) -> int:
    """'24GiB' -> bytes. A bare number is GiB, which is what people mean by '--gpu-memory 24'."""
    m = _NUM.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _MEM_UNITS:
        raise UsageError(f"cannot read memory size {text!r}: use e.g. 24GiB, 24GB, 80G or 24 (GiB)")
    value = float(m.group(1))
    scale = GiB if unit == "" else _MEM_UNITS[unit]
    if not value * scale <= MAX_MEMORY:
        raise UsageError(f"memory size {text!r} is more than 1 PiB; no device has that much")
    size = int(value * scale)
    if size < 64 * 1024**2:
        raise UsageError(f"memory size {text!r} is below 64 MiB; nothing trains in that")
    return size


def parse_duration(text: str) -> float:
    """'15m' -> 900.0 seconds. A bare number is seconds."""
    m = _NUM.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _DUR_UNITS:
        raise UsageError(f"cannot read duration {text!r}: use e.g. 90s, 15m, 1h")
    seconds = float(m.group(1)) * _DUR_UNITS[unit]
    if seconds <= 0:
        raise UsageError(f"duration {text!r} must be positive")
    return seconds


def fmt_gib(nbytes: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / GiB:.2f}"
