"""Prometheus metrics of the request server.

Each server owns its own registry, so two servers in one process (tests, benchmarks) never
share counters and `/metrics` shows exactly what this server did.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServerMetrics"]

# Latencies of SQL-driven calls sit between ~0.5 ms (tiny model, idle) and seconds (big batches).
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    """The counters, gauges and histograms one server exports on `/metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "qwen_server_requests", "HTTP requests handled, by endpoint and status code.",
            ["endpoint", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "qwen_server_request_seconds", "Time from request received to response ready, by endpoint.",
            ["endpoint"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.inputs = Counter(
            "qwen_server_inputs", "Texts embedded or documents reranked, by kind.", ["kind"], registry=self.registry,
        )
        self.truncations = Counter(
            "qwen_server_truncated_inputs", "Inputs cut at the model's max_length, by kind.",
            ["kind"], registry=self.registry,
        )
        self.batch_inputs = Histogram(
            "qwen_server_batch_inputs", "Inputs per forward pass (micro-batching merges requests).",
            ["kind"], buckets=_BATCH_BUCKETS, registry=self.registry,
        )
        self.batch_requests = Histogram(
            "qwen_server_batch_requests", "Requests merged into one forward pass.",
            ["kind"], buckets=_BATCH_BUCKETS, registry=self.registry,
        )
        self.forward_latency = Histogram(
            "qwen_server_forward_seconds", "Duration of one model call, by kind.",
            ["kind"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.queue_depth = Gauge(
            "qwen_server_queue_depth", "Requests waiting for a forward pass, by kind.",
            ["kind"], registry=self.registry,
        )

        self.pending = Gauge(
            "qwen_server_pending_requests", "Requests admitted and not yet answered (bounded by --max-pending).",
            registry=self.registry,
        )
        self.rejected = Counter(
            "qwen_server_dropped_requests",
            "Requests not served: backlog_full (503), deadline (504), caller_gone (client disconnected).",
            ["reason"], registry=self.registry,
        )

        self.cache_lookups = Counter(
            "qwen_server_cache_lookups", "Query-embedding cache look-ups, one per text: hit or miss.",
            ["result"], registry=self.registry,
        )
        self.cache_evictions = Counter(
            "qwen_server_cache_evictions", "Cache entries evicted to stay within --cache-size / --cache-bytes.",
            registry=self.registry,
        )
        self.cache_entries = Gauge("qwen_server_cache_entries", "Texts in the query-embedding cache.",
                                   registry=self.registry)
        self.cache_bytes = Gauge("qwen_server_cache_bytes", "Bytes held by the query-embedding cache.",
                                 registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
