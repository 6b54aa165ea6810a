# The connector image: slim Python, non-root, dependencies pinned exactly as CI installs them.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

WORKDIR /opt/connector
COPY pyproject.toml constraints.txt README.md ./
COPY mattermost_connector ./mattermost_connector
COPY mattermost_prefect ./mattermost_prefect
COPY flows ./flows
COPY tasks ./tasks
COPY deployments ./deployments
# The data directory exists and belongs to the connector before VOLUME: a fresh named volume
# is initialised from it (owner included), so uid 10001 can write its state and bundles.
RUN pip install --no-cache-dir -c constraints.txt ".[postgres]" \
    && useradd --create-home --uid 10001 connector \
    && mkdir -p /home/connector/data/bundles \
    && chown -R connector:connector /home/connector/data

USER connector
WORKDIR /home/connector
ENV CONNECTOR_STATE_DATABASE_URL=sqlite:////home/connector/data/state.db \
    CONNECTOR_SEND_TO_DIRECTORY_PATH=/home/connector/data/bundles
VOLUME ["/home/connector/data"]
# `check` tries Mattermost, OpenCTI and the state store, one line each; exit 1 if one fails.
HEALTHCHECK --interval=5m --timeout=60s --start-period=60s --retries=3 \
    CMD ["mattermost-connector", "check"]
ENTRYPOINT ["mattermost-connector"]
# serves the scheduled sync and the backfill deployments; needs PREFECT_API_URL (compose sets it)
CMD ["serve"]
