"""More than one machine: a Prefect server, a process work pool, the deployments of
deployments/prefect.yaml, two `prefect worker start` processes sharing a PostgreSQL state
store; the sync dispatches each channel to the pool (CONNECTOR_WORK_POOL)."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from mattermost_connector.state import StateStore
from tests.conftest import clean_environ
from tests.mattermost_sim import MattermostSimulator
from tests.support import POSTGRES
from tests.test_served import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOKEN = "pool-reader-token"
POOL = "mattermost"  # as deployments/prefect.yaml names it
CHANNELS, POSTS = 20, 30
CONTESTED = 3  # channels also run on their own meanwhile, competing for their leases


@pytest.fixture
def state_url():
    schema = f"pool_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES)
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def start(command: list[str], env: dict, log: Path, cwd: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def run(command: list[str], env: dict, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, (command, done.stdout[-3000:], done.stderr[-3000:])
    return done


def flow_runs_of(api: str, deployment_id: str, states: list[str] | None = None) -> int:
    body: dict = {"deployments": {"id": {"any_": [deployment_id]}}}
    if states:
        body["flow_runs"] = {"state": {"type": {"any_": states}}}
    answer = httpx.post(f"{api}/flow_runs/count", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return int(answer.json())


def scheduled_runs_of(api: str, deployment_id: str) -> int:
    return flow_runs_of(api, deployment_id, ["SCHEDULED"])


@pytest.mark.slow
def test_two_workers_share_the_channels_each_post_once_no_channel_twice_at_once(
    sim: MattermostSimulator, tmp_path: Path, state_url: str
):
    reader = sim.add_user("reader", token=TOKEN)
    author = sim.add_user("alice")
    team = sim.add_team("acme")
    channels = [
        sim.add_channel(team, f"feed-{n:02}", members=[reader, author]) for n in range(CHANNELS)
    ]
    base = 1_700_000_000_000
    for n, channel in enumerate(channels):
        for index in range(POSTS):
            sim.add_post(channel, author, f"{n}/{index}", create_at=base + index * 1000)

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    prefect = {
        **clean_environ(),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    prefect.pop("PREFECT_API_URL", None)
    connector = {
        **prefect,
        "PREFECT_API_URL": api,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "MATTERMOST_DOMAIN": "127.0.0.1",
        "MATTERMOST_PORT": str(sim.port),
        "MATTERMOST_PROTOCOL": "http",
        "MATTERMOST_TOKEN": TOKEN,
        "MATTERMOST_CHANNEL_IDS": ",".join(c["id"] for c in channels),
        "CONNECTOR_SEND_TO_QUEUE": "false",
        "CONNECTOR_SEND_TO_DIRECTORY": "true",
        "CONNECTOR_SEND_TO_DIRECTORY_PATH": str(tmp_path / "bundles"),
        "CONNECTOR_STATE_DATABASE_URL": state_url,
        "CONNECTOR_WORK_POOL": POOL,
        "CONNECTOR_HOME": str(ROOT),
        "CONNECTOR_RUN_EVERY": "1d",
    }
    server_log = tmp_path / "server.log"
    server = start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        prefect,
        server_log,
        tmp_path,
    )
    workers: list[subprocess.Popen] = []
    try:
        wait_for(
            lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200,
            120,
            "the Prefect server",
            server,
            server_log,
        )
        run([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"],
            connector, tmp_path, 120)  # fmt: skip
        deploy = [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"]
        run([*deploy, "--prefect-file", "deployments/prefect.yaml"], connector, ROOT, 300)
        sync_deployment = httpx.get(
            f"{api}/deployments/name/mattermost-sync/sync", timeout=5
        ).json()
        (schedule,) = sync_deployment["schedules"]
        assert schedule["schedule"]["rrule"].endswith("FREQ=DAILY;INTERVAL=1")  # RUN_EVERY=1d
        # The schedule is deployed as a user's would be, then paused: its daily run (at 00:00
        # UTC) would otherwise start a second sync on the workers when the test crosses
        # midnight. Pausing deletes the runs the scheduler made already; none may remain.
        paused = httpx.post(
            f"{api}/deployments/{sync_deployment['id']}/pause_deployment", timeout=30
        )
        assert paused.status_code < 300, paused.text
        assert scheduled_runs_of(api, sync_deployment["id"]) == 0
        channel_deployment = httpx.get(
            f"{api}/deployments/name/mattermost-channel/channel", timeout=5
        ).json()

        logs = [tmp_path / f"worker-{n}.log" for n in (1, 2)]
        for n, log in enumerate(logs, 1):
            command = [str(BIN / "prefect"), "worker", "start", "--pool", POOL]
            workers.append(start([*command, "--name", f"w{n}"], connector, log, tmp_path))
        for worker, log in zip(workers, logs, strict=True):
            wait_for(lambda log=log: "started" in log.read_text().lower(), 120, "a worker",
                     worker, log)  # fmt: skip

        sync = start(
            [str(BIN / "mattermost-connector"), "sync"], connector, tmp_path / "sync.log", tmp_path
        )
        # meanwhile, a few channels also run on their own: they wait for the sync's run of
        # the channel (or it for them), never run beside it
        # (Prefect's client: it waits out the 503s a busy SQLite Prefect server answers)
        from prefect.client.orchestration import SyncPrefectClient

        with SyncPrefectClient(api) as client:
            contested = [
                str(
                    client.create_flow_run_from_deployment(
                        channel_deployment["id"], parameters={"channel_id": channel["id"]}
                    ).id
                )
                for channel in channels[:CONTESTED]
            ]
        assert sync.wait(timeout=600) == 0, (tmp_path / "sync.log").read_text()[-4000:]

        def finished() -> bool:
            states = [
                httpx.get(f"{api}/flow_runs/{run_id}", timeout=5).json()["state"]["type"]
                for run_id in contested
            ]
            return all(state in ("COMPLETED", "FAILED", "CRASHED") for state in states)

        wait_for(finished, 300, "the contested channel runs")
        report = (tmp_path / "sync.log").read_text()
        assert report.count(": ok, ") == CHANNELS, report[-3000:]

        store = StateStore(state_url)
        runs = store.runs(limit=1000)
        assert len(runs) == CHANNELS + CONTESTED
        assert all(r.status == "completed" for r in runs), [(r.channel_id, r.error) for r in runs]
        by_channel: dict[str, list] = {}
        for record in runs:
            by_channel.setdefault(record.channel_id, []).append(record)
        for records in by_channel.values():
            records.sort(key=lambda r: r.started_at)
            for before, after in itertools.pairwise(records):
                assert after.started_at >= before.ended_at, "a channel ran twice at once"
        assert (
            sorted(len(r) for r in by_channel.values())
            == [1] * (CHANNELS - CONTESTED) + [2] * CONTESTED
        )
        store.close()

        # every channel run went through a worker, and both workers took some
        submitted = [
            set(re.findall(r"submitting flow run '([0-9a-f-]{36})'", log.read_text()))
            for log in logs
        ]
        channel_runs = {r.flow_run_id for r in runs}
        assert channel_runs <= submitted[0] | submitted[1]
        assert channel_runs & submitted[0] and channel_runs & submitted[1], submitted

        delivered = Counter(
            o["content"]
            for path in (tmp_path / "bundles").glob("*.json")
            for o in json.loads(path.read_text())["objects"]
            if o["type"] == "media-content"
        )
        expected = {f"{n}/{index}" for n in range(CHANNELS) for index in range(POSTS)}
        assert set(delivered) == expected and set(delivered.values()) == {1}
        # only the test's runs: the deployed sync never ran (`mattermost-connector sync` runs
        # the flow in its own process, dispatching its channels to the pool)
        assert flow_runs_of(api, sync_deployment["id"]) == 0
        all_logs = "".join(log.read_text() for log in logs) + server_log.read_text()
        assert TOKEN not in all_logs
    finally:
        for process in (*workers, server):
            stop(process)
