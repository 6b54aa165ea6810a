"""A busy Prefect API never fails a channel: a multi-channel sync whose Prefect server resets
its connections and answers 503 for a while, mid-run, still ends with exit 0, every channel
imported and its run history written (tasks/observe.py, PREFECT_CLIENT_MAX_RETRIES)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from mattermost_connector.state import StateStore
from tests.conftest import run_cli
from tests.http_fault_proxy import HttpFaultProxy
from tests.mattermost_sim import MattermostSimulator
from tests.support import TOKEN, World

CHANNELS = 6
POSTS = 250  # more than a page (200): each channel makes and updates its progress artifact
BUSY_SECONDS = 12  # past Prefect's client's first three retries (2, 4, 8 s)


@pytest.fixture
def proxy(prefect_api: str) -> Iterator[HttpFaultProxy]:
    proxy = HttpFaultProxy(urlparse(prefect_api).port or 80)
    yield proxy
    proxy.close()


def test_a_sync_outlasts_a_prefect_api_answering_503_mid_run(
    proxy: HttpFaultProxy, sim: MattermostSimulator, workdir: Path, monkeypatch
):
    world = World(sim, workdir, monkeypatch)
    channels = [world.channel(f"busy-{n}") for n in range(CHANNELS)]
    for channel in channels:
        world.populate(channel, POSTS, files_every=25)
    env = {
        "MATTERMOST_DOMAIN": "127.0.0.1",
        "MATTERMOST_PORT": str(sim.port),
        "MATTERMOST_PROTOCOL": "http",
        "MATTERMOST_TOKEN": TOKEN,
        "MATTERMOST_CHANNEL_IDS": ",".join(c["id"] for c in channels),
        "CONNECTOR_CHANNEL_CONCURRENCY": "3",
        "CONNECTOR_SEND_TO_QUEUE": "false",
        "CONNECTOR_SEND_TO_DIRECTORY": "true",
        "CONNECTOR_SEND_TO_DIRECTORY_PATH": str(workdir / "bundles"),
        "CONNECTOR_STATE_DATABASE_URL": f"sqlite:///{workdir / 'state.db'}",
        "CONNECTOR_DELIVERY_RETRY_DELAY": "2",
    }
    # the first artifact is the sync's progress, made as its channels start: busy from then
    proxy.refuse_on("POST /api/artifacts/", BUSY_SECONDS)

    result = run_cli(["sync"], env, workdir, proxy.url)

    assert proxy.refused > 0, "the Prefect API was never busy: the test proves nothing"
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    bundles = world.bundles()
    for channel in channels:
        assert len(world.deliveries(channel, bundles)) == POSTS, channel["name"]
    store = StateStore(env["CONNECTOR_STATE_DATABASE_URL"])
    try:
        runs = store.runs(limit=100)
    finally:
        store.close()
    assert sorted(r.channel_id for r in runs) == sorted(c["id"] for c in channels)
    assert {str(r.status) for r in runs} == {"completed"}
