"""Fixtures: a real Prefect API, the Mattermost simulator, the fake platform, RabbitMQ.

`pytest --without-prefect` runs the domain tests (DOMAIN_TESTS, less those that take the
`prefect_api` fixture) with Prefect unimportable, as if it were not installed: the domain
(`mattermost_connector/`) must work without it. It also runs the simulator's own tests
(`test_simulator*.py`, marked `simulator`), which pin the simulator to the server and test
nothing of the connector: they are not counted among the domain tests (`make test-count`).
"""

from __future__ import annotations

import importlib.abc
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

# Test files of the domain: they import nothing of tasks/ or flows/, and only their tests
# that take `prefect_api` (directly or through `world`) need Prefect.
DOMAIN_TESTS = frozenset(
    {
        "test_amqp.py",
        "test_backdated.py",
        "test_catalog.py",
        "test_channels.py",
        "test_client.py",
        "test_config.py",
        "test_domain.py",
        "test_errors.py",
        "test_home.py",
        "test_integration_posts.py",
        "test_invariants.py",
        "test_observables.py",
        "test_live_socket.py",
        "test_memory.py",
        "test_pipeline_core.py",
        "test_pipeline_run.py",
        "test_prefect_calls.py",
        "test_docs.py",
        "test_since.py",
        "test_state.py",
        "test_stix.py",
        "test_walk.py",
    }
)


SIMULATOR_TESTS = "test_simulator"  # the prefix of the simulator's own test files


def is_simulator_test(name: str) -> bool:
    return name.startswith(SIMULATOR_TESTS) and name.endswith(".py")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--without-prefect",
        action="store_true",
        help="run only the domain tests, with Prefect unimportable (as if not installed)",
    )


class PrefectBlocker(importlib.abc.MetaPathFinder):
    """Makes `import prefect` (and its submodules) fail as it would without the package."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "prefect" or name.startswith("prefect."):
            raise ModuleNotFoundError(f"No module named {name!r} (--without-prefect)", name=name)
        return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "domain: needs no Prefect (see DOMAIN_TESTS)")
    config.addinivalue_line("markers", "simulator: the simulator's own tests (no Prefect)")
    if config.getoption("--without-prefect"):
        if "prefect" in sys.modules:
            raise pytest.UsageError("--without-prefect: Prefect was imported before the tests")
        sys.meta_path.insert(0, PrefectBlocker())


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if not config.getoption("--without-prefect") or collection_path.suffix != ".py":
        return None
    name = collection_path.name
    kept = name in DOMAIN_TESTS or is_simulator_test(name)
    return True if name.startswith("test_") and not kept else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the domain tests (`-m domain` selects them) and the simulator's (`-m simulator`);
    leave out the others under --without-prefect."""
    kept, dropped = [], []
    for item in items:
        domain = item.path.name in DOMAIN_TESTS and "prefect_api" not in item.fixturenames
        simulator = is_simulator_test(item.path.name)
        if domain:
            item.add_marker(pytest.mark.domain)
        if simulator:
            item.add_marker(pytest.mark.simulator)
        without = domain or simulator
        (kept if without or not config.getoption("--without-prefect") else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


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
    env = {**mattermost_env(demo), **offline_env(workdir)}
    apply_env(monkeypatch, env)
    return env


def offline_env(workdir: Path) -> dict[str, str]:
    """Bundles to `workdir/bundles`, state in `workdir/state.db`, no platform."""
    return {
        "CONNECTOR_SEND_TO_QUEUE": "false",
        "CONNECTOR_SEND_TO_DIRECTORY": "true",
        "CONNECTOR_SEND_TO_DIRECTORY_PATH": str(workdir / "bundles"),
        "CONNECTOR_STATE_DATABASE_URL": f"sqlite:///{workdir / 'state.db'}",
    }


def apply_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    from mattermost_prefect.tasks import resources

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    resources.reset()


@pytest.fixture(autouse=True)
def _forget_resources() -> Iterator[None]:
    yield
    resources = sys.modules.get("mattermost_prefect.tasks.resources")
    if resources is not None:  # else no test has used them: nothing to forget
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
    embedded: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run `mattermost-connector` as a user would, in its own process: on `prefect_api`, or
    (`embedded`) on a temporary server of its own, as without PREFECT_API_URL."""
    full_env = {**clean_environ(), **env}
    if prefect_api:
        full_env["PREFECT_API_URL"] = prefect_api
    if embedded:
        full_env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        [str(Path(sys.executable).parent / "mattermost-connector"), *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
