"""From a storage URL to a redis-py asyncio client, and back to a URL that is safe to log.

``None`` is the process-wide embedded fakeredis; ``redis://``, ``rediss://`` and
``unix://`` a Redis/Valkey server; ``redis+cluster://`` and ``rediss+cluster://``
a Redis Cluster; ``redis+sentinel://`` and ``rediss+sentinel://`` the primary a
set of Sentinels names (`sentinel_parts`), found again after a failover. TLS and
AUTH come from the URL. The client retries a command after a connection error or
a timeout (`CLIENT_RETRIES`, with backoff), which is why a registration's stamp
is kept for `stamp_window` seconds.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlencode

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff

from ..settings import Settings, redact_url
from .transport import InitializedCluster, fast_path, hiredis_packing

CLIENT_RETRIES = 3  # retries of a command after a connection error or timeout (redis-py's, and lanes')
CLIENT_BACKOFF_CAP = 0.5  # seconds
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SENTINEL_SCHEMES = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}
SENTINEL_PORT = 26379
REPLICA_WAIT_GRACE = 1.0
"""Seconds a read waits beyond ``QUEUE_STORAGE_TIMEOUT`` when registrations wait for replicas:
WAIT's own answer comes after that timeout (a little after: Redis checks it 10 times a second)."""

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
        raise ValueError(
            f"storage URL {redact_url(url)!r} has no scheme (redis://, rediss://, redis+cluster://, redis+sentinel://)"
        )
    retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=CLIENT_BACKOFF_CAP), CLIENT_RETRIES)
    # a read waits longer than a registration's WAIT (QUEUE_STORAGE_TIMEOUT), for its answer to arrive
    read = settings.storage_timeout + (REPLICA_WAIT_GRACE if settings.register_replicas else 0.0)
    options: dict[str, Any] = {
        "socket_timeout": read,
        "socket_connect_timeout": settings.storage_timeout,
        "retry": retry,
    }
    if scheme in CLUSTER_SCHEMES:
        return InitializedCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}", **options)
    if scheme in SENTINEL_SCHEMES:
        client = _sentinel_client(sentinel_parts(url), options)
    elif scheme in ("redis", "rediss", "unix"):
        client = aioredis.Redis.from_url(url, **options)
    else:
        raise ValueError(f"storage URL {redact_url(url)!r}: unknown scheme {scheme!r}")
    if fast if fast is not None else fast_path():
        client.connection_pool.connection_class = hiredis_packing(client.connection_pool.connection_class)
    return client


class SentinelParts(NamedTuple):
    """A ``redis+sentinel://`` URL taken apart (`sentinel_parts`).

    Attributes:
        tls: ``rediss+sentinel://``: TLS to the Sentinels and to the primary.
        sentinels: The Sentinels' ``(host, port)``, in the URL's order.
        service: The name the Sentinels monitor the primary under.
        kwargs: Connection arguments of the primary (credentials, db, the query's TLS options).
        sentinel_kwargs: Connection arguments of the Sentinels (``sentinel_username``,
            ``sentinel_password`` of the query, the TLS options).
    """

    tls: bool
    sentinels: list[tuple[str, int]]
    service: str
    kwargs: dict[str, Any]
    sentinel_kwargs: dict[str, Any]


def sentinel_parts(url: str) -> SentinelParts:
    """Take apart ``redis+sentinel://[user:pass@]host[:port][,host[:port]...]/service[/db][?query]``.

    The credentials are the primary's (and its replicas'); Sentinels that require
    AUTH take ``?sentinel_password=...`` (and ``sentinel_username``). Other query
    options are redis-py's (``ssl_ca_certs``, ``ssl_cert_reqs``, ...), for the
    primary and, with TLS, for the Sentinels too. A port left out is 26379.

    Raises:
        ValueError: the URL names no Sentinel, no service, or a bad port or db.
    """
    scheme, _, rest = url.partition("://")
    shown = redact_url(url)
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    service, _, db = path.partition("/")
    if not hosts or not service:
        raise ValueError(
            f"storage URL {shown!r}: expected {scheme}://[user:pass@]host:port[,host:port...]/service[/db]"
        )
    try:
        sentinels = [_address(host) for host in hosts.split(",")]
        db_number = int(db.strip("/") or 0)
    except ValueError:
        raise ValueError(f"storage URL {shown!r}: a Sentinel's port or the db is not a number") from None
    options = parse_qsl(query, keep_blank_values=True)
    own = {name: value for name, value in options if name in ("sentinel_username", "sentinel_password")}
    rest_query = urlencode([(name, value) for name, value in options if name not in own])
    base = SENTINEL_SCHEMES[scheme]
    # redis-py's own parsing of the rest (credentials, db, TLS options); a pool connects nothing
    kwargs = dict(
        aioredis.ConnectionPool.from_url(f"{base}://{userinfo}{at}localhost/{db_number}?{rest_query}").connection_kwargs
    )
    for name in ("host", "port", "connection_class"):
        kwargs.pop(name, None)
    tls = base == "rediss"
    sentinel_kwargs: dict[str, Any] = {name.removeprefix("sentinel_"): value for name, value in own.items()}
    if tls:
        sentinel_kwargs.update(ssl=True, **{name: value for name, value in kwargs.items() if name.startswith("ssl_")})
    return SentinelParts(tls, sentinels, service, kwargs, sentinel_kwargs)


def _address(host: str) -> tuple[str, int]:
    """``host[:port]`` (``[v6]:port`` too) as ``(host, port)``."""
    if host.startswith("["):
        name, _, port = host[1:].partition("]")
        return name, int(port.lstrip(":") or SENTINEL_PORT)
    name, colon, port = host.rpartition(":")
    return (name, int(port)) if colon else (host, SENTINEL_PORT)


_SENTINEL_URLS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
"""What `describe_client` shows of each client `connect` made for a ``redis+sentinel://`` URL."""

_SENTINEL_CLIENTS: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
"""The clients of the Sentinels of each client `connect` made for a ``redis+sentinel://`` URL (`close_client`)."""


def _sentinel_client(parts: SentinelParts, options: dict[str, Any]) -> Any:
    """A client of the primary the Sentinels name: each new connection asks them where it is."""
    timeouts = {name: value for name, value in options.items() if name.startswith("socket_")}
    sentinel = Sentinel(parts.sentinels, sentinel_kwargs={**timeouts, **parts.sentinel_kwargs})
    # Port 0: a connection that connected without asking the Sentinels would fail, not reach a Redis on 6379
    client = sentinel.master_for(parts.service, **{"ssl": parts.tls, **options, **parts.kwargs, "port": 0})
    hosts = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in parts.sentinels)
    scheme = "rediss+sentinel" if parts.tls else "redis+sentinel"
    _SENTINEL_CLIENTS[client] = list(sentinel.sentinels)
    _SENTINEL_URLS[client] = f"{scheme}://{_user(parts.kwargs)}{hosts}/{parts.service}/{parts.kwargs.get('db', 0)}"
    return client


async def close_client(client: Any) -> None:
    """Close a client's connections, and those to the Sentinels of a ``redis+sentinel://`` one."""
    pool = getattr(client, "connection_pool", None)
    try:
        await client.aclose()  # raises the first error of closing a connection (one to a dead primary, say)
    finally:
        if isinstance(pool, SentinelConnectionPool):
            # The Sentinels' clients as created, not as `Sentinel.sentinels` lists them now: redis-py's
            # discover_master moves the one that answered first, and concurrent calls can drop one from it.
            sentinels = [*_SENTINEL_CLIENTS.get(client, []), *pool.sentinel_manager.sentinels]
            await asyncio.gather(*(sentinel.aclose() for sentinel in dict.fromkeys(sentinels)), return_exceptions=True)


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
    described = _SENTINEL_URLS.get(client)
    if described is not None:
        return described
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {})
    if isinstance(pool, SentinelConnectionPool):
        return f"redis+sentinel://{_user(kwargs)}?/{pool.service_name}/{kwargs.get('db', 0)}"
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
