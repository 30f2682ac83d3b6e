"""Argument types for the command line: numbers that must be finite and in range are refused by
argparse with the option's name (exit 2), before any model, bag or node is touched."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(kind: type, low: float, inclusive: bool) -> Callable[[str], float | int]:
    what = f"a {'non-negative' if inclusive else 'positive'} {'integer' if kind is int else 'number'}"

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_float = _number(float, 0.0, inclusive=False)
non_negative_float = _number(float, 0.0, inclusive=True)
positive_int = _number(int, 0, inclusive=False)
non_negative_int = _number(int, 0, inclusive=True)
