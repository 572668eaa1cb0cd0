"""``mgr.stats()``/``mgr.health()`` from the core's figures, the Prometheus
collector and the ``/healthz``/``/metrics`` routes; imports neither recovery
nor the fleet.
"""
