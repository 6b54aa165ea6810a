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


def test_backfill_through_a_served_deployment(sim: MattermostSimulator, tmp_path: Path):
    reader = sim.add_user("reader", token=TOKEN)
    author = sim.add_user("alice")
    channel = sim.add_channel(sim.add_team("t"), "served", members=[reader, author])
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
        }
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
