"""A Prometheus exposition of the bus's metrics (see :func:`enable_prometheus` and
:func:`metrics_app`; the ``prometheus`` extra)."""

from bus.prometheus import PrometheusSetupError, enable_prometheus, metrics_app

__all__ = ["PrometheusSetupError", "enable_prometheus", "metrics_app"]
