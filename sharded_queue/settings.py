"""Typed, validated settings, read from ``QUEUE_*`` environment variables.

`settings` is the module-level instance every `Queue` and `Worker` uses unless
given their own. It is mutable (``settings.worker_batch_size = 64``) and every
assignment is validated like the environment is: a bad value raises
`SettingsError` naming the variable, at start-up rather than mid-run.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import SettingsError

ENV_PREFIX = "QUEUE_"
NOT_SETTINGS = frozenset({"QUEUE_DASHBOARD_TOKEN"})  # QUEUE_* variables read elsewhere (the dashboard), never here
REGISTER_CHUNK_MAX = 2**20 - 1  # a registration's stamp keeps its count in 20 bits (push.lua)


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: type
    minimum: float | None = None
    exclusive: bool = False  # minimum itself not allowed
    optional: bool = False
    maximum: float | None = None

    def parse(self, raw: Any, where: str) -> Any:
        if raw is None and self.optional:
            return None
        value = self._convert(raw, where)
        low = self.minimum
        if low is not None and isinstance(value, int | float) and (value < low or (self.exclusive and value == low)):
            op = ">" if self.exclusive else ">="
            raise SettingsError(f"{where}={raw!r}: must be {op} {low:g}")
        high = self.maximum
        if high is not None and isinstance(value, int | float) and value > high:
            raise SettingsError(f"{where}={raw!r}: must be <= {high:g}")
        return value

    def _convert(self, raw: Any, where: str) -> Any:
        if self.kind is bool:
            return _boolean(raw, where)
        if self.kind is str:
            if not isinstance(raw, str | int) or isinstance(raw, bool):
                raise SettingsError(f"{where}={raw!r}: expected a string")
            return str(raw)
        if isinstance(raw, bool):
            raise SettingsError(f"{where}={raw!r}: expected a number, not a boolean")
        try:
            if self.kind is int:
                if isinstance(raw, float) and not raw.is_integer():
                    raise ValueError
                return int(raw)
            value = float(raw)
        except (TypeError, ValueError):
            name = "an integer" if self.kind is int else "a number"
            raise SettingsError(f"{where}={raw!r}: expected {name}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise SettingsError(f"{where}={raw!r}: expected a finite number")
        return value


_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off", ""})


def _boolean(raw: Any, where: str) -> bool:
    """A bool, 0 or 1, or (any case) 1/true/yes/on or 0/false/no/off/empty."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    raise SettingsError(f"{where}={raw!r}: expected a boolean (1/0, true/false, yes/no, on/off)")


_RULES: dict[str, _Rule] = {
    "coordinator_delay": _Rule(float, 0),
    "default_order": _Rule(str),
    "default_thread": _Rule(str),
    "worker_batch_size": _Rule(int, 1),
    "worker_empty_limit": _Rule(int, 1),
    "worker_empty_pause": _Rule(float, 0),
    "worker_hold_limit": _Rule(int, 0),
    "worker_batch_linger": _Rule(float, 0),
    "storage_url": _Rule(str, optional=True),
    "key_prefix": _Rule(str),
    "lease_ttl": _Rule(float, 0, exclusive=True),
    "retry_attempts": _Rule(int, 1),
    "retry_backoff": _Rule(float, 0),
    "retry_backoff_max": _Rule(float, 0),
    "storage_timeout": _Rule(float, 0, exclusive=True),
    "register_chunk": _Rule(int, 1, maximum=REGISTER_CHUNK_MAX),
    "perform_timeout": _Rule(float, 0, exclusive=True),
    "register_replicas": _Rule(int, 0),
    "otel": _Rule(bool),
}


@dataclass(repr=False)
class Settings:
    """Queue and worker settings; every field has a ``QUEUE_<FIELD>`` variable.

    Attributes:
        coordinator_delay: Seconds an idle loop waits before asking the coordinator
            again when no thread is ready (a registration wakes it earlier).
        default_order: Order of a `Route` that names none.
        default_thread: Thread of a `Route` that names none.
        worker_batch_size: Most messages passed to one ``perform`` call
            (a handler's own ``batch_size`` wins).
        worker_empty_limit: Empty polls of a bound thread before the loop releases it.
        worker_empty_pause: Seconds between two empty polls of a bound thread.
        worker_hold_limit: Batches a loop performs on one thread before it lets
            the thread go if another thread waits for a loop (0: never).
        worker_batch_linger: Seconds a loop whose thread holds fewer than a batch
            waits for more before it performs what there is (woken as soon as the
            batch fills); 0 (the default) performs at once. A handler's own
            ``batch_linger`` wins.
        storage_url: ``redis://``, ``rediss://``, ``redis+cluster://`` or
            ``redis+sentinel://`` URL; unset means the embedded in-process fakeredis.
        key_prefix: Prefix of every Redis key; two prefixes never see each other.
        lease_ttl: Seconds a thread lease lives without a heartbeat. A crashed
            worker's threads are taken over after at most this plus
            ``coordinator_delay``.
        retry_attempts: Performs of a batch (and of an isolated request) before
            its failing requests are dead-lettered.
        retry_backoff: First retry pause in seconds; doubles each attempt, with jitter.
        retry_backoff_max: Longest retry pause in seconds.
        storage_timeout: Seconds to wait for a Redis answer before giving up.
        register_chunk: Most requests one `Queue.register` writes in one atomic
            step; a larger call is written in chunks of this size, in order, so
            that one call never blocks Redis for long (each chunk is all or
            nothing; ``StorageError.stored`` says how many were stored).
        perform_timeout: Seconds a ``perform`` call may run before it is cancelled
            and counts as a failed attempt (``TimeoutError``); a handler's own
            ``timeout`` wins. A ``perform`` that blocks the event loop cannot be
            cancelled.
        register_replicas: Replicas that must have a registration's writes before
            `Queue.register` returns (Redis ``WAIT``, up to ``storage_timeout``); 0
            (the default) returns once the primary has them, which a failover can
            lose. Reads then wait a second longer than ``storage_timeout``, for
            ``WAIT``'s answer.
        otel: OpenTelemetry spans of `Queue.register` and of each ``perform``
            call, and the register span's W3C traceparent in the envelopes, for a
            `Queue` and `Worker` given no ``telemetry=`` (``sharded_queue.otel``;
            needs the ``otel`` extra).
    """

    coordinator_delay: float = 1.0
    default_order: str = "0"
    default_thread: str = "0"
    worker_batch_size: int = 128
    worker_empty_limit: int = 16
    worker_empty_pause: float = 0.1
    worker_hold_limit: int = 16
    worker_batch_linger: float = 0.0
    storage_url: str | None = None
    key_prefix: str = "sq"
    lease_ttl: float = 10.0
    retry_attempts: int = 3
    retry_backoff: float = 0.1
    retry_backoff_max: float = 5.0
    storage_timeout: float = 10.0
    register_chunk: int = 10_000
    perform_timeout: float = 300.0
    register_replicas: int = 0
    otel: bool = False
    _ready: bool = field(default=False, init=False, compare=False)

    def __post_init__(self) -> None:
        for name, rule in _RULES.items():
            object.__setattr__(self, name, rule.parse(getattr(self, name), f"Settings.{name}"))
        self._ready = True

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _RULES and getattr(self, "_ready", False):
            value = _RULES[name].parse(value, f"settings.{name}")
        elif name not in _RULES and name != "_ready":
            raise AttributeError(f"Settings has no setting {name!r}")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={redact_url(value) if name == 'storage_url' else value!r}"
            for name, value in self.as_dict().items()
        )
        return f"Settings({shown})"

    def as_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (credentials included: do not log it)."""
        return {name: getattr(self, name) for name in _RULES}

    def copy(self, **changes: Any) -> Settings:
        """A validated copy with some settings changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``QUEUE_*`` variables; unset ones keep their defaults.

        Raises:
            SettingsError: a variable has a bad value; the message names it.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for key, raw in environ.items():
            if not key.startswith(ENV_PREFIX) or key in NOT_SETTINGS:
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if name not in _RULES:
                warnings.warn(f"{key} is not a sharded_queue setting; ignored", stacklevel=2)
                continue
            raw = raw.strip()
            if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
                raw = raw[1:-1]  # QUEUE_DEFAULT_ORDER='0' as written in shell docs
            values[name] = _RULES[name].parse(raw, key)
        return cls(**values)


_URL_PASSWORD = re.compile(r"(?<=://)([^:/@]*)(:[^@/]*)?@")
_QUERY_PASSWORD = re.compile(r"(?<=[?&])((?:sentinel_)?password=)[^&#]*")


def redact_url(url: str | None) -> str | None:
    """``url`` with its passwords (``user:pass@``, ``?sentinel_password=``) replaced by ``***``, safe to log."""
    if url is None:
        return None
    url = _QUERY_PASSWORD.sub(lambda m: f"{m.group(1)}***", url)
    return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{':***' if m.group(2) else ''}@", url)


def _from_env_or_exit() -> Settings:
    """`Settings.from_env`; run as the ``sharded-queue`` command, a bad variable is one line and
    exit 2 (a usage error), as the command's other usage errors are, not a traceback at import."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        orig = getattr(sys, "orig_argv", [])
        cli = os.path.basename(sys.argv[0]) == "sharded-queue" or (
            "-m" in orig and orig.index("-m") + 1 < len(orig) and orig[orig.index("-m") + 1] == "sharded_queue"
        )
        if not cli:
            raise
        print(f"sharded-queue: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


settings = _from_env_or_exit()
"""The process-wide settings, read from the environment at import."""
