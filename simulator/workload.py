"""One handler's share of a scenario: its real `Handler`, arrivals, service and requests.

The handler class, its ``route()``, ``orders``, ``batch_size`` and
``retry_attempts`` are the real ones: a notebook can take a production handler
and simulate it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sharded_queue import Handler
from sharded_queue.handler import declared_orders, handler_name

from .arrivals import Arrivals
from .checks import ScenarioError, check_count
from .display import duration, per_second
from .requests import Generated, Keyed, Requests
from .routing import check_bare_keys
from .service import Service


@dataclass(frozen=True)
class Workload:
    """One handler's share of a scenario.

    Args:
        handler: The real `Handler` subclass; its ``route()`` places every request.
        arrivals: When requests are registered (`Poisson`, `Deterministic`,
            `OnOff`, `Replay`, `Backlog`, `Registered`), or join their tube:
            `Deferred` (``defer=``), `Recurring` (``recurrent=``).
        service: How long ``perform`` takes for a batch (`Service`).
        requests: What the requests are (`Keyed` with a key distribution such as
            `Zipf`, or `Generated`); default: every request is the key 0.
    """

    handler: type[Handler]
    arrivals: Arrivals
    service: Service
    requests: Requests = field(default_factory=Keyed)

    def __post_init__(self) -> None:
        try:
            name = handler_name(self.handler)
            declared_orders(self.handler)
        except (TypeError, ValueError) as exc:
            raise ScenarioError(f"Workload handler: {exc}") from exc
        if not hasattr(self.arrivals, "chunks"):
            raise ScenarioError(f"Workload arrivals of {name} must be an arrival process, got {self.arrivals!r}")
        if not isinstance(self.service, Service):
            raise ScenarioError(f"Workload service of {name} must be a Service, got {self.service!r}")
        if not isinstance(self.requests, Keyed | Generated):
            raise ScenarioError(f"Workload requests of {name} must be Keyed or Generated, got {self.requests!r}")
        if isinstance(self.requests, Keyed) and self.requests.make is None:
            check_bare_keys(self.handler, self.requests)
        for attribute in ("batch_size", "retry_attempts"):
            value = getattr(self.handler, attribute)
            if value is not None:
                check_count(f"{self.handler.__qualname__}.{attribute}", value)

    @property
    def name(self) -> str:
        """The handler's stored name."""
        return handler_name(self.handler)


def perform_text(workload: Workload) -> str:
    """``perform`` of a workload in words: ``4 ms + 0.2 ms/msg (LogNormal cv 0.5), 2 ms of it CPU``."""
    service = workload.service
    parts = []
    if service.per_batch or not service.per_message:
        parts.append(duration(service.per_batch))
    if service.per_message:
        parts.append(f"{duration(service.per_message)}/msg")
    text = " + ".join(parts)
    noise = type(service.noise).__name__
    if noise != "Fixed":
        cv = getattr(service.noise, "cv", None)
        text += f" ({noise}" + (f" cv {cv:g})" if cv is not None else ")")
    cpu = []
    if service.cpu_per_batch:
        cpu.append(duration(service.cpu_per_batch))
    if service.cpu_per_message:
        cpu.append(f"{duration(service.cpu_per_message)}/msg")
    if cpu:
        text += f", CPU {' + '.join(cpu)}"
    if service.timer:
        text += ", on a timer"
    if service.failure_rate:
        text += f", {service.failure_rate:.1%} fail"
    return text


def arrivals_text(workload: Workload) -> str:
    """The arrival process in words: ``Poisson 3,000/s``, ``backlog of 4,000``."""
    arrivals = workload.arrivals
    name = type(arrivals).__name__
    mean = arrivals.mean_rate()
    if name == "Replay":
        times = getattr(arrivals, "times", ())
        if len(times) and float(times[-1]) == float(times[0]):
            return f"backlog of {len(times):,}"
        return f"replay of {len(times):,}" + (f" ({per_second(mean)})" if mean else "")
    return f"{name} {per_second(mean)}" if mean else name


def requests_text(workload: Workload) -> str:
    """The requests in words: ``Zipf(10000 keys) -> make_note``, or ``generated``."""
    requests: Any = workload.requests
    keys = getattr(requests, "keys", None)
    if keys is None:
        return "generated"
    made = getattr(requests, "make", None)
    return f"{type(keys).__name__}({getattr(keys, 'n', '?')} keys)" + (
        f" -> {getattr(made, '__qualname__', 'make')}" if made is not None else ""
    )
