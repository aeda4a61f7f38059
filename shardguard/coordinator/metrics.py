"""Prometheus metrics of one coordinator app (its own registry, so several apps can share a
process, as in tests). Queue gauges are read from the database at scrape time (at most once
per 5 s), so every replica reports the shared queue."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_JOB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _QueueCollector(Collector):
    """The database's job and node counts. Read at most once per ``ttl`` seconds, one read at a
    time, scrapes in between sharing it (review finding: every scrape, unauthenticated by
    default, ran a GROUP BY over every job ever made; many at once slowed every route)."""

    def __init__(self, read: Callable[[], dict[str, dict[str, int]]], ttl: float = 5.0) -> None:
        self._read = read
        self._ttl = ttl
        self._lock = threading.Lock()
        self._last: tuple[float, dict[str, dict[str, int]] | None] = (-math.inf, None)

    def _counts(self) -> dict[str, dict[str, int]] | None:
        """The counts, or None if the database did not answer."""
        with self._lock:
            at, counts = self._last
            now = time.monotonic()
            if now - at >= self._ttl:
                try:
                    counts = self._read()
                except Exception:  # a scrape must not fail because the database is down
                    counts = None
                self._last = (now, counts)
        return counts

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families without their values: registering must not read (nor cache) counts."""
        yield GaugeMetricFamily("shardguard_coordinator_db_up", "1 when the database answered the scrape")
        yield GaugeMetricFamily("shardguard_jobs", "Jobs in the database by kind and status", labels=["kind", "status"])
        yield GaugeMetricFamily("shardguard_nodes", "Registered nodes by liveness", labels=["state"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self._counts()
        if counts is None:  # the database is down: say so, nothing more
            up = GaugeMetricFamily("shardguard_coordinator_db_up", "1 when the database answered the scrape")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("shardguard_coordinator_db_up", "1 when the database answered the scrape")
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("shardguard_jobs", "Jobs in the database by kind and status", labels=["kind", "status"])
        for (kind, status), n in sorted(_flatten(counts.get("jobs", {}))):
            jobs.add_metric([kind, status], n)
        yield jobs
        nodes = GaugeMetricFamily("shardguard_nodes", "Registered nodes by liveness", labels=["state"])
        for state, n in sorted(counts.get("nodes", {}).items()):
            nodes.add_metric([state], n)
        yield nodes


def _flatten(d: dict[str, int]) -> Iterator[tuple[tuple[str, str], int]]:
    for key, n in d.items():
        kind, _, status = key.partition("/")
        yield (kind, status), n


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "shardguard_http_requests", "HTTP requests by route, method and status", ["route", "method", "status"], registry=r
        )
        self.http_latency = Histogram(
            "shardguard_http_request_seconds",
            "HTTP request latency by route (long-polls included)",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.jobs_submitted = Counter("shardguard_jobs_submitted", "Jobs submitted by kind", ["kind"], registry=r)
        self.jobs_finished = Counter(
            "shardguard_jobs_finished",
            "Jobs finished by kind, status and failure reason",
            ["kind", "status", "reason"],
            registry=r,
        )
        self.job_seconds = Histogram(
            "shardguard_job_seconds", "Job duration from dispatch to end, by kind", ["kind"], buckets=_JOB_BUCKETS, registry=r
        )
        self.bundles_started = Histogram(
            "shardguard_bundle_requests",
            "Sign requests per bundle started (API.md §1.6, Bundles)",
            buckets=(2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.signs_started = Counter(
            "shardguard_signs_started",
            "Signing jobs started, by mode: FROST (requests alone and bundles) precommitted (one step, "
            "nonce commitments made ahead) or two_round; ECDSA of a key itself presigned (one step, a "
            "pre-signature) or three_round",
            ["mode"],
            registry=r,
        )
        self.signs_rerun = Counter(
            "shardguard_signs_rerun",
            "Sign requests whose one-step signing could not run (a signer restarted, or holds no such "
            "pre-signature or nonce) and that ran again in rounds, by reason",
            ["reason"],
            registry=r,
        )
        self.tasks_claimed = Counter("shardguard_tasks_claimed", "Tasks handed to nodes by this replica", registry=r)
        self.relay_messages = Counter("shardguard_relay_messages", "Ciphertexts accepted for relay", registry=r)
        self.relay_bytes = Counter("shardguard_relay_bytes", "Ciphertext bytes accepted for relay", registry=r)
        self.node_auth_failures = Counter(
            "shardguard_node_auth_failures", "Refused signed node requests by reason", ["reason"], registry=r
        )
        self.audit_entries = Counter("shardguard_audit_entries", "Audit entries mirrored", registry=r)
        self.stream_connections = Gauge("shardguard_stream_connections", "Open node event-stream WebSockets", registry=r)
        self.stream_attached = Gauge(
            "shardguard_stream_attached_connections",
            "Open node event streams whose frames carry blobs as binary attachments (API.md §1.11)",
            registry=r,
        )
        self.stream_frames = Counter(
            "shardguard_stream_frames", "Frames received on node event streams, by op", ["op"], registry=r
        )
        self.stream_refusals = Counter(
            "shardguard_stream_refusals", "Node event streams closed for a bad frame, by reason", ["reason"], registry=r
        )

    def add_queue_collector(self, read: Callable[[], dict[str, dict[str, int]]]) -> None:
        self.registry.register(_QueueCollector(read))
