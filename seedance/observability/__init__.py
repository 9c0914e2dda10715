"""Observability: Prometheus metrics, OpenTelemetry tracing, structured (JSON) logs. docs/observability.md."""
