"""Small pieces shared by the benchmark scripts' command lines, progress and JSON output."""

from __future__ import annotations

import argparse
import math
import sys


def positive(text: str) -> int:
    """argparse type: an integer > 0."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def finite(value: float) -> float | None:
    """``value`` for JSON: None instead of NaN or infinity."""
    return value if math.isfinite(value) else None


def log(text: str) -> None:
    """Progress on stderr, keeping stdout for the report."""
    print(text, file=sys.stderr, flush=True)
