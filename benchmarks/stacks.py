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
SCAFFOLDING = ("asyncio/", "runpy", "benchmarks/workload.py", "threading.py", "concurrent/", "<module>", "importlib")
IMPORT = "_find_and_load (<frozen importlib._bootstrap>)"


def function_of(frame: str) -> str:
    """``function (file)`` of a ``function (file:line)`` frame."""
    return _LINE.sub(")", frame.strip())


def read(path: Path) -> list[tuple[list[str], int]]:
    """The stacks of a raw py-spy file, each with its sample count, less the process's start-up."""
    stacks = []
    for line in path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            functions = [function_of(frame) for frame in frames.split(";")]
            if not start_up(functions):
                stacks.append((functions, int(count)))
    return stacks


def start_up(frames: list[str]) -> bool:
    """Whether a stack is the program importing its modules before it runs (its main module's
    top level importing), which no benchmark times."""
    main = next((i for i, frame in enumerate(frames) if frame.startswith("<module>") and "runpy" not in frame), None)
    return main is not None and main + 1 < len(frames) and frames[main + 1] == IMPORT


def summarise(
    path: Path, top: int = 20, exclude: tuple[str, ...] = (), rate: float = 100, messages: int = 1
) -> dict[str, Any]:
    """The ``top`` functions by inclusive share, and the ``top`` by self share, of the samples in ``path``.

    Stacks with a frame containing any of ``exclude`` are not counted at all
    (another thread, work outside the timed region). Functions of the event
    loop and the runner's scaffolding are left out of the inclusive list (they
    hold nearly every sample), not out of the self list (time the event loop
    spends on itself is real cost; ``select`` is also where it waits for Redis).
    With py-spy's sampling ``rate`` (per second) and the ``messages`` the run
    handled, each function also gets its sampled time per message (``us``).
    """
    stacks = [(frames, count) for frames, count in read(path) if not any(part in f for f in frames for part in exclude)]
    total = sum(count for _, count in stacks) or 1
    inclusive: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    for frames, count in stacks:
        for function in set(frames):
            inclusive[function] += count
        innermost[frames[-1]] += count
    shown = [f for f, _ in inclusive.most_common() if not any(part in f for part in SCAFFOLDING)][:top]
    us = 1e6 / rate / messages  # one sample, in microseconds per message

    def row(function: str) -> dict[str, Any]:
        share = inclusive[function] / total
        return {"function": function, "inclusive": share, "self": innermost[function] / total, "us": share * total * us}

    return {
        "file": path.name,
        "samples": total,
        "us_per_message": total * us,
        "top": [row(f) for f in shown],
        "top_self": [row(f) for f, _ in innermost.most_common(top)],
    }
