"""Queue benchmarks: this library against PyPI ``sharded-queue==0.2.10`` and bare redis-py.

One command runs everything (``make bench``, i.e. ``python -m benchmarks``;
``--quick`` for a smoke run). It starts its own ``redis-server`` on a free
loopback port (never the one on 6379) and stops it at the end, installs the peer
into ``benchmarks/.peer-venv`` on first use, and runs each system in its own
long-lived subprocess (`lib_runner`, `peer_runner`, `bare`), timed inside the
subprocess. Systems take turns (A B C D A B C D ...) on the same server; medians
and ratios are printed and written to ``benchmarks/results/``.

Workloads (issues 6 and 14):

1. register: ``n`` small dataclass requests routed over 16 threads, in calls of 1,000;
2. process: drain that backlog with a no-op ``perform``, batch 128, 8 loops in one process;
3. the same through the peer at its best settings for this workload (`PEER_BEST`,
   found by the ``peer_settings`` suite) and at its defaults, and through the bare
   ceiling (`benchmarks.bare`: route, msgspec, one RPUSH per tube; one Lua call per batch);
4. processes: ``sharded-queue worker --processes 1`` and ``2`` draining a backlog,
   with the CPU per message of the worker processes and of redis-server;
5. cluster: register and process on a 3-node Redis Cluster next to one Redis;
6. idle latency: ``register`` returning -> ``perform`` starting, default settings;
7. scaling with loops and batch size, and a worker's RSS while draining 1,000,000.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self, TextIO

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER_VENV = HERE / ".peer-venv"
RESULTS = HERE / "results"
PEER_SPEC = "sharded-queue==0.2.10"
LIB, BARE = "library", "bare ceiling"
PEER_BEST, PEER_DEFAULTS = "peer 0.2.10, best settings", "peer 0.2.10, defaults"
PEERS = (PEER_BEST, PEER_DEFAULTS)
# The peer's fastest settings for this workload (8 loops, 16 threads, batch 128), from
# `python -m benchmarks --only peer_settings` (README, Performance): with empty_pause 0 or
# empty_limit 1 a loop stops waiting on a drained tube, which is all that matters here;
# acquire_delay (the peer's coordinator delay) and the lock TTL do not move it.
PEER_BEST_SETTINGS: dict[str, Any] = {"empty_limit": 1, "empty_pause": 0.0, "acquire_delay": 0.01}
PEER_GRID: dict[str, tuple[Any, ...]] = {
    "empty_limit": (1, 4, 16),
    "empty_pause": (0.0, 0.01, 0.1),
    "acquire_delay": (0.0, 0.001, 0.01, 0.1, 1.0),
}
CLUSTER, SINGLE = "library, Redis Cluster (3 nodes)", "library, one Redis"
SUITES = ("throughput", "processes", "cluster", "latency", "scaling", "rss")
OPTIONAL_SUITES = ("peer_settings", "profile")  # run only when named with --only


@dataclass(frozen=True)
class Config:
    """Sizes of one benchmark run."""

    n: int = 100_000
    threads: int = 16
    chunk: int = 1_000
    loops: int = 8
    batch: int = 128
    reps: int = 5
    warm_samples: int = 300
    warm_gap: tuple[float, float] = (0.005, 0.025)
    cold_samples: int = 10
    cold_gap: tuple[float, float] = (1.8, 2.3)
    scaling_n: int = 50_000
    scaling_batch1_n: int = 10_000
    scale_loops: tuple[int, ...] = (1, 2, 4, 8, 16)
    scale_batches: tuple[int, ...] = (1, 8, 32, 128, 512)
    rss_n: int = 1_000_000
    rss_every: int = 20_000
    processes_n: int = 1_000_000
    processes: tuple[int, ...] = (1, 2)
    processes_reps: int = 3
    cluster_n: int = 100_000
    cluster_reps: int = 3
    peer_settings_n: int = 100_000
    peer_settings_reps: int = 2
    suites: tuple[str, ...] = SUITES
    peer: bool = True


FULL = Config()
QUICK = Config(
    n=20_000,
    reps=3,
    warm_samples=60,
    cold_samples=2,
    scaling_n=10_000,
    scaling_batch1_n=2_000,
    scale_loops=(1, 8, 16),
    scale_batches=(1, 128, 512),
    rss_n=100_000,
    rss_every=5_000,
    processes_n=100_000,
    processes_reps=1,
    cluster_n=20_000,
    cluster_reps=1,
    peer_settings_n=20_000,
    peer_settings_reps=1,
)


# --- processes -----------------------------------------------------------------


class BenchServer:
    """The benchmark's own ``redis-server``: `sharded_queue.testing.RedisServer` in a temporary
    directory, started on a free loopback port (never 6379) and removed afterwards."""

    directory_prefix = "sq-bench-redis-"

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server not found (apt-get install redis-server)")
        self.workdir = ""
        self.server: Any = None

    def _start(self, directory: Path) -> Any:
        from sharded_queue.testing import RedisServer

        return RedisServer(directory)

    def ports(self) -> list[int]:
        """The ports of its redis-server processes."""
        return [int(self.server.port)]

    @property
    def url(self) -> str:
        return str(self.server.url)

    @property
    def port(self) -> int:
        return int(self.server.port)

    def __enter__(self) -> Self:
        self.workdir = tempfile.mkdtemp(prefix=self.directory_prefix)
        self.server = self._start(Path(self.workdir))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def flush(self) -> None:
        """Empty the benchmark's own server(s) between runs (never any other server)."""
        import redis

        for port in self.ports():
            client = redis.Redis(port=port, socket_timeout=30)
            try:
                client.flushall()
            finally:
                client.close()

    def info(self, section: str) -> dict[str, Any]:
        import redis

        client = redis.Redis(port=self.port, socket_timeout=30)
        try:
            return dict(client.info(section))
        finally:
            client.close()

    def version(self) -> str:
        return str(self.info("server")["redis_version"])

    def cpu(self) -> float:
        """CPU seconds its redis-server processes have used so far, together (``INFO cpu``: user + system)."""
        return sum(server_cpu(port) for port in self.ports())


class BenchCluster(BenchServer):
    """A 3-node Redis Cluster of the benchmark's own, spawned like the tests'
    (`sharded_queue.testing.RedisClusterNodes`), on free loopback ports, and removed afterwards."""

    directory_prefix = "sq-bench-cluster-"

    def _start(self, directory: Path) -> Any:
        from sharded_queue.testing_servers import RedisClusterNodes

        return RedisClusterNodes(directory)

    def ports(self) -> list[int]:
        return [int(node.port) for node in self.server.nodes]


def server_cpu(port: int) -> float:
    """CPU seconds (user + system) the redis-server on ``port`` has used so far, from ``INFO cpu``."""
    import redis

    client = redis.Redis(port=port, socket_timeout=30)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds all cores of this machine have been busy since boot (``/proc/stat``, idle and iowait excepted)."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # guest time is in user already


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants alive now."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        with contextlib.suppress(OSError):
            todo += [int(child) for child in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
    return tree


class RunnerError(RuntimeError):
    """A runner answered with an error, died or did not answer in time."""


class Runner:
    """One system's benchmark subprocess, driven by JSON lines (see `workload.serve`)."""

    def __init__(self, name: str, argv: list[str], logs: Path, cwd: Path, drain: dict[str, Any] | None = None) -> None:
        self.name = name
        self.drain_options = drain or {}  # added to every drain command (the peer's settings)
        self.log_path = logs / f"{name.replace(' ', '-')}.{int(time.time() * 1000)}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_", "PYTHONPATH"))}
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=cwd, env=env
        )

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float = 900) -> dict[str, Any]:
        stdout = self.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = stdout.readline() if ready else ""
            if not line or line.startswith("{"):  # EOF, or a reply
                break
            self._log.write(f"[stdout] {line}")  # not a reply: py-spy's banner, say
        if not line:
            self.close()
            reason = "did not answer in time" if not ready else "died"
            raise RunnerError(f"{self.name} runner {reason}; log tail:\n{self.log_tail()}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RunnerError(f"{self.name}: {reply['error']}\n{reply.get('traceback', '')}")
        return reply

    def call(self, command: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
        self.send(command)
        return self.receive(timeout)

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.send({"op": "quit"})
            try:
                self.proc.wait(30)  # a profiled runner: py-spy writes its file once the runner quits
            except subprocess.TimeoutExpired:
                self.proc.kill()  # the peer swallows SIGTERM (it installs a handler)
                self.proc.wait()
        self._log.close()


PROFILE_RATE = 1000  # py-spy samples per second for the profile suite's raw stacks


def profiled(argv: list[str], profile: Path | None) -> list[str]:
    """``argv`` run under py-spy, which writes ``profile`` when the program quits: raw stacks
    for `stacks.summarise` (a ``.txt`` path, sampled densely), else a flame graph of a whole run."""
    if profile is None:
        return argv
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    fmt, rate = ("raw", PROFILE_RATE) if profile.suffix == ".txt" else ("flamegraph", 250)
    return [py_spy, "record", "-r", str(rate), "-f", fmt, "-o", str(profile), "--", *argv]


def lib_runner(logs: Path, url: str, profile: Path | None = None, name: str = LIB) -> Runner:
    argv = [sys.executable, "-m", "benchmarks.lib_runner", url]
    return Runner(name, profiled(argv, profile), logs, ROOT)


def bare_runner(logs: Path, url: str, profile: Path | None = None, name: str = BARE) -> Runner:
    return Runner(name, profiled([sys.executable, "-m", "benchmarks.bare", url], profile), logs, ROOT)


def peer_runner(logs: Path, url: str, python: Path, name: str, settings: dict[str, Any]) -> Runner:
    """The peer with ``settings`` (its `WorkerSettings` fields; none: its defaults) on every drain."""
    # -I: isolated, so neither this checkout nor PYTHONPATH can shadow the peer's sharded_queue.
    argv = [str(python), "-I", str(HERE / "peer_runner.py"), url]
    return Runner(name, argv, logs, HERE, {"peer": settings} if settings else None)


def peer_requirements() -> list[str]:
    """The peer, with the very same Redis driver versions this library runs on."""
    import hiredis
    import redis

    drivers = [f"redis=={redis.__version__}", f"hiredis=={hiredis.__version__}"]
    return [PEER_SPEC, *drivers, "pydantic-settings", "python-dateutil"]


def ensure_peer_venv(log: TextIO) -> Path:
    """``benchmarks/.peer-venv`` with the peer installed (once; redone when the pins change)."""
    python = PEER_VENV / "bin" / "python"
    stamp = PEER_VENV / ".installed"
    wanted = " ".join(peer_requirements())
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"installing {PEER_SPEC} into {PEER_VENV.relative_to(ROOT)} ...", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True, stdout=log, stderr=log)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *wanted.split()],
        check=True,
        stdout=log,
        stderr=log,
    )
    stamp.write_text(wanted)
    return python


# --- statistics ------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, float]:
    """Median, min and max of some runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def paired(ours: list[float], theirs: list[float]) -> float:
    """Median of the per-run ratios of two systems measured in turns."""
    return statistics.median([a / b for a, b in zip(ours, theirs, strict=True)])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values``."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --- suites ------------------------------------------------------------------------


@dataclass
class Bench:
    """State of one benchmark run: the server, the runners and what was measured."""

    config: Config
    server: BenchServer
    logs: Path
    runners: dict[str, Runner] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def fill_and_drain(
        self, system: str, n: int, loops: int, batch: int, rss_every: int = 0, server: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Register ``n`` jobs (timed), then drain them (timed), on an empty server.

        Each reply also gets ``server_cpu``: the CPU seconds redis-server used meanwhile.
        """
        c = self.config
        runner = self.runners[system]
        server = server or self.server
        server.flush()
        before = server.cpu()
        filled = runner.call({"op": "fill", "n": n, "threads": c.threads, "chunk": c.chunk})
        middle = server.cpu()
        drained = runner.call(
            {"op": "drain", "n": n, "threads": c.threads, "loops": loops, "batch": batch, "rss_every": rss_every}
            | runner.drain_options
        )
        filled["server_cpu"], drained["server_cpu"] = middle - before, server.cpu() - middle
        if drained["performed"] != n or drained["left"] != 0 or drained["errors"]:
            raise RunnerError(f"{system}: drain incomplete: {drained}")
        return filled, drained

    def alternate(self, systems: dict[str, Any], n: int, reps: int) -> dict[str, Any]:
        """Fill and drain ``n`` jobs with each system in turn, ``reps`` times (after one warm-up each).

        ``systems`` maps a runner's name to the server it works on (None: the benchmark's
        own). Returns, per workload and system, the rates, the client's and the server's
        CPU per message, and the median of the library's per-run ratios to each other system.
        """
        c = self.config
        for system, server in systems.items():  # warm-up: imports, connections, script cache, allocator
            self.fill_and_drain(system, 2_000, c.loops, c.batch, server=server)
        rates: dict[str, dict[str, list[float]]] = {w: {s: [] for s in systems} for w in ("register", "process")}
        cpu: dict[str, dict[str, list[float]]] = {w: {s: [] for s in systems} for w in ("register", "process")}
        server_cpu: dict[str, dict[str, list[float]]] = {w: {s: [] for s in systems} for w in ("register", "process")}
        width = max(map(len, systems))
        for rep in range(reps):
            for system, server in systems.items():
                filled, drained = self.fill_and_drain(system, n, c.loops, c.batch, server=server)
                for workload, reply in (("register", filled), ("process", drained)):
                    rates[workload][system].append(n / reply["seconds"])
                    cpu[workload][system].append(reply["cpu"] / n * 1e6)
                    server_cpu[workload][system].append(reply["server_cpu"] / n * 1e6)
                print(
                    f"  run {rep + 1}/{reps} {system:{width}s}  register {rates['register'][system][-1]:>10,.0f}/s"
                    f"   process {rates['process'][system][-1]:>10,.0f}/s   CPU us/msg, client + redis: "
                    f"register {cpu['register'][system][-1]:4.2f} + {server_cpu['register'][system][-1]:4.2f}, "
                    f"process {cpu['process'][system][-1]:4.2f} + {server_cpu['process'][system][-1]:4.2f}",
                    flush=True,
                )
        results: dict[str, Any] = {}
        first = next(iter(systems))
        for workload in ("register", "process"):
            results[workload] = {
                s: summary(v)
                | {
                    "values": v,
                    "cpu_us_per_msg": statistics.median(cpu[workload][s]),
                    "server_cpu_us_per_msg": statistics.median(server_cpu[workload][s]),
                }
                for s, v in rates[workload].items()
            }
            # Runs next to each other share the machine's mood: the median of the
            # per-run ratios is steadier than the ratio of the medians.
            results[workload]["paired_ratios"] = {
                other: paired(rates[workload][first], rates[workload][other]) for other in systems if other != first
            }
        return results

    def throughput(self) -> None:
        """Register and process throughput, systems taking turns, ``reps`` times."""
        c = self.config
        systems = list(self.runners)
        print(f"\n[throughput] {c.n:,} jobs, {c.threads} threads, calls of {c.chunk:,}, ", end="")
        print(f"{c.loops} loops, batch {c.batch}; {c.reps} alternating runs of {', '.join(systems)}", flush=True)
        if PEER_BEST in self.runners:
            print(f"  {PEER_BEST}: {settings_text(PEER_BEST_SETTINGS)}", flush=True)
        self.results.update(self.alternate(dict.fromkeys(systems), c.n, c.reps))

    def processes(self) -> None:
        """``sharded-queue worker --processes P`` draining a backlog: throughput and CPU per message.

        The workers are the CLI's real processes; their rate and CPU are read from
        outside while the backlog shrinks from 90% to 10% (start-up and the tail
        excluded): the backlog from Redis, CPU from ``/proc`` for the worker
        processes and for redis-server.
        """
        c = self.config
        n = c.processes_n
        print(
            f"\n[processes] sharded-queue worker --loops {c.loops} --processes P --burst, draining {n:,} jobs "
            f"({c.threads} threads, batch {c.batch}); {c.processes_reps} alternating runs",
            flush=True,
        )
        runs: dict[int, list[dict[str, float]]] = {p: [] for p in c.processes}
        for rep in range(c.processes_reps):
            for count in c.processes:
                run = self.drain_with_cli(n, count)
                runs[count].append(run)
                print(
                    f"  run {rep + 1}/{c.processes_reps} {count} process{'es' if count > 1 else ''}: "
                    f"{run['rate']:>10,.0f}/s; CPU us/msg: workers {run['worker_us']:.2f}, redis-server "
                    f"{run['server_us']:.2f}; cores busy: workers {run['worker_cores']:.2f} "
                    f"(busiest {run['busiest_worker_cores']:.2f}), redis-server {run['server_cores']:.2f}, "
                    f"the whole machine {run['machine_cores']:.2f}",
                    flush=True,
                )
        out: dict[str, Any] = {}
        for count, values in runs.items():
            row = {key: statistics.median(run[key] for run in values) for key in values[0]}  # rate included
            row |= summary([run["rate"] for run in values]) | {"values": [run["rate"] for run in values]}
            row["limit"] = limit_of(row, count)
            out[str(count)] = row
            print(f"  {count} process{'es' if count > 1 else ''}: limited by {row['limit']}", flush=True)
        self.results["processes"] = {"n": n, "loops": c.loops, "runs": out}

    def drain_with_cli(self, n: int, count: int) -> dict[str, float]:
        """Register ``n`` jobs, drain them with the CLI's ``count`` worker processes; rate and CPU."""
        import redis

        from sharded_queue import settings
        from sharded_queue.core import Tube
        from sharded_queue.storage import Keys

        c = self.config
        self.server.flush()
        self.runners[LIB].call({"op": "fill", "n": n, "threads": c.threads, "chunk": c.chunk})
        tubes = [Keys("sq").tube(Tube("bench:job", str(t), settings.default_order)) for t in range(c.threads)]
        client = redis.Redis(port=self.server.port, socket_timeout=30)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_", "PYTHONPATH"))}
        env |= {"QUEUE_WORKER_BATCH_SIZE": str(c.batch)}
        command = [sys.executable, "-m", "sharded_queue", "worker", "benchmarks.lib_runner:BenchHandler"]
        command += ["--url", self.server.url, "--loops", str(c.loops), "--processes", str(count), "--burst"]
        log = open(self.logs / f"cli-worker-{count}.{int(time.time() * 1000)}.log", "w")  # noqa: SIM115
        worker = subprocess.Popen([*command, "--log-level", "WARNING"], cwd=ROOT, env=env, stderr=log, stdout=log)
        # time, backlog, CPU per worker pid, redis-server's CPU, the machine's busy CPU
        samples: list[tuple[float, int, dict[int, float], float, float]] = []
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                pipe = client.pipeline(transaction=False)
                for tube in tubes:
                    pipe.llen(tube)
                backlog = sum(pipe.execute())
                cpu: dict[int, float] = {}
                for pid in process_tree(worker.pid):
                    with contextlib.suppress(OSError):
                        cpu[pid] = cpu_seconds(pid)
                samples.append((time.perf_counter(), backlog, cpu, self.server.cpu(), machine_busy()))
                if backlog == 0 or worker.poll() is not None:
                    break
                time.sleep(0.05)
            code = worker.wait(60)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            log.close()
            client.close()
        if samples[-1][1] or code:
            raise RunnerError(f"{count} CLI worker processes left {samples[-1][1]} jobs, exit code {code}")
        start = next(s for s in samples if s[1] <= 0.9 * n)
        end = next(s for s in samples if s[1] <= 0.1 * n)
        done, seconds = start[1] - end[1], end[0] - start[0]
        if done <= 0 or seconds <= 0:
            raise RunnerError(f"too few samples to time the drain: {samples}")
        used = {pid: end[2][pid] - start[2].get(pid, 0.0) for pid in end[2]}
        server = end[3] - start[3]
        return {
            "rate": done / seconds,
            "worker_us": sum(used.values()) / done * 1e6,
            "server_us": server / done * 1e6,
            "worker_cores": sum(used.values()) / seconds,
            "busiest_worker_cores": max(used.values()) / seconds,
            "server_cores": server / seconds,
            "machine_cores": (end[4] - start[4]) / seconds,
            "samples": len(samples),
        }

    def cluster(self) -> None:
        """Register and process throughput of the library on a 3-node Redis Cluster and on one Redis."""
        c = self.config
        print(
            f"\n[cluster] {c.cluster_n:,} jobs, {c.threads} threads, {c.loops} loops, batch {c.batch}: "
            f"{CLUSTER} and {SINGLE} taking turns, {c.cluster_reps} runs",
            flush=True,
        )
        with BenchCluster() as cluster:
            self.runners[CLUSTER] = lib_runner(self.logs, cluster.url, name=CLUSTER)
            self.runners[SINGLE] = lib_runner(self.logs, self.server.url, name=SINGLE)
            try:
                results = self.alternate({CLUSTER: cluster, SINGLE: None}, c.cluster_n, c.cluster_reps)
            finally:
                for name in (CLUSTER, SINGLE):
                    self.runners.pop(name).close()
        self.results["cluster"] = results | {"n": c.cluster_n}

    def peer_settings(self) -> None:
        """The peer's process throughput over a grid of its settings (``--only peer_settings``):
        how `PEER_BEST_SETTINGS` was chosen. Register has no setting to tune."""
        c = self.config
        names = list(PEER_GRID)
        grid = [dict(zip(names, values, strict=True)) for values in itertools.product(*PEER_GRID.values())]
        print(
            f"\n[peer_settings] the peer's process throughput, {c.peer_settings_n:,} jobs, {c.loops} loops, "
            f"batch {c.batch}, {len(grid)} settings x {c.peer_settings_reps} runs",
            flush=True,
        )
        runner = self.runners[PEER_DEFAULTS]
        rates: list[list[float]] = [[] for _ in grid]
        for _ in range(c.peer_settings_reps):
            for rate, settings in zip(rates, grid, strict=True):
                self.server.flush()
                runner.call({"op": "fill", "n": c.peer_settings_n, "threads": c.threads, "chunk": c.chunk})
                drained = runner.call(
                    {"op": "drain", "n": c.peer_settings_n, "threads": c.threads, "loops": c.loops}
                    | {"batch": c.batch, "peer": settings}
                )
                rate.append(c.peer_settings_n / drained["seconds"])
        ranked = sorted(zip(grid, rates, strict=True), key=lambda item: -statistics.median(item[1]))
        for settings, values in ranked:
            print(f"  {settings_text(settings):55s} {statistics.median(values):>10,.0f}/s", flush=True)
        self.results["peer_settings"] = [
            {"settings": settings, "median": statistics.median(values), "values": values} for settings, values in ranked
        ]

    def profile(self) -> None:
        """py-spy profiles of the register and process paths of the library and of the bare ceiling
        (``--only profile``).

        A profiled runner of its own does only that workload, ``2 reps + 1`` times
        on the throughput sizes (an unprofiled one registers what it drains), so
        each profile holds one path; `benchmarks.stacks` folds it into functions,
        with each one's share of the samples and its time per message.
        """
        from .stacks import summarise

        c = self.config
        if not Path(sys.executable).with_name("py-spy").exists():
            raise SystemExit("the profile suite needs py-spy in this virtualenv: pip install py-spy")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        calls = 2 * c.reps + 1  # more samples; the first call warms up: connections, scripts
        print(f"\n[profile] py-spy at {PROFILE_RATE} Hz: {calls} x register, then {calls} x process", flush=True)
        out: dict[str, Any] = {}
        fill = {"op": "fill", "n": c.n, "threads": c.threads, "chunk": c.chunk}
        drain = {"op": "drain", "n": c.n, "threads": c.threads, "loops": c.loops, "batch": c.batch}
        for system, make in ((LIB, lib_runner), (BARE, bare_runner)):
            for workload in ("register", "process"):
                path = RESULTS / f"profile-{system.split()[0]}-{workload}-{stamp}.txt"
                runner = make(self.logs, self.server.url, path, name=f"{system} profiled")
                try:
                    for _ in range(calls):
                        self.server.flush()
                        if workload == "register":
                            runner.call(fill)
                        else:
                            self.runners[system].call(fill)
                            runner.call(drain)
                finally:
                    runner.close()
                # the runner's other thread reads its commands; make_jobs builds the input before the clock starts
                top = summarise(path, exclude=("threading.py", "make_jobs"), rate=PROFILE_RATE, messages=c.n * calls)
                out[f"{system}, {workload}"] = top
                print(
                    f"  {system}, {workload}: {top['samples']:,} samples, {top['us_per_message']:.2f} us per message, "
                    f"in {path.relative_to(ROOT)}",
                    flush=True,
                )
                for row in top["top"][:12]:
                    print(f"    {row['inclusive']:5.0%} {row['self']:5.0%}  {row['function']}", flush=True)
        self.results["profile"] = out

    def latency(self) -> None:
        """Idle latency, ``register`` returning -> ``perform`` starting, worker and producer in two processes."""
        c = self.config
        print("\n[latency] one idle worker loop, default settings; producer in another process", flush=True)
        scenarios = {
            "warm": (c.warm_samples, c.warm_gap, "loop still bound to the thread, waiting between empty polls"),
            "cold": (
                c.cold_samples,
                c.cold_gap,
                "loop released the thread (idle > 16 x 0.1 s), waiting on the coordinator",
            ),
        }
        out: dict[str, Any] = {}
        for name, (samples, gap, meaning) in scenarios.items():
            if samples == 0:
                continue
            self.server.flush()
            worker = lib_runner(self.logs, self.server.url)
            try:
                worker.call({"op": "latency_start", "threads": 1, "samples": samples})
                produced = self.runners[LIB].call(
                    {"op": "latency_produce", "threads": 1, "samples": samples, "gap": list(gap)}
                )
                starts = worker.call({"op": "latency_collect", "timeout": samples * gap[1] + 60})["starts"]
            finally:
                worker.close()
            ms = [(starts[k] - produced["returned"][k]) * 1000 for k in produced["returned"]]
            out[name] = {
                "p50_ms": percentile(ms, 50),
                "p90_ms": percentile(ms, 90),
                "p99_ms": percentile(ms, 99),
                "max_ms": max(ms),
                "samples": len(ms),
                "gap_s": list(gap),
                "meaning": meaning,
                "values_ms": ms,
            }
            print(
                f"  {name:5s} p50 {out[name]['p50_ms']:7.2f} ms  p99 {out[name]['p99_ms']:7.2f} ms  "
                f"max {out[name]['max_ms']:7.2f} ms  ({len(ms)} registrations, {meaning})",
                flush=True,
            )
        self.results["latency"] = out

    def scaling(self) -> None:
        """Process throughput of the library (and the bare ceiling) against loops and batch size."""
        c = self.config
        systems = [s for s in (LIB, BARE) if s in self.runners]
        print(f"\n[scaling] process throughput, {c.threads} threads; {', '.join(systems)} taking turns", flush=True)
        by_loops: dict[str, dict[int, float]] = {s: {} for s in systems}
        by_batch: dict[str, dict[int, float]] = {s: {} for s in systems}
        for loops in c.scale_loops:
            for system in systems:
                _, drained = self.fill_and_drain(system, c.scaling_n, loops, c.batch)
                by_loops[system][loops] = c.scaling_n / drained["seconds"]
            print(f"  loops {loops:3d} batch {c.batch:4d}  " + _row(by_loops, loops), flush=True)
        for batch in c.scale_batches:
            n = c.scaling_batch1_n if batch == 1 else c.scaling_n
            for system in systems:
                _, drained = self.fill_and_drain(system, n, c.loops, batch)
                by_batch[system][batch] = n / drained["seconds"]
            print(f"  loops {c.loops:3d} batch {batch:4d}  " + _row(by_batch, batch), flush=True)
        self.results["scaling"] = {
            "n": c.scaling_n,
            "n_batch_1": c.scaling_batch1_n,
            "by_loops": {s: {str(k): v for k, v in d.items()} for s, d in by_loops.items()},
            "by_batch": {s: {str(k): v for k, v in d.items()} for s, d in by_batch.items()},
        }

    def rss(self) -> None:
        """RSS of a fresh worker process (8 loops, batch 128) draining ``rss_n`` messages."""
        c = self.config
        print(f"\n[rss] a fresh worker process draining {c.rss_n:,} messages", flush=True)
        self.server.flush()
        filled = self.runners[LIB].call({"op": "fill", "n": c.rss_n, "threads": c.threads, "chunk": c.chunk})
        used = self.server.info("memory")["used_memory"]
        worker = lib_runner(self.logs, self.server.url)
        try:
            drained = worker.call(
                {"op": "drain", "n": c.rss_n, "threads": c.threads, "loops": c.loops, "batch": c.batch}
                | {"rss_every": c.rss_every, "timeout": 600}
            )
        finally:
            worker.close()
        if drained["performed"] != c.rss_n or drained["left"] != 0:
            raise RunnerError(f"rss drain incomplete: {drained['performed']} performed, {drained['left']} left")
        samples = drained["rss"]
        first = next((rss for count, rss in samples if count >= c.rss_n // 10), samples[0][1])
        last = samples[-1][1]
        self.results["rss"] = {
            "messages": c.rss_n,
            "register_per_s": c.rss_n / filled["seconds"],
            "process_per_s": c.rss_n / drained["seconds"],
            "redis_used_memory": used,
            "rss_at_10pct": first,
            "rss_at_end": last,
            "growth_10_to_100pct": last - first,
            "maxrss": drained["maxrss"],
            "samples": samples,
        }
        mib = 1024 * 1024
        print(
            f"  RSS at 10%: {first / mib:.1f} MiB, at 100%: {last / mib:.1f} MiB "
            f"(growth {(last - first) / mib:+.2f} MiB), peak {drained['maxrss'] / mib:.1f} MiB; "
            f"drained at {c.rss_n / drained['seconds']:,.0f}/s",
            flush=True,
        )


def _row(table: dict[str, dict[int, float]], key: int) -> str:
    cells = [f"{system} {values[key]:>10,.0f}/s" for system, values in table.items()]
    if len(table) == 2:
        lib, bare = (values[key] for values in table.values())
        cells.append(f"library/bare {lib / bare:5.0%}")
    return "   ".join(cells)


# --- report --------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    from importlib.metadata import version

    import hiredis
    import msgspec
    import redis

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    return {
        "library": f"sharded-queue {version('sharded-queue')} at {commit.stdout.strip() or 'unknown commit'}",
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis-py": redis.__version__,
        "hiredis": hiredis.__version__,
        "msgspec": msgspec.__version__,
    }


TARGETS = {
    "register vs peer at its best": ">= 3x",
    "process vs peer at its best": ">= 3x",
    "register vs bare register": ">= 50%",
    "process vs bare process": ">= 70%",
    "idle latency p50": "< 5 ms",
    "worker RSS while draining": "flat",
}


def verdicts(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target of issues 6 and 14 with its measured value and whether it is met."""
    out: dict[str, dict[str, Any]] = {}
    for workload in ("register", "process"):
        paired = results.get(workload, {}).get("paired_ratios", {})
        if PEER_BEST in paired:
            ratio = paired[PEER_BEST]
            out[f"{workload} vs peer at its best"] = {"value": f"{ratio:.2f}x", "met": ratio >= 3}
        if BARE in paired:
            ratio = paired[BARE]
            wanted = 0.5 if workload == "register" else 0.7
            out[f"{workload} vs bare {workload}"] = {"value": f"{ratio:.0%}", "met": ratio >= wanted}
    if "warm" in results.get("latency", {}):
        p50 = results["latency"]["warm"]["p50_ms"]
        out["idle latency p50"] = {"value": f"{p50:.2f} ms", "met": p50 < 5}
    if "rss" in results:
        growth = results["rss"]["growth_10_to_100pct"]
        # flat: less than 4 MiB over 90% of the drain, i.e. < 5 bytes per message at 1M
        out["worker RSS while draining"] = {"value": f"{growth / 2**20:+.2f} MiB", "met": growth < 4 * 2**20}
    return out


def settings_text(settings: dict[str, Any]) -> str:
    """``name=value, ...`` of some settings."""
    return ", ".join(
        f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}" for name, value in settings.items()
    )


def limit_of(row: dict[str, float], processes: int) -> str:
    """What bounds a drain by ``processes`` worker processes, from the CPU they, redis-server and the machine used."""
    cores = os.cpu_count() or 1
    busy = row["machine_cores"]
    others = busy - row["worker_cores"] - row["server_cores"]
    per_message = row["worker_us"] + row["server_us"]
    bound = cores / per_message * 1e6
    ceiling = (
        f"at {row['worker_us']:.2f} + {row['server_us']:.2f} us of CPU per message (workers + redis-server), "
        f"{cores} cores allow {bound:,.0f}/s: this is {row['rate'] / bound:.0%} of it"
    )
    if row["busiest_worker_cores"] >= 0.9:
        return (
            f"the worker process's one core (its event loop runs on one thread: {row['busiest_worker_cores']:.2f} "
            f"cores busy); {ceiling}"
        )
    if row["server_cores"] >= 0.9:
        return f"redis-server's one thread ({row['server_cores']:.2f} cores busy); {ceiling}"
    if busy >= 0.8 * cores:
        return (
            f"the machine's CPU, {busy:.2f} of {cores} cores busy (workers {row['worker_cores']:.2f}, redis-server "
            f"{row['server_cores']:.2f}, everything else {others:.2f}), the rest lost while {processes + 1} busy "
            f"processes take turns on {cores} cores; {ceiling}"
        )
    return f"no CPU ({busy:.2f} of {cores} cores busy): round trips and waits; {ceiling}"


def _range(row: dict[str, Any], scale: str = "{:,.0f}") -> str:
    return f"{scale.format(row['median'])} ({scale.format(row['min'])}-{scale.format(row['max'])})"


def render(report: dict[str, Any]) -> str:
    """The result tables as Markdown (also what the README's Performance section quotes)."""
    r = report["results"]
    cfg = report["config"]
    lines: list[str] = []
    rows: list[str] = []
    if "register" in r:
        systems = [s for s in r["register"] if s != "paired_ratios"]
        for system in systems:
            reg, proc = r["register"][system], r["process"][system]
            ratio = "-"
            if system != LIB:
                a, b = r["register"]["paired_ratios"][system], r["process"]["paired_ratios"][system]
                ratio = f"{a:.0%} / {b:.0%}" if system == BARE else f"{a:.2f}x / {b:.2f}x"
            label = {
                LIB: f"**library**, defaults; {cfg['loops']} loops in one process",
                PEER_BEST: f"{PEER_BEST}: {settings_text(PEER_BEST_SETTINGS)}",
                PEER_DEFAULTS: f"{PEER_DEFAULTS}: empty_limit=16, empty_pause=0.1, acquire_delay=1",
                BARE: f"{BARE}: route, msgspec, RPUSH per tube / one Lua call per batch",
            }.get(system, system)
            cpu = (
                f"{reg['cpu_us_per_msg']:.2f} + {reg['server_cpu_us_per_msg']:.2f} / "
                f"{proc['cpu_us_per_msg']:.2f} + {proc['server_cpu_us_per_msg']:.2f}"
            )
            rows.append(f"| {label} | {_range(reg)} | {_range(proc)} | {ratio} | {cpu} |")
    if "processes" in r:
        runs = r["processes"]["runs"]
        one = runs.get("1")
        for count, row in runs.items():
            ratio = f"{row['median'] / one['median']:.2f}x of 1 process" if one and count != "1" else "-"
            cpu = f"- / {row['worker_us']:.2f} + {row['server_us']:.2f}"
            rows.append(
                f"| library, `sharded-queue worker --processes {count} --loops {r['processes']['loops']}` "
                f"| - | {_range(row)} | {ratio} | {cpu} |"
            )
    if "cluster" in r:
        cl = r["cluster"]
        for system in (CLUSTER, SINGLE):
            reg, proc = cl["register"][system], cl["process"][system]
            ratio = "-"
            if system == CLUSTER:
                a, b = cl["register"]["paired_ratios"][SINGLE], cl["process"]["paired_ratios"][SINGLE]
                ratio = f"{a:.2f}x / {b:.2f}x of one Redis"
            cpu = (
                f"{reg['cpu_us_per_msg']:.2f} + {reg['server_cpu_us_per_msg']:.2f} / "
                f"{proc['cpu_us_per_msg']:.2f} + {proc['server_cpu_us_per_msg']:.2f}"
            )
            rows.append(f"| {system} | {_range(reg)} | {_range(proc)} | {ratio} | {cpu} |")
    if rows:
        lines += [
            "| messages per second, median (min-max) | register | process | library / this: register / process "
            "| CPU us per message, client + redis-server: register / process |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
        notes = []
        if "register" in r:
            notes.append(
                f"Throughput rows: {cfg['n']:,} jobs over {cfg['threads']} threads, registered in calls of "
                f"{cfg['chunk']:,}, drained by {cfg['loops']} loops with batch {cfg['batch']}; "
                f"{cfg['reps']} runs, the systems taking turns. A ratio is the median of the per-run ratios."
            )
            if BARE in r["register"] and PEER_BEST in r["register"]:
                # what the 3x targets ask of the library, against what the floor of the work reaches
                a, b = (paired(r[w][BARE]["values"], r[w][PEER_BEST]["values"]) for w in ("register", "process"))
                notes.append(f"The bare ceiling itself is {a:.2f}x / {b:.2f}x the peer at its best.")
        if "processes" in r:
            p = r["processes"]
            notes.append(
                f"Process rows: the CLI's worker processes drain {p['n']:,} jobs; rate and CPU (workers + "
                f"redis-server) while the backlog goes from 90% to 10%; {cfg['processes_reps']} runs. "
                + " ".join(
                    f"{count} process{'es' if count != '1' else ''}: limited by {row['limit']}."
                    for count, row in p["runs"].items()
                )
            )
        if "cluster" in r:
            notes.append(
                f"Cluster rows: {r['cluster']['n']:,} jobs, the same workload; redis-server CPU is the three "
                f"nodes' together; {cfg['cluster_reps']} runs, the two taking turns."
            )
        lines += [" ".join(notes), ""] if notes else []
    v = report["verdicts"]
    if v:
        lines += ["| target | wanted | measured | met |", "|---|---|---|---|"]
        for name, row in v.items():
            lines.append(f"| {name} | {TARGETS[name]} | {row['value']} | {'yes' if row['met'] else 'NO'} |")
        lines.append("")
    if "peer_settings" in r:
        lines += ["The peer's process throughput over its settings (median msg/s):", ""]
        lines += ["| settings | process |", "|---|---|"]
        lines += [f"| {settings_text(row['settings'])} | {row['median']:,.0f} |" for row in r["peer_settings"]]
        lines.append("")
    if "latency" in r:
        lines += ["Idle latency, `register` returning -> `perform` starting (default settings):", ""]
        lines += ["| worker state | p50 | p90 | p99 | max | registrations |", "|---|---|---|---|---|---|"]
        for name, row in r["latency"].items():
            lines.append(
                f"| {name}: {row['meaning']} | {row['p50_ms']:.2f} ms | {row['p90_ms']:.2f} ms | "
                f"{row['p99_ms']:.2f} ms | {row['max_ms']:.2f} ms | {row['samples']} |"
            )
        lines.append("")
    if "scaling" in r:
        s = r["scaling"]
        for key, label in (("by_loops", "loops (batch 128)"), ("by_batch", "batch size (8 loops)")):
            systems = list(s[key])
            points = list(next(iter(s[key].values())))
            lines += [
                f"Process throughput against {label}, messages per second:",
                "",
                f"| {label.split()[0]} | " + " | ".join(systems) + " | library / bare |",
                "|---" * (len(systems) + 2) + "|",
            ]
            for point in points:
                cells = [f"{s[key][system][point]:,.0f}" for system in systems]
                ratio = s[key][LIB][point] / s[key][BARE][point] if BARE in s[key] else float("nan")
                lines.append(f"| {point} | " + " | ".join(cells) + f" | {ratio:.0%} |")
            lines.append("")
    if "rss" in r:
        m = r["rss"]
        mib = 2**20
        lines += [
            f"Worker RSS draining {m['messages']:,} messages (8 loops, batch 128): "
            f"{m['rss_at_10pct'] / mib:.1f} MiB at 10%, {m['rss_at_end'] / mib:.1f} MiB at 100% "
            f"({m['growth_10_to_100pct'] / mib:+.2f} MiB), peak {m['maxrss'] / mib:.1f} MiB; "
            f"registered at {m['register_per_s']:,.0f}/s, drained at {m['process_per_s']:,.0f}/s.",
            "",
        ]
    if "profile" in r:
        for path, top in r["profile"].items():
            lines += [
                f"Profile, {path} (py-spy, {top['samples']:,} samples of the runner's main thread, "
                f"{top['us_per_message']:.2f} us per message, {top['file']}): each function's share of the samples "
                "and time per message, inclusive and self:",
                "",
                "| function | inclusive | self | us per message (inclusive) |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| `{row['function']}` | {row['inclusive']:.0%} | {row['self']:.0%} | {row['us']:.3f} |"
                for row in top["top"]
            ]
            lines += [
                "",
                "Most samples on top: "
                + ", ".join(f"`{row['function']}` {row['self']:.0%}" for row in top["top_self"][:8])
                + ".",
                "",
            ]
    m = report["machine"]
    lines.append(
        f"{m['library']}. Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['os']}; "
        f"Python {m['python']}; "
        f"redis-server {report['redis_server']}; redis-py {m['redis-py']}, hiredis {m['hiredis']}, "
        f"msgspec {m['msgspec']} (the peer runs on the same redis-py and hiredis). Load average "
        f"{report['load_average']['before'][0]:.2f} before, {report['load_average']['after'][0]:.2f} after."
    )
    return "\n".join(lines) + "\n"


# --- entry point ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run of every suite")
    parser.add_argument("--reps", type=int, help="alternating runs per system (default 5, quick 3)")
    parser.add_argument("-n", type=int, help="jobs per throughput run (default 100,000)")
    parser.add_argument(
        "--only",
        help=f"comma-separated suites to run: {','.join(SUITES)} (default: all), "
        f"or {', '.join(OPTIONAL_SUITES)} (the peer's settings grid), profile (py-spy of register and process)",
    )
    parser.add_argument("--no-peer", action="store_true", help="skip the peer (no virtualenv is created)")
    parser.add_argument("--out", type=Path, help="JSON report path (default benchmarks/results/queue-<time>.json)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record the library runner with py-spy (pip install py-spy) into benchmarks/results/profile-*.svg",
    )
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> Config:
    base = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    if args.reps:
        changes["reps"] = args.reps
    if args.n:
        changes["n"] = args.n
    if args.only:
        suites = tuple(s.strip() for s in args.only.split(",") if s.strip())
        known = (*SUITES, *OPTIONAL_SUITES)
        unknown = set(suites) - set(known)
        if unknown:
            raise SystemExit(f"unknown suites {sorted(unknown)}; choose from {', '.join(known)}")
        changes["suites"] = suites
    if args.no_peer:
        changes["peer"] = False
    return Config(**{**asdict(base), **changes})


@contextlib.contextmanager
def runners(bench: Bench, peer_python: Path | None, profile: Path | None) -> Iterator[None]:
    url = bench.server.url
    try:
        bench.runners[LIB] = lib_runner(bench.logs, url, profile)
        if peer_python is not None:
            bench.runners[PEER_BEST] = peer_runner(bench.logs, url, peer_python, PEER_BEST, PEER_BEST_SETTINGS)
            bench.runners[PEER_DEFAULTS] = peer_runner(bench.logs, url, peer_python, PEER_DEFAULTS, {})
        bench.runners[BARE] = bare_runner(bench.logs, url)
        yield
    finally:
        for runner in bench.runners.values():
            runner.close()


def main(argv: list[str] | None = None) -> int:
    """Run the queue benchmarks; print the tables; write JSON and Markdown to benchmarks/results/."""
    args = parse_args(argv)
    config = config_from(args)
    RESULTS.mkdir(exist_ok=True)
    logs = RESULTS / "logs"
    logs.mkdir(exist_ok=True)
    started = time.time()
    load_before = os.getloadavg()
    peer_python = None
    if config.peer and {"throughput", "peer_settings"} & set(config.suites):
        with open(logs / "peer-venv.log", "a") as log:
            peer_python = ensure_peer_venv(log)
    with BenchServer() as server:
        print(f"redis-server {server.version()} on 127.0.0.1:{server.port} (started for this run)")
        bench = Bench(config, server, logs)
        profile = None
        if args.profile:
            if not Path(sys.executable).with_name("py-spy").exists():
                raise SystemExit("--profile needs py-spy in this virtualenv: pip install py-spy")
            profile = RESULTS / f"profile-library-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}.svg"
            print(f"profiling the library runner into {profile.relative_to(ROOT)}")
        with runners(bench, peer_python, profile):
            for suite in config.suites:
                getattr(bench, suite)()
        redis_version = server.version()
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "command": "python -m benchmarks" + (" --quick" if args.quick else ""),
        "config": asdict(config),
        "machine": machine(),
        "redis_server": redis_version,
        "peer": PEER_SPEC if peer_python else None,
        "results": bench.results,
        # Other work on this machine skews every number: the load average says how much.
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }
    report["verdicts"] = verdicts(bench.results)
    markdown = render(report)
    print("\n" + markdown)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    out = args.out or RESULTS / f"queue-{stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(report, indent=1))
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=1))
    (RESULTS / "latest.md").write_text(markdown)
    print(f"results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} (and results/latest.md)")
    print(f"took {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
