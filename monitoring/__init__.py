"""Monitoring: Prometheus rules and config, dashboards, runbooks, and the exporters (``lag_exporter``)."""
