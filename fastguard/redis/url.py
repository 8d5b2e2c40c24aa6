"""Redis clients from URLs: the one place that reads `redis://`, `rediss://`, `unix://` and `redis+cluster://`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.retry import Retry

from fastguard.redis.wire import NamedTLSConnection

__all__ = ["client_from_url"]


def client_from_url(url: str, *, timeout: float = 0.25, connect_timeout: float = 0.25,
                    **client_options: Any) -> tuple[redis.Redis | None, Callable[[], RedisCluster] | None]:
    """(a redis-py client, None) for a standalone server, or (None, a function making the RedisCluster) for a
    cluster, which connects as it is made (so it is made on first use: a gateway starts while Redis is down).

    url: redis://[user:password@]host:port/db, rediss://... (TLS: the certificate and host name are verified
         unless ssl_cert_reqs=none; ssl_ca_certs, ssl_check_hostname, ssl_certfile... as query arguments or
         keyword arguments, redis-py's names), unix:///path/to/socket?db=0,
         redis+cluster://[user:password@]host:port[,host:port...] (rediss+cluster:// with TLS),
         redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db] (Sentinel: the master of
         service_name, found again after a failover; user and password are the master's).
         valkey://, valkeys://, valkey+cluster:// and valkeys+cluster:// are the same (Valkey speaks Redis).
    server_name (rediss:// only; argument or ?server_name=): the name sent as SNI and checked in the server's
         certificate instead of the host connected to (a Redis behind a TLS router, or reached by address).
    Clients never retry inside redis-py: an unreachable Redis costs one timeout, then the limiter's own backoff
    applies. ValueError for an unknown scheme, a malformed node list or a timeout that is not positive.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout,
                               "retry": Retry(redis.backoff.NoBackoff(), 0)}
    options.update(client_options)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme.startswith("valkey"):
        scheme = "redis" + scheme[len("valkey"):]
        url = scheme + url[url.index("://"):]
    if scheme in ("redis", "rediss", "unix"):
        _server_name(url, scheme, options)
        return redis.Redis.from_url(url, **options), None
    if "server_name" in options or "server_name=" in url.split("?", 1)[-1]:
        raise ValueError("server_name applies to one TLS server (rediss://): Cluster nodes and Sentinel masters are "
                         "checked against the host names they are reached by")
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        return _sentinel_client(url, scheme == "rediss+sentinel", options), None
    if scheme in ("redis+cluster", "rediss+cluster"):
        parts = urlsplit(url)
        nodes = [ClusterNode(host, port) for host, port in _servers(parts, url, "cluster node")]
        _read_url_options(parts, url, scheme.startswith("rediss"), options)
        options.setdefault("require_full_coverage", False)
        return None, lambda: RedisCluster(startup_nodes=nodes, **options)
    raise ValueError(f"unsupported Redis URL {url!r}: use redis://, rediss://, unix:// or redis+cluster://")


def _server_name(url: str, scheme: str, options: dict[str, Any]) -> None:
    """`server_name` (argument, or ?server_name= in the URL): the TLS connections present it (SNI) and check the
    certificate against it; redis-py has no such option, so its connections are fastguard's NamedTLSConnection."""
    name = options.pop("server_name", None)
    query = dict(parse_qsl(urlsplit(url).query))
    if name is None:
        name = query.get("server_name")
    if name is None:
        return
    if scheme != "rediss":
        raise ValueError(f"server_name={name!r} needs TLS (rediss://), got {url!r}")
    if not isinstance(name, str) or not name or not hasattr(redis.connection.SSLConnection, "_wrap_socket_with_ssl"):
        raise ValueError(f"server_name must be a host name, got {name!r}" if not isinstance(name, str) or not name
                         else f"server_name needs a redis-py whose SSLConnection has _wrap_socket_with_ssl "
                              f"(installed: {redis.__version__})")
    options["connection_class"] = NamedTLSConnection
    options["server_name"] = name


def _servers(parts: Any, url: str, what: str) -> list[tuple[str, int]]:
    """The host:port list of a cluster or sentinel URL."""
    out = []
    for hostport in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, sep, port = hostport.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{what} {hostport!r} in {url!r} is not host:port")
        out.append((host.strip("[]"), int(port)))
    return out


def _read_url_options(parts: Any, url: str, tls: bool, options: dict[str, Any]) -> None:
    """Credentials, TLS and query arguments (?ssl_ca_certs=..., read as redis-py reads them) of a multi-server URL,
    into `options` (explicit keyword arguments win)."""
    if parts.username:
        options.setdefault("username", unquote(parts.username))
    if parts.password:
        options.setdefault("password", unquote(parts.password))
    if tls:
        options.setdefault("ssl", True)
    for name, value in parse_qsl(parts.query):
        parse = URL_QUERY_ARGUMENT_PARSERS.get(name, str)
        try:
            options.setdefault(name, parse(value))
        except (TypeError, ValueError):
            raise ValueError(f"invalid value for {name!r} in {url!r}") from None


def _sentinel_client(url: str, tls: bool, options: dict[str, Any]) -> redis.Redis:
    """The master of a Sentinel-monitored service, as a redis-py client whose pool asks the sentinels where the
    master is on every new connection."""
    from redis.sentinel import Sentinel

    parts = urlsplit(url)
    sentinels = _servers(parts, url, "sentinel")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"{url!r}: expected redis+sentinel://host:port[,host:port...]/service_name[/db]")
    _read_url_options(parts, url, tls, options)
    # The sentinels get the timeouts and the same TLS settings (rediss+sentinel: a sentinel asked in clear could be
    # answered by anyone on the path, naming a "master" that then receives the password); the credentials are the
    # master's (sentinels without a password are common).
    sentinel_kwargs = {k: v for k, v in options.items()
                       if k in ("socket_timeout", "socket_connect_timeout", "ssl") or k.startswith("ssl_")}
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
    db = int(path[1]) if len(path) == 2 else 0
    client = sentinel.master_for(path[0], db=db, **options)
    pool = client.connection_pool
    pool.get_master_address = _discovery(pool.get_master_address)  # both redis-py and the lean client ask here
    return client


def _discovery(ask: Any) -> Any:
    """Where the master is, as the sentinels say; any error of theirs is Redis that cannot be reached. A reply that
    is not an address (a sentinel speaking garbage, or something else on its port) raised AttributeError or
    TypeError out of redis-py, past the store's backoff, once per request."""

    def get_master_address() -> Any:
        try:
            return ask()
        except redis.RedisError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the sentinels' answers made redis-py raise
            raise redis.ConnectionError(f"Sentinel discovery failed: {type(exc).__name__}: {exc}") from exc

    return get_master_address
