"""Queue benchmarks: this library against PyPI ``sharded-queue==0.2.10`` and bare redis-py.

One command runs everything (``make bench``, i.e. ``python -m benchmarks``;
``--quick`` for a smoke run). It starts its own ``redis-server`` on a free
loopback port (never the one on 6379) and stops it at the end, installs the peer
into ``benchmarks/.peer-venv`` on first use, and runs each system in its own
long-lived subprocess (`lib_runner`, `peer_runner`, `bare`), timed inside the
subprocess. Systems take turns (A B C A B C ...) on the same server; medians
and ratios are printed and written to ``benchmarks/results/``.

Workloads (issue 6):

1. register: ``n`` small dataclass requests routed over 16 threads, in calls of 1,000;
2. process: drain that backlog with a no-op ``perform``, batch 128, 8 loops in one process;
3. the same through the peer, and 4. through bare redis-py (the ceiling);
5. idle latency: ``register`` returning -> ``perform`` starting, default settings;
6. scaling with loops and batch size, and a worker's RSS while draining 1,000,000.
"""

from __future__ import annotations

import argparse
import contextlib
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
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER_VENV = HERE / ".peer-venv"
RESULTS = HERE / "results"
PEER_SPEC = "sharded-queue==0.2.10"
LIB, PEER, BARE = "library", "peer 0.2.10", "bare redis-py"


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
    suites: tuple[str, ...] = ("throughput", "latency", "scaling", "rss")
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
)


# --- processes -----------------------------------------------------------------


class BenchServer:
    """The benchmark's own ``redis-server``: `sharded_queue.testing.RedisServer` in a temporary
    directory, started on a free loopback port (never 6379) and removed afterwards."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server not found (apt-get install redis-server)")
        self.workdir = ""
        self.server: Any = None

    @property
    def url(self) -> str:
        return str(self.server.url)

    @property
    def port(self) -> int:
        return int(self.server.port)

    def __enter__(self) -> BenchServer:
        from sharded_queue.testing import RedisServer

        self.workdir = tempfile.mkdtemp(prefix="sq-bench-redis-")
        self.server = RedisServer(Path(self.workdir))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _client(self) -> Any:
        import redis

        return redis.Redis(port=self.port, socket_timeout=30)

    def flush(self) -> None:
        """Empty the benchmark's own server between runs (never any other server)."""
        client = self._client()
        try:
            client.flushall()
        finally:
            client.close()

    def info(self, section: str) -> dict[str, Any]:
        client = self._client()
        try:
            return dict(client.info(section))
        finally:
            client.close()

    def version(self) -> str:
        return str(self.info("server")["redis_version"])


class RunnerError(RuntimeError):
    """A runner answered with an error, died or did not answer in time."""


class Runner:
    """One system's benchmark subprocess, driven by JSON lines (see `workload.serve`)."""

    def __init__(self, name: str, argv: list[str], logs: Path, cwd: Path) -> None:
        self.name = name
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
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # the peer swallows SIGTERM (it installs a handler)
                self.proc.wait()
        self._log.close()


def lib_runner(logs: Path, url: str, profile: Path | None = None) -> Runner:
    argv = [sys.executable, "-m", "benchmarks.lib_runner", url]
    if profile is not None:  # py-spy samples the runner and writes a flame graph when it quits
        argv = [str(Path(sys.executable).with_name("py-spy")), "record", "-r", "250", "-o", str(profile), "--", *argv]
    return Runner(LIB, argv, logs, ROOT)


def bare_runner(logs: Path, url: str) -> Runner:
    return Runner(BARE, [sys.executable, "-m", "benchmarks.bare", url], logs, ROOT)


def peer_runner(logs: Path, url: str, python: Path) -> Runner:
    # -I: isolated, so neither this checkout nor PYTHONPATH can shadow the peer's sharded_queue.
    return Runner(PEER, [str(python), "-I", str(HERE / "peer_runner.py"), url], logs, HERE)


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
        self, system: str, n: int, loops: int, batch: int, rss_every: int = 0
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Register ``n`` jobs (timed), then drain them (timed), on an empty server."""
        c = self.config
        runner = self.runners[system]
        self.server.flush()
        filled = runner.call({"op": "fill", "n": n, "threads": c.threads, "chunk": c.chunk})
        drained = runner.call(
            {"op": "drain", "n": n, "threads": c.threads, "loops": loops, "batch": batch, "rss_every": rss_every}
        )
        if drained["performed"] != n or drained["left"] != 0 or drained["errors"]:
            raise RunnerError(f"{system}: drain incomplete: {drained}")
        return filled, drained

    def throughput(self) -> None:
        """Register and process throughput, systems taking turns, ``reps`` times."""
        c = self.config
        systems = list(self.runners)
        print(f"\n[throughput] {c.n:,} jobs, {c.threads} threads, calls of {c.chunk:,}, ", end="")
        print(f"{c.loops} loops, batch {c.batch}; {c.reps} alternating runs of {', '.join(systems)}", flush=True)
        for system in systems:  # warm-up: imports, connections, script cache, allocator
            self.fill_and_drain(system, 2_000, c.loops, c.batch)
        rates: dict[str, dict[str, list[float]]] = {w: {s: [] for s in systems} for w in ("register", "process")}
        cpu: dict[str, dict[str, list[float]]] = {w: {s: [] for s in systems} for w in ("register", "process")}
        for rep in range(c.reps):
            for system in systems:
                filled, drained = self.fill_and_drain(system, c.n, c.loops, c.batch)
                for workload, reply in (("register", filled), ("process", drained)):
                    rates[workload][system].append(c.n / reply["seconds"])
                    cpu[workload][system].append(reply["cpu"] / c.n * 1e6)
                print(
                    f"  run {rep + 1}/{c.reps} {system:14s} register {rates['register'][system][-1]:>10,.0f}/s"
                    f"   process {rates['process'][system][-1]:>10,.0f}/s"
                    f"   client CPU {cpu['register'][system][-1]:5.2f} + {cpu['process'][system][-1]:5.2f} us/msg",
                    flush=True,
                )
        for workload in ("register", "process"):
            self.results[workload] = {
                s: summary(v) | {"values": v, "cpu_us_per_msg": statistics.median(cpu[workload][s])}
                for s, v in rates[workload].items()
            }
            # Runs next to each other share the machine's mood: the median of the
            # per-run ratios is steadier than the ratio of the medians.
            lib = rates[workload][LIB]
            self.results[workload]["paired_ratios"] = {
                other: statistics.median([a / b for a, b in zip(lib, rates[workload][other], strict=True)])
                for other in systems
                if other != LIB
            }

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
    "register vs peer": ">= 3x",
    "process vs peer": ">= 3x",
    "register vs bare": ">= 70%",
    "process vs bare": ">= 70%",
    "idle latency p50": "< 5 ms",
    "worker RSS while draining": "flat",
}


def verdicts(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target of issue 6 with its measured value and whether it is met."""
    out: dict[str, dict[str, Any]] = {}
    for workload in ("register", "process"):
        paired = results.get(workload, {}).get("paired_ratios", {})
        if PEER in paired:
            ratio = paired[PEER]
            out[f"{workload} vs peer"] = {"value": f"{ratio:.2f}x", "met": ratio >= 3}
        if BARE in paired:
            ratio = paired[BARE]
            out[f"{workload} vs bare"] = {"value": f"{ratio:.0%}", "met": ratio >= 0.7}
    if "warm" in results.get("latency", {}):
        p50 = results["latency"]["warm"]["p50_ms"]
        out["idle latency p50"] = {"value": f"{p50:.2f} ms", "met": p50 < 5}
    if "rss" in results:
        growth = results["rss"]["growth_10_to_100pct"]
        # flat: less than 4 MiB over 90% of the drain, i.e. < 5 bytes per message at 1M
        out["worker RSS while draining"] = {"value": f"{growth / 2**20:+.2f} MiB", "met": growth < 4 * 2**20}
    return out


def render(report: dict[str, Any]) -> str:
    """The result tables as Markdown (also what ``docs/performance.md`` quotes)."""
    r = report["results"]
    cfg = report["config"]
    lines: list[str] = []
    if "register" in r:
        systems = [s for s in r["register"] if s != "paired_ratios"]
        lines += [
            f"Throughput, messages per second: median of {cfg['reps']} alternating runs (min-max), "
            f"{cfg['n']:,} jobs over {cfg['threads']} threads, registered in calls of {cfg['chunk']:,}, "
            f"drained by {cfg['loops']} loops with batch {cfg['batch']}. Ratios: median of the per-run "
            "ratios (runs side by side), then the ratio of the medians.",
            "",
            "| workload | " + " | ".join(systems) + " | library / peer | library / bare |",
            "|---" * (len(systems) + 3) + "|",
        ]
        for workload in ("register", "process"):
            row = r[workload]
            paired = row["paired_ratios"]
            cells = [f"{row[s]['median']:,.0f} ({row[s]['min']:,.0f}-{row[s]['max']:,.0f})" for s in systems]
            lib = row[LIB]["median"]
            vs_peer = f"{paired[PEER]:.2f}x ({lib / row[PEER]['median']:.2f}x)" if PEER in row else "-"
            vs_bare = f"{paired[BARE]:.0%} ({lib / row[BARE]['median']:.0%})" if BARE in row else "-"
            lines.append(f"| {workload} | " + " | ".join(cells) + f" | {vs_peer} | {vs_bare} |")
        lines.append("")
        lines.append(
            "Client CPU per message (median; the benchmark process only, not redis-server): "
            + "; ".join(
                f"{w} " + ", ".join(f"{s} {r[w][s]['cpu_us_per_msg']:.2f} us" for s in systems)
                for w in ("register", "process")
            )
            + "."
        )
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
    v = report["verdicts"]
    if v:
        lines += ["| target | wanted | measured | met |", "|---|---|---|---|"]
        for name, row in v.items():
            lines.append(f"| {name} | {TARGETS[name]} | {row['value']} | {'yes' if row['met'] else 'NO'} |")
        lines.append("")
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
    parser.add_argument("--only", help="comma-separated suites to run: throughput,latency,scaling,rss (default: all)")
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
        unknown = set(suites) - set(FULL.suites)
        if unknown:
            raise SystemExit(f"unknown suites {sorted(unknown)}; choose from {', '.join(FULL.suites)}")
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
            bench.runners[PEER] = peer_runner(bench.logs, url, peer_python)
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
    if config.peer and "throughput" in config.suites:
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
