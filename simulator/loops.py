"""The simulated worker processes and their loops: what each holds, its waker, its statistics."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import simpy

    from .storage_model import SimThread


class SimProcess:
    """One worker process (one `Worker` object): its loops and its wake-up routing."""

    __slots__ = ("bound", "bound_mask", "cpu", "flushed", "idle", "index", "lags", "loops", "others")

    def __init__(self, index: int) -> None:
        self.index = index
        self.cpu: Any = None  # its `simulator.machine.Cpu`, when CPU is modelled
        self.loops: list[LoopState] = []
        self.bound: dict[SimThread, LoopState] = {}  # loops holding a thread
        self.idle: dict[LoopState, None] = {}  # loops looking for a thread, oldest first
        self.bound_mask = np.zeros(64, dtype=bool)  # by thread index: held by a loop of this process
        self.others = np.zeros(0, dtype=bool)  # by thread index: another process answers its wake-ups
        self.flushed = -math.inf  # registrations are applied up to here
        self.lags: list[float] = []  # its event loop's lag, probed as the worker's meter does


class LoopState:
    """One simulated loop: what it did (statistics) and its waker."""

    __slots__ = (
        "acquires",
        "armed_at",
        "binds",
        "bound",
        "bound_since",
        "busy",
        "checked",
        "cycles",
        "deadline",
        "event",
        "failures",
        "index",
        "messages",
        "next_wake",
        "performs",
        "polls",
        "process",
        "releases",
        "thread",
        "timer",
        "wait_id",
        "woken_at",
    )

    def __init__(self, index: int, process: SimProcess) -> None:
        self.index = index
        self.process = process
        self.thread: SimThread | None = None  # held (between Begin and End)
        self.armed_at = -math.inf  # when the current waker was armed; -inf: never
        self.woken_at = math.inf  # when it was woken; inf: not (yet)
        self.next_wake = math.inf  # the first registration that would wake it, as things stand
        self.checked = -math.inf  # registrations looked at up to here
        self.event: simpy.Event | None = None  # set while in a wakeable wait
        self.deadline = math.inf
        self.wait_id = 0
        self.timer = 0
        self.busy = 0.0
        self.bound = 0.0
        self.bound_since = math.nan
        self.binds = 0
        self.performs = 0
        self.failures = 0
        self.messages = 0
        self.polls = 0
        self.acquires = 0  # lease attempts
        self.cycles = 0  # ack and fetch calls
        self.releases = 0
