"""`RunMeter`: what a traced worker process measures about its run, for calibrating the twin.

A trace (`sharded_queue.trace`) says when each message was performed. To fit a
model of the worker from it (the simulator's ``calibrate``) one also needs what
the run cost and what it ran on; a `Worker` created with ``trace=True`` measures
it with instruments of its own, from its first loop's start to its last loop's end:

=====================  ===================================================  ==============================
field                  what                                                 instrument
=====================  ===================================================  ==============================
``process_cpu``        CPU seconds of this worker process                   ``time.process_time``
``cores``              cores this process may run on                        ``os.sched_getaffinity``
``machine_busy``       CPU seconds all programs used on the machine         ``/proc/stat`` (Linux)
``loops``              the most loops that ran at once                      the worker
``effects``            the effects its loops carried out, by kind (polls,   the worker
                       acquires, cycles, releases: its storage calls)
``lag``                the event loop's lag: how late a timer fires         a probe every `LAG_EVERY` s
``speed``              seconds a fixed CPU-bound unit of work takes         a probe every `SPEED_EVERY` s
``ping``               seconds a ``PING`` to the storage takes, there and   a probe every `PING_EVERY` s
                       back (by the path the worker's scripts take), and
``ping_cpu``           the thread CPU this process spent meanwhile (other   ``time.thread_time``
                       loops' work the reply waited for)
``ping_wait``          the time the thread waited meanwhile for a core      ``/proc/thread-self/schedstat``
                       (busy with other programs)                           (Linux; else none)
``storage_local``      whether the storage server shares this machine       its address
``storage``            redis-server's ``INFO commandstats`` (calls, usec    ``INFO`` at start and end, when
                       per command) and ``INFO cpu`` deltas                 the server answers it
=====================  ===================================================  ==============================

The probes cost this process a few microseconds every 50 ms, a ``PING`` every
250 ms and about 0.2 ms a second: a worker that does not trace pays nothing. The summary (`RunMeter.summary`)
is plain JSON, kept in the trace frame's ``attrs["meter"]`` (a list, one entry per
worker process, so traces of several processes concatenate).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Protocol

logger = logging.getLogger("sharded_queue")

LAG_EVERY = 0.05
"""Seconds between two event-loop lag probes."""

SPEED_EVERY = 1.0
"""Seconds between two speed probes."""

PING_EVERY = 0.25
"""Seconds between two round-trip probes."""

SPEED_UNIT = 20_000
"""Iterations of the speed probe's unit of work (about 0.2 ms of one core here)."""


class _Storage(Protocol):
    async def info(self, section: str) -> dict[str, Any]: ...
    async def ping(self) -> float: ...
    @property
    def local(self) -> bool: ...


def cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def machine_busy() -> float | None:
    """CPU seconds all programs spent on this machine since boot (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:  # pragma: no cover - not Linux
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def speed_unit() -> float:
    """Seconds of this thread's CPU that one unit of fixed work takes (the machine's speed now)."""
    start = time.thread_time()
    total = 0
    for value in range(SPEED_UNIT):
        total += value * value
    return time.thread_time() - start


class RunMeter:
    """Measures one worker process's run (see the module docstring); `start`, then `stop`."""

    def __init__(self, storage: _Storage | None = None) -> None:
        self.storage = storage
        self.loops = 0
        self.effects: dict[str, int] = {}  # counted by the worker's loops
        self.lag: list[float] = []
        self.speed: list[float] = []
        self.ping: list[float] = []
        self.ping_cpu: list[float] = []
        self.ping_wait: list[float] = []
        self._start: dict[str, Any] = {}
        self._end: dict[str, Any] = {}
        self._probes: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Take the first readings and start the probes."""
        self._start = await self._readings()
        self._end = {}
        self._probes = [asyncio.create_task(self._lag()), asyncio.create_task(self._speed())]
        if self.storage is not None:
            self._probes.append(asyncio.create_task(self._ping()))

    async def stop(self) -> None:
        """Stop the probes and take the last readings."""
        probes, self._probes = self._probes, []
        for probe in probes:
            probe.cancel()
        if probes:
            await asyncio.wait(probes)
        self._end = await self._readings()

    def summary(self) -> dict[str, Any]:
        """The run's measurements, as plain JSON (up to now when not stopped yet)."""
        start = self._start
        end = self._end or {"wall": time.time(), "process_cpu": time.process_time(), "machine_busy": machine_busy()}
        found: dict[str, Any] = {
            "pid": os.getpid(),
            "cores": cores(),
            "loops": self.loops,
            "effects": dict(self.effects),
            "started": start.get("wall"),
            "stopped": end["wall"],
            "process_cpu": end["process_cpu"] - start["process_cpu"] if start else None,
            "lag": list(self.lag),
            "speed": list(self.speed),
            "ping": list(self.ping),
            "ping_cpu": list(self.ping_cpu),
            "ping_wait": list(self.ping_wait),
            "storage_local": self.storage.local if self.storage is not None else None,
        }
        if start.get("machine_busy") is not None and end.get("machine_busy") is not None:
            found["machine_busy"] = end["machine_busy"] - start["machine_busy"]
        if start.get("storage") and end.get("storage"):
            found["storage"] = _storage_delta(start["storage"], end["storage"])
        return found

    async def _readings(self) -> dict[str, Any]:
        readings: dict[str, Any] = {
            "wall": time.time(),
            "process_cpu": time.process_time(),
            "machine_busy": machine_busy(),
        }
        if self.storage is not None:
            readings["storage"] = await self._storage()
        return readings

    async def _storage(self) -> dict[str, Any] | None:
        assert self.storage is not None
        try:
            return {"commandstats": await self.storage.info("commandstats"), "cpu": await self.storage.info("cpu")}
        except Exception as exc:  # a cluster, a fakeredis or a server that refuses INFO: not readable
            logger.debug("trace: the storage server's INFO is not readable: %s", exc)
            return None

    async def _lag(self) -> None:
        event_loop = asyncio.get_running_loop()
        while True:
            planned = event_loop.time() + LAG_EVERY
            await asyncio.sleep(LAG_EVERY)
            self.lag.append(max(0.0, event_loop.time() - planned))

    async def _speed(self) -> None:
        while True:
            await asyncio.sleep(SPEED_EVERY)
            self.speed.append(speed_unit())

    async def _ping(self) -> None:
        assert self.storage is not None
        while True:
            await asyncio.sleep(PING_EVERY)
            cpu, waited = time.thread_time(), run_queue_wait()
            try:
                taken = await self.storage.ping()
            except Exception as exc:  # an outage: the loops report it; the probe waits for the next
                logger.debug("trace: ping failed: %s", exc)
                continue
            self.ping.append(taken)
            used = min(time.thread_time() - cpu, taken)
            self.ping_cpu.append(used)
            if waited is not None:
                self.ping_wait.append(min((run_queue_wait() or waited) - waited, taken - used))


def run_queue_wait() -> float | None:
    """Seconds this thread has waited for a core so far (Linux ``schedstat``); None elsewhere."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as stat:
            return int(stat.read().split()[1]) * 1e-9
    except (OSError, IndexError, ValueError):
        return None


def _storage_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the storage server did between two ``INFO`` readings: per command, calls and
    microseconds; and its own CPU seconds (system and user)."""
    commands = {}
    for name, stats in after["commandstats"].items():
        old = before["commandstats"].get(name, {"calls": 0, "usec": 0})
        calls = int(stats["calls"]) - int(old["calls"])
        if calls:
            commands[name.removeprefix("cmdstat_")] = {"calls": calls, "usec": int(stats["usec"]) - int(old["usec"])}
    cpu = sum(float(after["cpu"][key]) - float(before["cpu"][key]) for key in ("used_cpu_sys", "used_cpu_user"))
    return {"commands": commands, "cpu": cpu}
