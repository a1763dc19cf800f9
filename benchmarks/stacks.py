"""Summaries of py-spy's raw (collapsed) stacks: where a runner's samples fall.

``py-spy record -f raw`` writes one line per distinct stack: frames from the
root, ``function (file:line)``, joined by ``;``, then the number of samples.
`summarise` folds the lines into functions (``function (file)``, any line) and
gives each its share of all samples: inclusive (the function is anywhere on
the stack) and self (it is the innermost frame).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

_LINE = re.compile(r":\d+\)$")
# The event loop and the runner's scaffolding hold every sample: listing them says nothing.
SCAFFOLDING = ("asyncio/", "<frozen runpy>", "runpy.py", "benchmarks/workload.py", "threading.py", "concurrent/")


def function_of(frame: str) -> str:
    """``function (file)`` of a ``function (file:line)`` frame."""
    return _LINE.sub(")", frame.strip())


def read(path: Path) -> list[tuple[list[str], int]]:
    """The stacks of a raw py-spy file, each with its sample count."""
    stacks = []
    for line in path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append(([function_of(frame) for frame in frames.split(";")], int(count)))
    return stacks


def summarise(path: Path, top: int = 20) -> dict[str, Any]:
    """The ``top`` functions by inclusive share, and the ``top`` by self share, of the samples in ``path``.

    Functions of the event loop and the runner's scaffolding are left out of the
    inclusive list (they hold nearly every sample), not out of the self list
    (time the event loop spends on itself, ``select`` included, is real cost).
    """
    stacks = read(path)
    total = sum(count for _, count in stacks) or 1
    inclusive: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    for frames, count in stacks:
        for function in set(frames):
            inclusive[function] += count
        innermost[frames[-1]] += count
    shown = [f for f, _ in inclusive.most_common() if not any(part in f for part in SCAFFOLDING)][:top]
    return {
        "file": path.name,
        "samples": total,
        "top": [{"function": f, "inclusive": inclusive[f] / total, "self": innermost[f] / total} for f in shown],
        "top_self": [
            {"function": f, "inclusive": inclusive[f] / total, "self": count / total}
            for f, count in innermost.most_common(top)
        ],
    }
