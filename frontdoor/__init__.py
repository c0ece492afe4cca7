"""The front door: Caddy as the reverse proxy that gives REST and the streams one origin (port 8000).

``python -m frontdoor`` opens the listening socket, runs Caddy on configs/Caddyfile with that socket
and the upstreams taken from the PHANTOM_* settings, logs one READY line once Caddy serves, and
stops Caddy on SIGTERM. See docs/deploy.md.
"""
