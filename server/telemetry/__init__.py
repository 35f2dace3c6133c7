"""What the server tells its operator: Prometheus metrics (one registry, merged across workers),
OpenTelemetry spans, and the access-log line each call leaves."""
