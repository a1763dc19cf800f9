"""The popular Redis job queues against this library: arq, saq, rq, dramatiq and taskiq.

``python -m benchmarks.bench_peers [--quick] [--only settings]`` (``make bench`` runs it
too). It starts its own ``redis-server`` on a free loopback port (never the one on
6379), installs each peer on first use into its own virtualenv,
``benchmarks/.peers/<name>-venv``, with the exact versions of `PEERS`, and runs each
system in its own long-lived subprocess (``benchmarks/peers/<name>_runner.py``; this
library: `benchmarks.lib_runner`), timed inside that process.

The workload: ``n`` no-op jobs (the workload's `Job`: ``job_id, user_id, kind``) are
enqueued with each system's fastest documented way (timed: enqueue), then one
worker process drains the backlog (timed: drain). Each peer performs one job per
call of its function; this library performs them in batches of 1 and of 128, with
8 loops over 8 threads. The systems take turns on the same server (each run on an
empty server), ``reps`` times; the table shows medians with min-max, and CPU per
job: the runner process's own (``time.process_time``, all its threads) plus
redis-server's (``INFO cpu``), both taken around the timed call.

With ``--only settings`` it runs each peer over a few of its documented throughput
settings instead (`GRID`): how `Peer.settings` were chosen.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .bench_queue import (
    RESULTS,
    ROOT,
    BenchServer,
    Runner,
    lib_runner,
    machine,
    paired,
    settings_text,
    summary,
)

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".peers"
RUNNERS = HERE / "peers"
LIB_128, LIB_1 = "library, batch 128", "library, batch 1"
REDIS_PY, HIREDIS = "redis==8.2.0", "hiredis==3.5.0"


@dataclass(frozen=True)
class Peer:
    """A peer queue: what to install, and how it runs at its best for this workload.

    ``settings`` go to its worker (keyword arguments of its worker class, or of its
    receiver), ``job`` to each enqueued job, ``broker`` to its broker; ``producers``
    is how many enqueue calls a producer without a bulk method keeps in flight,
    ``chunk`` the jobs per bulk call of one that has it. ``fresh``: a new runner
    process for every run, ended after it (its worker does not stop promptly in-process).
    """

    name: str
    requirements: tuple[str, ...]
    best: str  # what the settings are, and where they come from, in a few words
    settings: dict[str, Any] = field(default_factory=dict)
    job: dict[str, Any] = field(default_factory=dict)
    broker: dict[str, Any] = field(default_factory=dict)
    producers: int = 1
    chunk: int = 1
    fresh: bool = False

    @property
    def version(self) -> str:
        return self.requirements[0].replace("==", " ")

    @property
    def venv(self) -> Path:
        return VENVS / f"{self.name}-venv"


# Each peer at its documented best for throughput on this workload (a backlog of no-op
# jobs, one worker process); the README of each runner says how its calls are made, and
# docs/peers.md where each setting is documented and what --only settings measured.
PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in (
        Peer(
            "arq",
            ("arq==0.28.0", "redis==5.3.1", HIREDIS),  # arq 0.28 requires redis-py < 6
            "max_jobs=100, poll_delay=0.01, keep_result=0; enqueue_job, 20 in flight",
            settings={"max_jobs": 100, "poll_delay": 0.01, "keep_result": 0},
            producers=20,
        ),
        Peer(
            "saq",
            # saq 0.26.4 imports typing_extensions without declaring it
            ("saq==0.26.4", REDIS_PY, HIREDIS, "typing_extensions==4.16.0"),
            "concurrency=10 (default); enqueue, 20 in flight",
            settings={"concurrency": 10},
            producers=20,
        ),
        Peer(
            "rq",
            ("rq==3.0.0", REDIS_PY, HIREDIS),
            "SimpleWorker (no fork per job), burst; enqueue_many, 1,000 a pipeline",
            chunk=1_000,
            fresh=True,
        ),
        Peer(
            "dramatiq",
            ("dramatiq==2.2.1", REDIS_PY, HIREDIS),
            "RedisBroker, worker_threads=8 (default), queue_prefetch=256; send",
            settings={"worker_threads": 8, "queue_prefetch": 256},
        ),
        Peer(
            "taskiq",
            ("taskiq==0.13.0", "taskiq-redis==1.2.4", REDIS_PY, HIREDIS),
            "RedisStreamBroker (acks), max_async_tasks=10; kiq, 20 in flight",
            settings={"max_async_tasks": 10},
            producers=20,
            fresh=True,
        ),
    )
}

# --only settings: each peer's documented throughput knobs, its defaults first.
GRID: dict[str, list[dict[str, Any]]] = {
    "arq": [
        {},
        {"poll_delay": 0.01},
        {"max_jobs": 100, "poll_delay": 0.01},
        {"max_jobs": 100, "poll_delay": 0.01, "keep_result": 0},
        {"max_jobs": 100, "poll_delay": 0, "keep_result": 0},
        {"max_jobs": 1000, "poll_delay": 0.01, "keep_result": 0},
    ],
    # saq at concurrency 200 fails: each waiting BLMOVE holds a connection, redis-py's pool has 100
    "saq": [{}, {"concurrency": 8}, {"concurrency": 50}, {"concurrency": 100}],
    "rq": [{}, {"job": {"result_ttl": 0}}],
    "dramatiq": [
        {"worker_threads": 1},
        {},
        {"worker_threads": 32},
        {"worker_threads": 8, "queue_prefetch": 256},
        {"worker_threads": 8, "queue_prefetch": 1000},
        {"worker_threads": 32, "queue_prefetch": 1000},
    ],
    "taskiq": [
        {"max_async_tasks": 10},
        {"max_async_tasks": 100},
        {"max_async_tasks": 1000},
        {"max_async_tasks": 100, "max_prefetch": 100},
        {"max_async_tasks": 100, "broker": {"xread_count": 1000}},
    ],
}


def _sizes(fast: int, batched: int, slow: int) -> dict[str, int]:
    """Jobs per run: ``batched`` for this library at batch 128, ``slow`` for rq, ``fast`` for the rest."""
    return {LIB_128: batched, LIB_1: fast} | dict.fromkeys(PEERS, fast) | {"rq": slow}


@dataclass(frozen=True)
class Config:
    """Sizes of one run: jobs per run for each system (a rate is per job; the slow ones get fewer,
    this library at batch 128 more, so that no run is over in a few milliseconds)."""

    n: dict[str, int] = field(default_factory=lambda: _sizes(20_000, 100_000, 5_000))
    reps: int = 3
    threads: int = 8
    loops: int = 8
    grid_n: int = 5_000
    grid_reps: int = 2
    suites: tuple[str, ...] = ("peers",)

    def jobs(self, system: str) -> int:
        return self.n[system]


FULL = Config()
QUICK = Config(n=_sizes(2_000, 20_000, 500), reps=1, grid_n=1_000, grid_reps=1)


# --- virtualenvs -------------------------------------------------------------------


def ensure_venv(peer: Peer, log: TextIO) -> Path:
    """The peer's virtualenv, created and installed on first use (and again when its pins change)."""
    python = peer.venv / "bin" / "python"
    stamp = peer.venv / ".installed"
    wanted = " ".join(peer.requirements)
    if python.exists() and stamp.exists() and stamp.read_text().split("\n", 1)[0] == wanted:
        return python
    print(f"installing {wanted} into {peer.venv.relative_to(ROOT)} ...", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(peer.venv)], check=True, stdout=log, stderr=log)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--quiet", *peer.requirements], check=True, stdout=log, stderr=log)
    frozen = subprocess.run([*pip, "freeze"], check=True, capture_output=True, text=True).stdout
    stamp.write_text(wanted + "\n" + frozen)
    return python


def installed(peer: Peer) -> list[str]:
    """What pip resolved into the peer's virtualenv (``pip freeze`` at install time)."""
    stamp = peer.venv / ".installed"
    return stamp.read_text().split("\n")[1:] if stamp.exists() else []


# --- runs ------------------------------------------------------------------------------


@dataclass
class System:
    """One row: a runner and the commands it gets."""

    name: str
    start: Any  # () -> Runner
    fill: dict[str, Any]
    drain: dict[str, Any]
    fresh: bool = False
    runner: Runner | None = None

    def get(self) -> Runner:
        if self.runner is None:
            self.runner = self.start()
        return self.runner

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None


def library(name: str, batch: int, config: Config, logs: Path, url: str) -> System:
    threads = {"threads": config.threads}
    return System(
        name,
        lambda: lib_runner(logs, url, name=name),
        {"op": "fill", "chunk": 1_000} | threads,
        {"op": "drain", "batch": batch, "loops": config.loops} | threads,
    )


def peer_system(peer: Peer, python: Path, logs: Path, url: str, tuned: dict[str, Any] | None = None) -> System:
    """The peer as `PEERS` sets it up, or with the worker settings (and ``job``/``broker`` options) of ``tuned``."""
    options = dict(tuned if tuned is not None else peer.settings)
    job = options.pop("job", peer.job if tuned is None else {})
    broker = options.pop("broker", peer.broker if tuned is None else {})
    argv = [str(python), "-I", str(RUNNERS / f"{peer.name}_runner.py"), url]
    shared = {"broker": broker}
    return System(
        peer.name,
        lambda: Runner(peer.name, argv, logs, HERE),
        {"op": "fill", "producers": peer.producers, "chunk": peer.chunk, "job": job} | shared,
        {"op": "drain", "settings": options} | shared,
        fresh=peer.fresh,
    )


def run_once(system: System, server: BenchServer, n: int) -> dict[str, float]:
    """Enqueue ``n`` jobs, then drain them, on an empty server: rates and CPU per job."""
    server.flush()
    runner = system.get()
    try:
        before = server.cpu()
        filled = runner.call(system.fill | {"n": n})
        middle = server.cpu()
        drained = runner.call(system.drain | {"n": n, "timeout": 300})
        after = server.cpu()
    finally:
        if system.fresh:
            system.close()
    if drained["performed"] < n or drained["left"] != 0 or drained["errors"]:
        raise RuntimeError(f"{system.name}: drain incomplete: {drained}")
    return {
        "enqueue": n / filled["seconds"],
        "drain": n / drained["seconds"],
        "enqueue_cpu_us": filled["cpu"] / n * 1e6,
        "enqueue_server_us": (middle - before) / n * 1e6,
        "drain_cpu_us": drained["cpu"] / n * 1e6,
        "drain_server_us": (after - middle) / n * 1e6,
    }


def alternate(systems: list[System], server: BenchServer, config: Config) -> dict[str, Any]:
    """Each system in turn, ``reps`` times, after a small warm-up run each; per system the runs."""
    for system in systems:
        run_once(system, server, max(100, config.jobs(system.name) // 20))
    runs: dict[str, list[dict[str, float]]] = {system.name: [] for system in systems}
    width = max(len(system.name) for system in systems)
    for rep in range(config.reps):
        for system in systems:
            run = run_once(system, server, config.jobs(system.name))
            runs[system.name].append(run)
            print(
                f"  run {rep + 1}/{config.reps} {system.name:{width}s}  enqueue {run['enqueue']:>9,.0f}/s  "
                f"drain {run['drain']:>9,.0f}/s   CPU us/job, process + redis: enqueue "
                f"{run['enqueue_cpu_us']:6.1f} + {run['enqueue_server_us']:5.1f}, drain "
                f"{run['drain_cpu_us']:6.1f} + {run['drain_server_us']:5.1f}",
                flush=True,
            )
    return runs


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Per system: median (min-max) rates, median CPU per job, and this library's per-run drain
    ratios to it (batch 128 and batch 1 against each peer, the median of the runs' ratios)."""
    out: dict[str, Any] = {}
    for system, values in runs.items():
        row: dict[str, Any] = {key: summary([run[key] for run in values]) for key in ("enqueue", "drain")}
        for key in ("enqueue_cpu_us", "enqueue_server_us", "drain_cpu_us", "drain_server_us"):
            row[key] = statistics.median(run[key] for run in values)
        row["runs"] = values
        for lib in (LIB_128, LIB_1):
            if lib in runs and system not in (LIB_128, LIB_1):
                ours, theirs = ([run["drain"] for run in runs[s]] for s in (lib, system))
                row[f"{lib} / this"] = paired(ours, theirs)
        out[system] = row
    return out


def _range(row: dict[str, float]) -> str:
    return f"{row['median']:,.0f} ({row['min']:,.0f}-{row['max']:,.0f})"


def render(report: dict[str, Any]) -> str:
    """The peers' table as Markdown, with the settings of each row and what the run was on."""
    rows = report["results"].get("peers", {})
    settings = report.get("settings", {})
    lines: list[str] = []
    if rows:
        lines += [
            "| system (1 worker process) | settings | jobs | enqueue, jobs/s | drain, jobs/s "
            "| CPU us/job, enqueue: process + redis | CPU us/job, drain: worker + redis "
            "| library drain / this: batch 128, batch 1 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for system, row in rows.items():
            ratio = "-"
            if f"{LIB_128} / this" in row:
                ratio = f"{row[f'{LIB_128} / this']:.1f}x, {row[f'{LIB_1} / this']:.2f}x"
            lines.append(
                f"| {report['labels'].get(system, system)} | {settings.get(system, '')} | "
                f"{report['jobs'][system]:,} | {_range(row['enqueue'])} | {_range(row['drain'])} | "
                f"{row['enqueue_cpu_us']:.1f} + {row['enqueue_server_us']:.1f} | "
                f"{row['drain_cpu_us']:.1f} + {row['drain_server_us']:.1f} | {ratio} |"
            )
        lines.append("")
    grid = report["results"].get("settings", {})
    if grid:
        lines += [
            "| peer | settings | jobs | drain, jobs/s | CPU us/job, drain: worker + redis |",
            "|---|---|---|---|---|",
        ]
        for name, entries in grid.items():
            for e in entries:
                lines.append(
                    f"| {name} | {e['settings']} | {e['n']:,} | {e['drain']:,.0f} | "
                    f"{e['drain_cpu_us']:.1f} + {e['drain_server_us']:.1f} |"
                )
        lines.append("")
    m = report["machine"]
    load = report["load_average"]
    lines.append(
        f"{m['library']}. Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['os']}; "
        f"Python {m['python']}; redis-server {report['redis_server']}. "
        f"{report['reps']} runs, the systems taking turns. "
        f"Load average {load['before'][0]:.2f} before, {load['after'][0]:.2f} after."
    )
    return "\n".join(lines) + "\n"


def describe(text: dict[str, Any] | str) -> str:
    return text if isinstance(text, str) else settings_text(text) or "defaults"


# --- entry point ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one run: a smoke run (about a minute)")
    parser.add_argument("--reps", type=int, help="runs per system (default 3, quick 1)")
    parser.add_argument("--only", choices=("peers", "settings"), help="settings: each peer over its settings grid")
    parser.add_argument("--peers", help=f"comma-separated peers to run (default all: {','.join(PEERS)})")
    parser.add_argument("--out", type=Path, help="JSON report path (default benchmarks/results/peers-<time>.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the peers' benchmark; print the table; write JSON and Markdown to benchmarks/results/."""
    args = parse_args(argv)
    config = QUICK if args.quick else FULL
    if args.reps:
        config = Config(**{**asdict(config), "reps": args.reps})
    if args.only:
        config = Config(**{**asdict(config), "suites": (args.only,)})
    names = [name.strip() for name in (args.peers or ",".join(PEERS)).split(",") if name.strip()]
    unknown = set(names) - set(PEERS)
    if unknown:
        raise SystemExit(f"unknown peers {sorted(unknown)}; choose from {', '.join(PEERS)}")
    RESULTS.mkdir(exist_ok=True)
    logs = RESULTS / "logs"
    logs.mkdir(exist_ok=True)
    started, load_before = time.time(), os.getloadavg()
    with open(logs / "peers-venvs.log", "a") as log:
        pythons = {name: ensure_venv(PEERS[name], log) for name in names}
    results: dict[str, Any] = {}
    with BenchServer() as server:
        print(f"redis-server {server.version()} on 127.0.0.1:{server.port} (started for this run)", flush=True)
        if "peers" in config.suites:
            systems = [library(LIB_128, 128, config, logs, server.url), library(LIB_1, 1, config, logs, server.url)]
            systems += [peer_system(PEERS[name], pythons[name], logs, server.url) for name in names]
            print(
                f"\n[peers] a backlog of no-op jobs, enqueued then drained by one worker process; "
                f"{config.reps} runs, systems taking turns",
                flush=True,
            )
            try:
                results["peers"] = summarise(alternate(systems, server, config))
            finally:
                for system in systems:
                    system.close()
        if "settings" in config.suites:
            results["settings"] = grid(names, pythons, server, config, logs)
        redis_version = server.version()
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "command": "python -m benchmarks.bench_peers" + (" --quick" if args.quick else ""),
        "config": asdict(config),
        "reps": config.reps,
        "jobs": {LIB_128: config.jobs(LIB_128), LIB_1: config.jobs(LIB_1)} | {n: config.jobs(n) for n in names},
        "labels": {
            LIB_128: "**this library**, batch 128",
            LIB_1: "**this library**, batch 1",
        }
        | {name: PEERS[name].version for name in names},
        "settings": {
            LIB_128: f"defaults, {config.loops} loops over {config.threads} threads; register, 1,000 a call",
            LIB_1: f"worker_batch_size=1, {config.loops} loops over {config.threads} threads; register, 1,000 a call",
        }
        | {name: PEERS[name].best for name in names},
        "installed": {name: installed(PEERS[name]) for name in names},
        "machine": machine(),
        "redis_server": redis_version,
        "results": results,
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }
    markdown = render(report)
    print("\n" + markdown)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    out = args.out or RESULTS / f"peers-{stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(report, indent=1))
    (RESULTS / "peers-latest.md").write_text(markdown)
    print(f"results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} (and results/peers-latest.md)")
    print(f"took {report['seconds']:.0f} s")
    return 0


def grid(
    names: list[str], pythons: dict[str, Path], server: BenchServer, config: Config, logs: Path
) -> dict[str, list[dict[str, Any]]]:
    """Each peer's drain over its settings grid: ``grid_n`` jobs (rq: a quarter), the settings
    taking turns ``grid_reps`` times; the median rate and CPU per job of each."""
    print(
        f"\n[settings] each peer's drain over its documented throughput settings, {config.grid_n:,} jobs, "
        f"{config.grid_reps} runs each, the settings taking turns",
        flush=True,
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        peer = PEERS[name]
        n = config.grid_n // 4 if name == "rq" else config.grid_n
        systems = [peer_system(peer, pythons[name], logs, server.url, tuned) for tuned in GRID[name]]
        runs: list[list[dict[str, float]]] = [[] for _ in systems]
        try:
            for system in systems:
                run_once(system, server, max(100, n // 10))  # warm-up
            for _ in range(config.grid_reps):
                for system, done in zip(systems, runs, strict=True):
                    done.append(run_once(system, server, n))
        finally:
            for system in systems:
                system.close()
        out[name] = []
        for tuned, done in zip(GRID[name], runs, strict=True):
            row = {
                "settings": describe(tuned),
                "n": n,
                "drain": statistics.median(run["drain"] for run in done),
                "drain_cpu_us": statistics.median(run["drain_cpu_us"] for run in done),
                "drain_server_us": statistics.median(run["drain_server_us"] for run in done),
                "runs": done,
            }
            out[name].append(row)
            print(
                f"  {name:9s} {row['settings']:60s} drain {row['drain']:>9,.0f}/s  CPU us/job "
                f"{row['drain_cpu_us']:6.1f} + {row['drain_server_us']:5.1f}",
                flush=True,
            )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
