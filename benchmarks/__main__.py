"""``python -m benchmarks [--quick] ...``: the queue, peers, fault, scheduling, failover, telemetry and
controls benchmarks, then the simulator's."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from . import bench_queue

    status = bench_queue.main(argv)
    from . import bench_controls, bench_failover, bench_faults, bench_linger, bench_otel, bench_peers, bench_scheduling

    suites = (
        ("peers", bench_peers),
        ("fault", bench_faults),
        ("scheduling", bench_scheduling),
        ("failover", bench_failover),
        ("telemetry", bench_otel),
        ("controls", bench_controls),
        ("linger", bench_linger),
    )
    for title, suite in suites:
        print(f"\n=== {title} benchmarks ({suite.__name__}) ===", flush=True)
        status = suite.main(["--quick"] if "--quick" in argv else []) or status
    if importlib.util.find_spec("benchmarks.bench_simulator") is None:
        return status
    print("\n=== simulator benchmarks (benchmarks.bench_simulator) ===", flush=True)
    try:
        simulator = importlib.import_module("benchmarks.bench_simulator")
        run = getattr(simulator, "main", None)
        if run is None:
            print("benchmarks.bench_simulator has no main(); skipped")
            return status
        # It gets --quick when we did and it has that option; our other options are the queue's.
        quick = "--quick" in argv and "--quick" in inspect.getsource(simulator)
        result = run(["--quick"] if quick else [])
    except SystemExit as exc:
        result = exc.code
    except Exception:
        traceback.print_exc()
        return 1
    return status or (result if isinstance(result, int) else 0)


if __name__ == "__main__":
    raise SystemExit(main())
