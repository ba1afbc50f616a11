"""The node's HTTP side: health checks, Prometheus metrics, a read-only status page and bearer-token actions."""
