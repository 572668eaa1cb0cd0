"""The operator's HTTP routes of a dyno: ``/healthz`` for platforms that
route by health checks, ``/metrics`` for Prometheus (when prometheus-client
is installed)."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from .prometheus import Monitored


def add_routes(
    app: Flask,
    manager: Monitored,
    health_path: str = "/healthz",
    metrics_path: str | None = "/metrics",
    registry: Any = None,
) -> None:
    """Serve ``mgr.health()`` at ``health_path`` (200 when the dyno can
    deliver, else 503, with the reasons as JSON) and, if prometheus-client is
    installed and ``metrics_path`` is not ``None``, the Prometheus text format
    at ``metrics_path``.

    :param registry: a ``prometheus_client.CollectorRegistry``; the process's
                     default registry (with its process and GC metrics) when
                     ``None``.
    """

    def healthz():
        health = manager.health()
        return (json.dumps(health), 200 if health["ok"] else 503,
                {"Content-Type": "application/json", "Cache-Control": "no-store"})

    app.add_url_rule(health_path, "flask_signalr_kafka_healthz", healthz)
    if metrics_path is None:
        return
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
    except ImportError:
        return  # the `metrics` extra is not installed: no /metrics
    from .prometheus import register

    registry = REGISTRY if registry is None else registry
    register(manager, registry)

    def metrics():
        return generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}

    app.add_url_rule(metrics_path, "flask_signalr_kafka_metrics", metrics)
