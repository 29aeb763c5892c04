"""Observability: the metrics exporter Prometheus scrapes (exporter.py)."""
