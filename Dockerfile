# PhantomLink in one image: every process (broker, control, ws, lsl, door) runs from it.
# `docker compose up` (compose.yaml) runs each as its own service; `docker run` alone runs the
# whole Procfile with honcho. The synthetic recording is generated at build time; mount a real
# MC_Maze file and set PHANTOM_DATA_PATH to serve it instead (docs/deploy.md).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PHANTOM_HOST=0.0.0.0

WORKDIR /app

# Dependencies and the phantomlink client package first, so server code changes do not reinstall them.
COPY pyproject.toml README.md ./
COPY phantomlink/ phantomlink/
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin phantom

COPY Procfile ./
COPY configs/ configs/
COPY protocol/ protocol/
COPY broker/ broker/
COPY control/ control/
COPY bridges/ bridges/
COPY frontdoor/ frontdoor/

RUN python -m broker.synthetic --ensure \
    && mkdir -p data/state data/frontdoor \
    && chown -R 10001:10001 data

USER 10001

# door 8000 (and PHANTOM_TLS_PORT with TLS), ws 8001, control 8002, broker data 5555 and commands 5556
EXPOSE 8000 8443 8001 8002 5555 5556
CMD ["honcho", "start"]
