"""fastguard.metrics: what the limiters and verifiers decided, in the Prometheus text format.

    pip install prometheus-client                # the `metrics` extra
    import fastguard.metrics as fm
    fm.track(limiter, "api")                    # a RateLimiter (in process, strict Redis or local-first)
    fm.track(verifier, "idp")                   # a JWTVerifier
    fm.serve(9464)                              # /metrics on 127.0.0.1:9464 (or use prometheus_client's own server)

Nothing is counted on the hot path for the metrics: the counters are the ones the core keeps anyway (per shard,
per cache), and they are read when Prometheus scrapes. Tracked objects are held weakly.

Metric names (labels in braces):

    fastguard_ratelimit_decisions_total{limiter, outcome="allowed"|"denied"}   counter
    fastguard_ratelimit_evictions_total{limiter}, fastguard_ratelimit_bans_total{limiter}   counters
    fastguard_ratelimit_keys{limiter}, fastguard_ratelimit_capacity{limiter}, fastguard_ratelimit_bytes{limiter}
    fastguard_redis_calls_total{limiter}, fastguard_redis_errors_total{limiter},
    fastguard_redis_fallbacks_total{limiter}, fastguard_redis_up{limiter}       (strict and local-first modes)
    fastguard_sync_exchanges_total{limiter}, fastguard_sync_lag_seconds{limiter} (local-first mode)
    fastguard_redis_call_seconds{limiter}                                       histogram (strict mode)
    fastguard_jwt_verifications_total{verifier, outcome="valid"|<error code>}   (cache hits count as valid)
    fastguard_jwt_cache_requests_total{verifier, cache="tokens"|"failures", result="hit"|"miss"}
    fastguard_jwt_cache_evictions_total{verifier}, fastguard_jwt_cache_entries{verifier, cache}

`fastguard kong-server ... --metrics-port N` serves these for its plugins (labelled by plugin entity) plus
`fastguard_kong_events_total{plugin, status}` and the histogram `fastguard_kong_event_seconds{plugin}`.
"""

from __future__ import annotations

import socket
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from fastguard.extras import install_hint

try:
    from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"fastguard.metrics needs prometheus_client: {install_hint('metrics')}") from exc

import fastguard as fg
from fastguard.tables import StoreStats

__all__ = ["track", "untrack", "serve", "FastguardCollector", "COLLECTOR"]


class FastguardCollector(Collector):
    """A prometheus_client collector reading the stats of tracked limiters and verifiers at each scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], weakref.ref[Any]] = {}

    def track(self, obj: Any, name: str) -> Any:
        if isinstance(obj, fg.RateLimiter):
            kind = "limiter"
        elif isinstance(obj, fg.JWTVerifier):
            kind = "verifier"
        else:
            raise TypeError(f"track() takes a RateLimiter or a JWTVerifier, not {type(obj).__name__}")
        if not isinstance(name, str) or not name:
            raise ValueError("a tracked object needs a non-empty name (its label)")
        with self._lock:
            self._objects[(kind, name)] = weakref.ref(obj)
        return obj

    def untrack(self, name: str) -> None:
        with self._lock:
            for key in [k for k in self._objects if k[1] == name]:
                del self._objects[key]

    def _live(self, kind: str) -> list[tuple[str, Any]]:
        with self._lock:
            items = [(name, ref()) for (k, name), ref in self._objects.items() if k == kind]
            for name, obj in items:
                if obj is None:
                    self._objects.pop((kind, name), None)
        return [(name, obj) for name, obj in items if obj is not None]

    def collect(self) -> Iterator[Any]:
        decisions = CounterMetricFamily("fastguard_ratelimit_decisions", "Rate-limit decisions", labels=["limiter",
                                                                                                       "outcome"])
        evictions = CounterMetricFamily("fastguard_ratelimit_evictions", "Keys evicted from a full table",
                                        labels=["limiter"])
        bans = CounterMetricFamily("fastguard_ratelimit_bans", "Bans started (ban_after reached, or ban())",
                                   labels=["limiter"])
        keys = GaugeMetricFamily("fastguard_ratelimit_keys", "Keys held in process", labels=["limiter"])
        capacity = GaugeMetricFamily("fastguard_ratelimit_capacity", "max_keys of the limiter", labels=["limiter"])
        size = GaugeMetricFamily("fastguard_ratelimit_bytes", "Memory of the key table", labels=["limiter"])
        calls = CounterMetricFamily("fastguard_redis_calls", "Redis script calls", labels=["limiter"])
        errors = CounterMetricFamily("fastguard_redis_errors", "Failed Redis calls", labels=["limiter"])
        fallbacks = CounterMetricFamily("fastguard_redis_fallbacks", "Decisions made by on_error",
                                        labels=["limiter"])
        up = GaugeMetricFamily("fastguard_redis_up", "1 while Redis answers", labels=["limiter"])
        syncs = CounterMetricFamily("fastguard_sync_exchanges", "Local-first exchanges with Redis",
                                    labels=["limiter"])
        lag = GaugeMetricFamily("fastguard_sync_lag_seconds", "Duration of the last exchange", labels=["limiter"])
        latency = HistogramMetricFamily("fastguard_redis_call_seconds", "Duration of each Redis script call "
                                        "(strict mode; a hit_many batch counts as one call each)", labels=["limiter"])
        for name, lim in self._live("limiter"):
            st: StoreStats = lim.stats()   # every table's keys (fastguard.tables); a shared store's besides
            decisions.add_metric([name, "allowed"], st["hits"] - st["denials"])
            decisions.add_metric([name, "denied"], st["denials"])
            evictions.add_metric([name], st["evictions"])
            bans.add_metric([name], st["bans"])
            keys.add_metric([name], st["keys"])
            capacity.add_metric([name], st["capacity"])
            size.add_metric([name], st["bytes"])
            if "mode" in st:
                calls.add_metric([name], st["redis_calls"] if st["mode"] == "strict" else st["syncs"])
                errors.add_metric([name], st["redis_errors"])
                fallbacks.add_metric([name], st["fallbacks"])
                up.add_metric([name], 1.0 if st["redis_up"] else 0.0)
            if st.get("mode") == "sync":
                syncs.add_metric([name], st["syncs"])
                lag.add_metric([name], st["sync_lag"])
            if st.get("mode") == "strict":
                h = st["redis_call_seconds"]
                cumulative, buckets = 0, []
                for bound, n in h["buckets"]:
                    cumulative += n
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                latency.add_metric([name], buckets, h["sum"])
        verifications = CounterMetricFamily("fastguard_jwt_verifications", "Token verifications by outcome",
                                            labels=["verifier", "outcome"])
        cache = CounterMetricFamily("fastguard_jwt_cache_requests", "Cache lookups",
                                    labels=["verifier", "cache", "result"])
        cache_evictions = CounterMetricFamily("fastguard_jwt_cache_evictions", "Verified tokens evicted",
                                              labels=["verifier"])
        entries = GaugeMetricFamily("fastguard_jwt_cache_entries", "Cached tokens", labels=["verifier", "cache"])
        for name, ver in self._live("verifier"):
            st = ver.stats()
            outcomes = dict(st["outcomes"])
            outcomes["valid"] = st["verified"]
            for outcome, n in sorted(outcomes.items()):
                verifications.add_metric([name, outcome], n)
            cache.add_metric([name, "tokens", "hit"], st["cache_hits"])
            cache.add_metric([name, "tokens", "miss"], st["cache_misses"])
            cache.add_metric([name, "failures", "hit"], st["negative_hits"])
            cache_evictions.add_metric([name], st["cache_evictions"])
            entries.add_metric([name, "tokens"], st["cache_entries"])
            entries.add_metric([name, "failures"], st["negative_entries"])
        yield from (decisions, evictions, bans, keys, capacity, size, calls, errors, fallbacks, up, syncs, lag, latency,
                    verifications, cache, cache_evictions, entries)


COLLECTOR = FastguardCollector()
# The registries COLLECTOR is in, held weakly: an id() could be reused by a new registry once an old one is gone.
_registered: weakref.WeakSet[CollectorRegistry] = weakref.WeakSet()
_registered_lock = threading.Lock()


def _register(registry: CollectorRegistry) -> None:
    with _registered_lock:
        if registry not in _registered:
            registry.register(COLLECTOR)
            _registered.add(registry)


def track(obj: Any, name: str, registry: CollectorRegistry | None = None) -> Any:
    """Export `obj` (a RateLimiter or JWTVerifier) under the label `name`; returns obj. Raises TypeError or
    ValueError for anything else or an empty name."""
    _register(registry if registry is not None else REGISTRY)
    return COLLECTOR.track(obj, name)


def untrack(name: str) -> None:
    COLLECTOR.untrack(name)


#: Scrapes served at once by serve(); a connection beyond them is closed at once (Prometheus retries).
METRICS_WORKERS = 4
#: Seconds a scrape connection may wait between two reads or writes, and may take in all.
METRICS_TIMEOUT = 10.0


class _Handler(WSGIRequestHandler):
    timeout = METRICS_TIMEOUT  # socketserver: the connection's socket timeout

    def log_message(self, *args: Any) -> None:  # no line per scrape on stderr
        pass


class _MetricsServer(WSGIServer):
    """wsgiref's server with a bounded pool: prometheus_client's own server starts a thread per connection and
    never times one out, so idle connections to an exposed port could take every thread the process may start
    (the plugin server's workers included)."""

    request_queue_size = 128   # a burst of connections waits to be refused, instead of retrying its SYN a second later

    def __init__(self, address: tuple[str, int], ipv6: bool) -> None:
        self.address_family = socket.AF_INET6 if ipv6 else socket.AF_INET
        super().__init__(address, _Handler)
        self._slots = threading.BoundedSemaphore(METRICS_WORKERS)
        self._pool = ThreadPoolExecutor(max_workers=METRICS_WORKERS, thread_name_prefix="fastguard-metrics")

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)      # every worker busy: refused, not queued
            return
        request.settimeout(METRICS_TIMEOUT)
        self._pool.submit(self._serve_one, request, client_address)

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - a client that went away or timed out
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass                                     # a slow or vanished scraper is not worth a traceback


def serve(port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None) -> Any:
    """Serve /metrics on addr:port from a background thread, with at most METRICS_WORKERS scrapes at once, each
    connection timed out after METRICS_TIMEOUT s of silence. Returns the server (`shutdown()` stops it)."""
    registry = registry if registry is not None else REGISTRY
    _register(registry)
    server = _MetricsServer((addr, port), ipv6=":" in addr)
    server.set_app(make_wsgi_app(registry))
    threading.Thread(target=server.serve_forever, name="fastguard-metrics-server", daemon=True).start()
    return server
