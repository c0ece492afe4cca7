"""The front door: nginx as the reverse proxy that gives REST and the streams one origin (port 8000).

``python -m frontdoor`` checks the port, renders configs/nginx.conf from the PHANTOM_* settings, runs
nginx on it, logs one READY line once nginx answers, and stops it on SIGTERM. See docs/deploy.md.
"""
