"""Prometheus metrics of a node: the registry (:class:`NodeMetrics`) and its HTTP
exposition (:func:`serve_metrics`); docs/observability.md lists every metric."""

from __future__ import annotations

from .http import parse_metrics_url, serve_metrics
from .registry import MAX_LABEL_SETS, NodeMetrics

__all__ = ["MAX_LABEL_SETS", "NodeMetrics", "parse_metrics_url", "serve_metrics"]
