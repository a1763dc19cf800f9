"""From a storage URL to a redis-py asyncio client, and back to a URL that is safe to log.

``None`` is the process-wide embedded fakeredis; ``redis://``, ``rediss://`` and
``unix://`` a Redis/Valkey server; ``redis+cluster://`` and ``rediss+cluster://``
a Redis Cluster. TLS and AUTH come from the URL. The client retries a command
after a connection error or a timeout (`CLIENT_RETRIES`, with backoff), which is
why a registration's stamp is kept for `stamp_window` seconds.
"""

from __future__ import annotations

import math
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from ..settings import Settings, redact_url
from .transport import InitializedCluster, fast_path, hiredis_packing

CLIENT_RETRIES = 3  # retries of a command after a connection error or timeout (redis-py's, and lanes')
CLIENT_BACKOFF_CAP = 0.5  # seconds
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

_EMBEDDED_SERVER: Any = None


def connect(url: str | None, settings: Settings, fast: bool | None = None) -> Any:
    """A redis-py asyncio client for ``url``; ``None`` is the process-wide embedded fakeredis.

    ``fast`` packs commands with hiredis (`transport.hiredis_packing`); by default when
    `transport.fast_path` holds.
    """
    if url is None:
        import fakeredis

        global _EMBEDDED_SERVER
        if _EMBEDDED_SERVER is None:
            _EMBEDDED_SERVER = fakeredis.FakeServer()
        return fakeredis.FakeAsyncRedis(server=_EMBEDDED_SERVER)
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"storage URL {redact_url(url)!r} has no scheme (redis://, rediss://, redis+cluster://)")
    timeout = settings.storage_timeout
    retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=CLIENT_BACKOFF_CAP), CLIENT_RETRIES)
    if scheme in CLUSTER_SCHEMES:
        return InitializedCluster.from_url(
            f"{CLUSTER_SCHEMES[scheme]}://{rest}", socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry
        )
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"storage URL {redact_url(url)!r}: unknown scheme {scheme!r}")
    client = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry)
    if fast if fast is not None else fast_path():
        client.connection_pool.connection_class = hiredis_packing(client.connection_pool.connection_class)
    return client


def stamp_window(settings: Settings) -> int:
    """Seconds a registration's stamp is kept: longer than redis-py may go on retrying it."""
    return math.ceil((CLIENT_RETRIES + 1) * (settings.storage_timeout + CLIENT_BACKOFF_CAP)) + 5


def embedded_default(client: Any) -> bool:
    """Whether ``client`` is on the process-wide embedded fakeredis (`connect` with no URL)."""
    pool = getattr(client, "connection_pool", None)
    server = getattr(pool, "connection_kwargs", {}).get("server")
    return server is not None and server is _EMBEDDED_SERVER


def describe_client(client: Any) -> str:
    """Where a redis-py (or fakeredis) client points, as a URL without password."""
    if isinstance(client, RedisCluster):
        kwargs = getattr(client, "connection_kwargs", {})
        scheme = "rediss+cluster" if _is_ssl(kwargs.get("connection_class")) else "redis+cluster"
        nodes = ",".join(client.nodes_manager.startup_nodes) or "?"
        return f"{scheme}://{_user(kwargs)}{nodes}"
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {})
    if "server" in kwargs:
        return "embedded fakeredis"
    if "path" in kwargs:
        return f"unix://{_user(kwargs)}{kwargs['path']}?db={kwargs.get('db', 0)}"
    scheme = "rediss" if _is_ssl(getattr(pool, "connection_class", None)) else "redis"
    host, port, db = kwargs.get("host", "localhost"), kwargs.get("port", 6379), kwargs.get("db", 0)
    return f"{scheme}://{_user(kwargs)}{host}:{port}/{db}"


def _user(kwargs: dict[str, Any]) -> str:
    user, password = kwargs.get("username"), kwargs.get("password")
    if password:
        return f"{user or ''}:***@"
    return f"{user}@" if user else ""


def _is_ssl(connection_class: Any) -> bool:
    return isinstance(connection_class, type) and issubclass(connection_class, aioredis.SSLConnection)
