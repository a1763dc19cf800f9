"""Thread controls' pure parts: rate limits read from their strings, and the bucket's size.

A rate limit is written ``"<count>/<unit>"`` with unit ``s``, ``min`` or ``h``
(``"500/s"``, ``"10/min"``, ``"1.5/h"``). The storage enforces it with a token
bucket inside the batch script, on its own clock (``cycle.lua``); this module only
reads the string and sizes the bucket.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

UNITS = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
"""Seconds per unit of a rate string."""

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """A rate limit: ``count`` requests per ``seconds``."""

    count: float
    seconds: float

    @property
    def per_second(self) -> float:
        """Requests a second."""
        return self.count / self.seconds

    def capacity(self, batch_size: int) -> int:
        """The bucket's size: a second's worth, at least 1, at most one batch. Over any
        ``T`` seconds at most ``capacity + per_second * T`` requests pass, so at most one
        batch more than the limit allows."""
        return max(1, min(batch_size, math.floor(self.per_second)))

    def argument(self, batch_size: int) -> str:
        """As the scripts take it: requests a second and the bucket's size."""
        return f"{self.per_second!r} {self.capacity(batch_size)}"


def parse_rate(text: object, where: str) -> Rate | None:
    """Read a rate string (``"500/s"``, ``"10/min"``, ``"2/h"``); None stays None.

    Args:
        text: The string, or None (no limit).
        where: What holds it, for the error (``"MyHandler.rate_limit"``).

    Raises:
        ValueError: not a string of a positive number, a slash and a known unit.
    """
    if text is None:
        return None
    found = _RATE.match(text) if isinstance(text, str) else None
    if found is None or found.group(2) not in UNITS or float(found.group(1)) <= 0:
        raise ValueError(
            f"{where} must be a rate like '500/s', '10/min' or '2/h' (a number > 0, '/', then s, min or h), "
            f"got {text!r}"
        )
    return Rate(float(found.group(1)), UNITS[found.group(2)])
