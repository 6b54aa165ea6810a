"""Benchmark: what a served no-op sync costs, from the runner taking it to Completed.

    .venv/bin/python -m tests.bench_serve [--runs 5]

A Prefect server (Prefect's test harness), the simulator with one channel already synced, and
`mattermost-connector serve` in its own process (runs fork from its preloaded fork server,
`deployments/forked_runs.py`). Runs of `mattermost-sync/sync` are created due now, one at a
time, as the scheduler would; for each, the times between its states as the server recorded
them: Pending (the runner took it) -> Running -> Completed. The start-up sync (the channel's
first) is left out. Medians with [lowest-highest].
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from tests.bench import TOKEN, connector_env, directory_env
from tests.mattermost_sim import MattermostSimulator


def seconds_between(states: list[dict], first: str, last: str) -> float:
    at = {s["type"]: datetime.fromisoformat(s["timestamp"]) for s in states}
    return (at[last] - at[first]).total_seconds()


def wait(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def sync_runs(api: str) -> list[dict]:
    answer = httpx.post(
        f"{api}/flow_runs/filter",
        json={"flows": {"name": {"any_": ["mattermost-sync"]}}, "sort": "EXPECTED_START_TIME_ASC"},
        timeout=10,
    )
    answer.raise_for_status()
    return answer.json()


def states_of(api: str, run_id: str) -> list[dict]:
    answer = httpx.get(f"{api}/flow_run_states/", params={"flow_run_id": run_id}, timeout=10)
    answer.raise_for_status()
    return answer.json()


def completed(api: str, count: int):
    """A check: at least `count` sync runs have completed."""
    return lambda: len([r for r in sync_runs(api) if r["state_type"] == "COMPLETED"]) >= count


def post(url: str, body: dict) -> None:
    """POST, waiting out the 503s a busy SQLite server answers (as Prefect's client does)."""
    for attempt in range(10):
        answer = httpx.post(url, json=body, timeout=10)
        if answer.status_code != 503:
            answer.raise_for_status()
            return
        time.sleep(2**attempt * 0.2)
    answer.raise_for_status()


def measure(api: str, runs: int) -> list[tuple[float, float]]:
    sim = MattermostSimulator()
    sim.start()
    reader = sim.add_user("reader", token=TOKEN)
    author = sim.add_user("alice")
    channel = sim.add_channel(sim.add_team("t"), "served", members=[reader, author])
    for index in range(200):
        sim.add_post(channel, author, f"post {index}")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    env = connector_env(
        sim,
        api,
        work,
        **directory_env(work),
        MATTERMOST_CHANNEL_IDS=channel["id"],
        PREFECT_RUNNER_POLL_FREQUENCY="1",
    )
    log = (work / "serve.log").open("w")
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "mattermost-connector"), "serve"],
        env=env,
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    found: list[tuple[float, float]] = []
    try:
        wait(completed(api, 1), 300, "the start-up sync")
        (deployment_id,) = {r["deployment_id"] for r in sync_runs(api)}
        for index in range(runs):
            post(
                f"{api}/deployments/{deployment_id}/create_flow_run",
                {"state": {"type": "SCHEDULED"}},
            )
            wait(completed(api, index + 2), 120, f"served run {index + 1}")
        for run in sync_runs(api)[1:]:
            states = states_of(api, run["id"])
            found.append(
                (
                    seconds_between(states, "PENDING", "COMPLETED"),
                    seconds_between(states, "RUNNING", "COMPLETED"),
                )
            )
    finally:
        serve.terminate()
        serve.wait(30)
        log.close()
        sim.stop()
    return found


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="served no-op syncs")
    args = parser.parse_args()
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        found = measure(PREFECT_API_URL.value(), args.runs)
    print("| served no-op sync | runner took it -> Completed | Running -> Completed |")
    print("|---|---:|---:|")
    print(
        f"| {len(found)} runs | {spread([p for p, _ in found])} | {spread([r for _, r in found])} |"
    )


if __name__ == "__main__":
    main()
