"""Worker processes (`benchmarks.worker_process`) started, killed and read, for the crash and
failover tests and the failover benchmark."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).with_name("worker_process.py")


@dataclass
class Processes:
    url: str
    directory: Path
    env: dict[str, str]
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)
    kill_times: list[tuple[float, int]] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.directory / "performs.log"

    def spawn(self, loops: int = 2, **env: str) -> subprocess.Popen[bytes]:
        stderr = open(self.directory / "workers.err", "ab")  # noqa: SIM115 - owned by the child
        process = subprocess.Popen(
            [sys.executable, str(SCRIPT), self.url, str(self.log), str(loops)],
            env={**os.environ, **self.env, **env, "PYTHONPATH": str(ROOT)},
            stderr=stderr,
        )
        stderr.close()
        self.running.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        process.kill()
        process.wait(10)
        self.kill_times.append((time.time(), process.pid))
        self.killed.add(process.pid)
        self.running.remove(process)

    def stop_all(self) -> None:
        for process in self.running:
            process.kill()
            process.wait(10)
        self.running.clear()

    def lines(self, event: str | None = None) -> list[list[str]]:
        if not self.log.exists():
            return []
        rows = [line.split() for line in self.log.read_text().splitlines()]
        return [row for row in rows if event is None or row[3] == event]

    def errors(self) -> str:
        path = self.directory / "workers.err"
        return path.read_text() if path.exists() else ""
