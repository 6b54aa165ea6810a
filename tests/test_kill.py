"""A sync killed with SIGKILL at any point resumes from what was delivered, never skipping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from mattermost_connector.mattermost.client import PER_PAGE
from mattermost_connector.pipeline.lease import LEASE_SECONDS
from mattermost_connector.pipeline.new_posts import BATCH_POSTS
from mattermost_connector.state import INTERRUPTED, StateStore
from tests.checks import directory_bundles
from tests.conftest import clean_environ, run_cli
from tests.mattermost_sim import MattermostSimulator


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_loses_nothing(
    prefect_api: str, sim: MattermostSimulator, workdir: Path
):
    reader = sim.add_user("reader", token="kill-test-token")
    author = sim.add_user("alice")
    channel = sim.add_channel(sim.add_team("t"), "c", members=[reader, author])
    total = BATCH_POSTS + 400  # two batches: the second is read while the first is delivered
    for index in range(total):
        sim.add_post(channel, author, f"message {index}", create_at=1_700_000_000_000 + index // 3)
    env = {
        "MATTERMOST_DOMAIN": "127.0.0.1",
        "MATTERMOST_PORT": str(sim.port),
        "MATTERMOST_PROTOCOL": "http",
        "MATTERMOST_TOKEN": "kill-test-token",
        "MATTERMOST_CHANNEL_IDS": channel["id"],
        "CONNECTOR_SEND_TO_QUEUE": "false",
        "CONNECTOR_SEND_TO_DIRECTORY": "true",
        "CONNECTOR_SEND_TO_DIRECTORY_PATH": str(workdir / "bundles"),
        "CONNECTOR_STATE_DATABASE_URL": f"sqlite:///{workdir / 'state.db'}",
        "PREFECT_API_URL": prefect_api,
    }
    # The server holds every page of the second batch until the process is dead: the kill
    # lands mid-run whatever the machine's speed, never after a run that finished first.
    held, dead = threading.Event(), threading.Event()
    pages: list[str] = []

    def hold_the_second_batch(path: str, query: dict) -> None:
        if path.endswith("/posts") and "after" in query:
            pages.append(path)
            if len(pages) > BATCH_POSTS // PER_PAGE:
                held.set()
                dead.wait(120)

    sim.on_request = hold_the_second_batch
    with open(workdir / "killed.log", "w") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "mattermost-connector"), "sync"],
            env={**clean_environ(), **env},
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while not (held.is_set() and list((workdir / "bundles").glob("*.json"))):
            assert process.poll() is None, (workdir / "killed.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the first batch was not delivered in time"
            time.sleep(0.05)
        assert process.poll() is None
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    dead.set()
    sim.on_request = None
    store = StateStore(env["CONNECTOR_STATE_DATABASE_URL"])
    left = store.lease_holder(channel["id"])  # the killed run's, renewed until it died
    assert left is not None
    expired = left[1].replace(tzinfo=None)
    killed_bundles = directory_bundles(workdir / "bundles")
    killed_messages = {text for bundle in killed_bundles for text in messages(bundle)}
    assert 0 < len(killed_messages) <= BATCH_POSTS  # nothing of the held batch went out
    started = time.monotonic()
    result = run_cli(["sync"], env, workdir, prefect_api)
    # the killed run's lease was not released: the rerun waited for it to expire, then for
    # at most one poll of the lease (tasks/locks.py), before it opened its run
    assert time.monotonic() - started < LEASE_SECONDS + 60
    assert result.returncode == 0, result.stderr[-2000:]
    delivered = Counter(
        text for bundle in directory_bundles(workdir / "bundles") for text in messages(bundle)
    )
    assert set(delivered) == {f"message {i}" for i in range(total)}
    # at most the bundles in flight when the process died (written, not yet recorded: up to
    # CONNECTOR_DELIVERY_CONCURRENCY of them) are delivered a second time, under the same ids
    again = {text for text, count in delivered.items() if count > 1}
    assert max(delivered.values()) <= 2
    in_flight = [set(messages(b)) for b in killed_bundles if again & set(messages(b))]
    assert all(bundle <= again for bundle in in_flight) and len(in_flight) <= 4
    assert again == set().union(*in_flight)
    # the killed run's history row was closed by the rerun, not left `running`
    killed_run, rerun = sorted(StateStore(env["CONNECTOR_STATE_DATABASE_URL"]).runs(), key=id_of)
    assert (killed_run.status, killed_run.error) == ("failed", INTERRUPTED)
    assert rerun.status == "completed"
    assert expired <= rerun.started_at.replace(tzinfo=None)


def id_of(run) -> int:
    return run.id


def messages(bundle: dict) -> list[str]:
    return [o["content"] for o in bundle["objects"] if o["type"] == "media-content"]
