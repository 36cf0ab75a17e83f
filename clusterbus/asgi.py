"""Liveness and readiness endpoints for ASGI apps (see :func:`health_app`)."""

from bus.asgi import health_app

__all__ = ["health_app"]
