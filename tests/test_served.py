"""A real Prefect server, the connector serving its deployments, a backfill triggered by CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mattermost_connector.state import StateStore
from mattermost_connector.window import iso
from tests.conftest import clean_environ
from tests.mattermost_sim import MattermostSimulator

TOKEN = "served-reader-token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(
    check,
    seconds: float,
    what: str,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"{what}: process exited\n" + (log.read_text()[-3000:] if log else "")
            )
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n" + (
            log.read_text()[-3000:] if log else ""
        )
        time.sleep(0.5)


def channel_task_runs(api: str, flow_run_id: str) -> list[dict]:
    """The channels' task runs of a served sync (its other task runs left out)."""
    answer = httpx.post(
        f"{api}/task_runs/filter",
        json={"flow_runs": {"id": {"any_": [flow_run_id]}}},
        timeout=5,
    )
    answer.raise_for_status()
    return [r for r in answer.json() if r["task_key"].startswith("mattermost_channel_task")]


def flow_runs(api: str, flow_name: str) -> list[dict]:
    answer = httpx.post(
        f"{api}/flow_runs/filter",
        json={"flows": {"name": {"any_": [flow_name]}}},
        timeout=5,
    )
    answer.raise_for_status()
    return answer.json()


@pytest.mark.slow
def test_serve_syncs_at_start_up_fails_in_one_line_and_backfills_on_demand(
    sim: MattermostSimulator, tmp_path: Path
):
    """Served: the first sync at start-up, not a CONNECTOR_RUN_EVERY later; a channel whose
    posts the server fails to list (500, every time: past the CLI's check of the channel)
    fails that sync, Failed with its one-line reason and no traceback anywhere; runs named
    after what they do; a backfill triggered by CLI."""
    reader = sim.add_user("reader", token=TOKEN)
    author = sim.add_user("alice")
    team = sim.add_team("t")
    channel = sim.add_channel(team, "served", members=[reader, author])
    broken = sim.add_channel(team, "broken", members=[reader, author])
    sim.faults.failing_paths[f"/api/v4/channels/{broken['id']}/posts"] = 500
    base = 1_700_000_000_000
    for index in range(300):
        sim.add_post(channel, author, f"served {index}", create_at=base + index * 1000)
    start, end = base + 100_000, base + 200_000  # posts 100..199

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    prefect_home = tmp_path / "prefect"
    env = {
        **clean_environ(),
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
    }
    env.pop("PREFECT_API_URL", None)
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    bin_dir = Path(sys.executable).parent
    with open(server_log, "w") as out:
        server = subprocess.Popen(
            [
                str(bin_dir / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    serve = None
    try:
        wait_for(
            lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200,
            120,
            "the Prefect server",
            server,
            server_log,
        )
        connector_env = {
            **env,
            "PREFECT_API_URL": api,
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "MATTERMOST_DOMAIN": "127.0.0.1",
            "MATTERMOST_PORT": str(sim.port),
            "MATTERMOST_PROTOCOL": "http",
            "MATTERMOST_TOKEN": TOKEN,
            "MATTERMOST_CHANNEL_IDS": channel["id"],
            "CONNECTOR_SEND_TO_QUEUE": "false",
            "CONNECTOR_SEND_TO_DIRECTORY": "true",
            "CONNECTOR_SEND_TO_DIRECTORY_PATH": str(tmp_path / "bundles"),
            "CONNECTOR_STATE_DATABASE_URL": f"sqlite:///{tmp_path / 'state.db'}",
            "CONNECTOR_RUN_EVERY": "1d",
            "CONNECTOR_DELIVERY_RETRIES": "0",  # the client's own 5 attempts are enough here
            # the start-up sync of `channel` finds nothing: the backfill below delivers alone
            "MATTERMOST_START_TIMESTAMP": str(base // 1000 + 10**6),
        }
        connector_env["MATTERMOST_CHANNEL_IDS"] += f",{broken['id']}"
        with open(serve_log, "w") as out:
            serve = subprocess.Popen(
                [str(bin_dir / "mattermost-connector"), "serve"],
                env=connector_env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def deployments() -> set[str]:
            answer = httpx.post(f"{api}/deployments/filter", json={}, timeout=5).json()
            return {d["name"] for d in answer}

        wait_for(
            lambda: {"sync", "backfill"} <= deployments(),
            120,
            "the served deployments",
            serve,
            serve_log,
        )

        def start_up_syncs() -> list[dict]:
            return [
                r
                for r in flow_runs(api, "mattermost-sync")
                if r["state"] and r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED")
            ]

        wait_for(lambda: start_up_syncs(), 180, "the start-up sync", serve, serve_log)
        (run,) = start_up_syncs()
        assert run["name"] == "sync 2 channels"
        assert run["state"]["type"] == "FAILED", run["state"]
        assert run["state"]["message"] == f"1 of 2 channels failed: {broken['id']}"
        channel_runs = {r["name"]: r["state"] for r in channel_task_runs(api, run["id"])}
        assert channel_runs.keys() == {"t/served", "t/broken"}
        assert channel_runs["t/served"]["type"] == "COMPLETED"
        failed = channel_runs["t/broken"]
        assert failed["type"] == "FAILED"
        assert failed["message"].startswith(f"channel {broken['id']} (t/broken): FAILED: GET ")
        assert "gave up after 5 attempts" in failed["message"] and "\n" not in failed["message"]

        triggered = subprocess.run(
            [
                str(bin_dir / "prefect"),
                "deployment",
                "run",
                "mattermost-backfill/backfill",
                "-p",
                f"channel_id={channel['id']}",
                "-p",
                f"start={iso(start)}",
                "-p",
                f"end={end // 1000}",
                "--watch",
                "--watch-timeout",
                "180",
            ],
            env={**env, "PREFECT_API_URL": api},
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert triggered.returncode == 0, (
            triggered.stdout[-2000:] + triggered.stderr[-2000:] + serve_log.read_text()[-3000:]
        )
        assert "Completed" in triggered.stdout
        (backfill,) = flow_runs(api, "mattermost-backfill")
        assert backfill["name"] == f"backfill t/served [{iso(start)}, {iso(end)})"
        logs = server_log.read_text() + serve_log.read_text()
        at = max(logs.find("Traceback"), logs.find("TypeError"))
        assert at < 0, logs[max(0, at - 2000) : at + 6000]
        store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
        backfills = [r for r in store.runs() if r.kind == "backfill"]
        assert [(r.status, r.posts) for r in backfills] == [("completed", 100)]
        assert backfills[0].flow_run_id
        delivered = sorted(
            o["content"]
            for path in (tmp_path / "bundles").glob("*.json")
            for o in json.loads(path.read_text())["objects"]
            if o["type"] == "media-content"
        )
        assert delivered == sorted(f"served {i}" for i in range(100, 200))
        assert TOKEN not in serve_log.read_text()
    finally:
        for process in (serve, server):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
