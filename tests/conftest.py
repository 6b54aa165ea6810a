"""Fixtures: a real Prefect API, the Mattermost simulator, the fake platform, RabbitMQ."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "mattermost_connector")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

from tests.fake_opencti import FakeOpenCTI
from tests.mattermost_sim import Demo, MattermostSimulator, seed_demo

ROOT = Path(__file__).resolve().parents[1]
OPENCTI_TOKEN = "octi-token-5f0c1e7a-never-log-me"
CONNECTOR_ID = "6c3e9a2b-7d41-4f8e-9b0a-1e2d3c4b5a69"
OWN_PREFIXES = ("MATTERMOST_", "CONNECTOR_", "OPENCTI_", "MQ_")


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect API server for the whole session (the temporary one, on SQLite)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture
def sim() -> Iterator[MattermostSimulator]:
    simulator = MattermostSimulator().start()
    yield simulator
    simulator.stop()


@pytest.fixture
def demo(sim: MattermostSimulator) -> Demo:
    return seed_demo(sim)


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, so no `.env` or `data/` of the checkout leaks in."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(OWN_PREFIXES):
            monkeypatch.delenv(name)
    return tmp_path


def mattermost_env(demo: Demo, channels: list[dict] | None = None) -> dict[str, str]:
    return {
        "MATTERMOST_DOMAIN": "127.0.0.1",
        "MATTERMOST_PORT": str(demo.sim.port),
        "MATTERMOST_PROTOCOL": "http",
        "MATTERMOST_TOKEN": demo.token,
        "MATTERMOST_CHANNEL_IDS": ",".join(c["id"] for c in (channels or demo.channels)),
        "MATTERMOST_KEEPALIVE_DELAY": "0.05",
    }


@pytest.fixture
def directory_env(workdir: Path, demo: Demo, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Offline export: bundles to a directory, state in a SQLite file, no platform."""
    env = {
        **mattermost_env(demo),
        "CONNECTOR_SEND_TO_QUEUE": "false",
        "CONNECTOR_SEND_TO_DIRECTORY": "true",
        "CONNECTOR_SEND_TO_DIRECTORY_PATH": str(workdir / "bundles"),
        "CONNECTOR_STATE_DATABASE_URL": f"sqlite:///{workdir / 'state.db'}",
    }
    apply_env(monkeypatch, env)
    return env


def apply_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    from tasks import resources

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    resources.reset()


@pytest.fixture(autouse=True)
def _forget_resources() -> Iterator[None]:
    yield
    from tasks import resources

    resources.reset()


@pytest.fixture
def platform() -> Iterator[FakeOpenCTI]:
    fake = FakeOpenCTI(token=OPENCTI_TOKEN, push_exchange=f"test-push-{uuid.uuid4().hex[:8]}")
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def push_queue(platform: FakeOpenCTI) -> Iterator[str]:
    """A queue on the real RabbitMQ bound where the platform tells pycti to publish."""
    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    channel = connection.channel()
    queue = f"test-push-queue-{uuid.uuid4().hex[:8]}"
    channel.exchange_declare(platform.push_exchange, exchange_type="direct", auto_delete=False)
    channel.queue_declare(queue, durable=False, auto_delete=False)
    channel.queue_bind(
        queue, platform.push_exchange, routing_key=platform.push_routing(CONNECTOR_ID)
    )
    yield queue
    channel.queue_delete(queue)
    channel.exchange_delete(platform.push_exchange)
    connection.close()


def run_cli(
    args: list[str],
    env: dict[str, str],
    cwd: Path,
    prefect_api: str | None = None,
    timeout: int = 300,
) -> subprocess.CompletedProcess[str]:
    """Run `mattermost-connector` as a user would, in its own process."""
    full_env = {**clean_environ(), **env}
    if prefect_api:
        full_env["PREFECT_API_URL"] = prefect_api
    return subprocess.run(
        [str(Path(sys.executable).parent / "mattermost-connector"), *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
