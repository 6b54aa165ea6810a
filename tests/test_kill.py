"""A sync killed with SIGKILL at any point resumes from what was delivered, never skipping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from mattermost_connector.state import INTERRUPTED, StateStore
from tests.checks import directory_bundles
from tests.conftest import clean_environ, run_cli
from tests.mattermost_sim import MattermostSimulator


def test_kill_9_mid_run_then_rerun_loses_nothing(
    prefect_api: str, sim: MattermostSimulator, workdir: Path
):
    reader = sim.add_user("reader", token="kill-test-token")
    author = sim.add_user("alice")
    channel = sim.add_channel(sim.add_team("t"), "c", members=[reader, author])
    for index in range(3000):
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
    sim.faults.latency = 0.05  # slow enough to be killed mid-way
    with open(workdir / "killed.log", "w") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "mattermost-connector"), "sync"],
            env={**clean_environ(), **env},
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while len(list((workdir / "bundles").glob("*.json"))) < 4:
            assert process.poll() is None, (workdir / "killed.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "no bundle delivered in time"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    killed_bundles = directory_bundles(workdir / "bundles")
    assert len(killed_bundles) < 15, "the run finished before it could be killed"
    sim.faults.latency = 0
    started = time.monotonic()
    result = run_cli(["sync"], env, workdir, prefect_api)
    # the killed run's channel lock was not released: the rerun waited for its lease to end
    assert time.monotonic() - started < 60 + 60
    assert result.returncode == 0, result.stderr[-2000:]
    delivered = Counter(
        text for bundle in directory_bundles(workdir / "bundles") for text in messages(bundle)
    )
    assert set(delivered) == {f"message {i}" for i in range(3000)}
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


def id_of(run) -> int:
    return run.id


def messages(bundle: dict) -> list[str]:
    return [o["content"] for o in bundle["objects"] if o["type"] == "media-content"]
