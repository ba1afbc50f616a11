"""The node's HTTP side: health checks, Prometheus metrics, status pages, write actions, STOW-RS in; HTTPS, sign-in
and roles (node/http/auth.py)."""
