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
RUN pip install --no-cache-dir -c constraints.txt ".[postgres]" \
    && useradd --create-home --uid 10001 connector

USER connector
WORKDIR /home/connector
ENV CONNECTOR_STATE_DATABASE_URL=sqlite:////home/connector/data/state.db \
    CONNECTOR_SEND_TO_DIRECTORY_PATH=/home/connector/data/bundles
VOLUME ["/home/connector/data"]
ENTRYPOINT ["mattermost-connector"]
# serves the scheduled sync and the backfill deployments; needs PREFECT_API_URL (compose sets it)
CMD ["serve"]
