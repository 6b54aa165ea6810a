"""Issue 13, fail fast: what would fail every channel is reported before Prefect starts, in
one line, within 5 s, with the exit codes of the CLI (1: the run cannot work)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from mattermost_connector.state import StateStore
from tests.conftest import CONNECTOR_ID, OPENCTI_TOKEN, mattermost_env, offline_env, run_cli
from tests.mattermost_sim import Demo

FAST = 5.0


def refused_port() -> int:
    """A port nothing listens on: connections to it are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sync(env: dict[str, str], workdir: Path) -> tuple[int, str, float]:
    started = time.monotonic()
    # no Prefect API given: a run that got as far as Prefect would start a temporary server
    result = run_cli(["sync"], env, workdir, timeout=60)
    took = time.monotonic() - started
    return result.returncode, result.stdout + result.stderr, took


def assert_one_line(output: str, *parts: str) -> None:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "Traceback" not in output and "prefect" not in output.lower(), output
    for part in parts:
        assert part in lines[0], output


def test_bad_token(workdir: Path, demo: Demo):
    env = {**mattermost_env(demo), **offline_env(workdir), "MATTERMOST_TOKEN": "revoked-token-x"}
    code, output, took = sync(env, workdir)
    assert code == 1 and took < FAST
    assert_one_line(output, "error: Mattermost refused the token (401", "MATTERMOST_TOKEN")
    assert "revoked-token-x" not in output
    assert StateStore(f"sqlite:///{workdir / 'state.db'}").runs() == []  # nothing started


def test_no_readable_channel(workdir: Path, demo: Demo):
    """Every listed channel unreadable: stopped at once, each named (one among readable
    ones does not stop the others: tests/test_channels.py)."""
    unknown, other = "u" * 26, "v" * 26
    env = {
        **mattermost_env(demo),
        **offline_env(workdir),
        "MATTERMOST_CHANNEL_IDS": f"{unknown},{other}",
    }
    code, output, took = sync(env, workdir)
    assert code == 1 and took < FAST
    assert_one_line(output, f"channel {unknown} is not accessible: 404", "MATTERMOST_CHANNEL_IDS")
    assert f"channel {other} is not accessible: 404" in output


def test_unknown_team(workdir: Path, demo: Demo):
    env = {**mattermost_env(demo), **offline_env(workdir), "MATTERMOST_TEAMS": "no-such-team"}
    code, output, took = sync(env, workdir)
    assert code == 1 and took < FAST
    assert_one_line(output, "MATTERMOST_TEAMS: 'no-such-team' is not a team", "threat-intel")


def test_unreachable_mattermost(workdir: Path, demo: Demo):
    env = {**mattermost_env(demo), **offline_env(workdir), "MATTERMOST_PORT": str(refused_port())}
    code, output, took = sync(env, workdir)
    assert code == 1 and took < FAST
    assert_one_line(output, "error: Mattermost at http://127.0.0.1:", "refused", "MATTERMOST_PORT")


def test_unreachable_platform(workdir: Path, demo: Demo):
    env = {
        **mattermost_env(demo),
        "OPENCTI_URL": f"http://127.0.0.1:{refused_port()}",
        "OPENCTI_TOKEN": OPENCTI_TOKEN,
        "CONNECTOR_ID": CONNECTOR_ID,
        "CONNECTOR_STATE_DATABASE_URL": f"sqlite:///{workdir / 'state.db'}",
    }
    code, output, took = sync(env, workdir)
    assert code == 1 and took < FAST
    assert_one_line(output, "error: OpenCTI at http://127.0.0.1:", "not reachable", "OPENCTI_URL")
    assert OPENCTI_TOKEN not in output


def test_server_gone_when_the_flow_starts_is_one_run_failure(
    prefect_api, sim, workdir, monkeypatch
):
    """Past the CLI's check (a scheduled run under `serve`): one run-level failure after the
    bounded retries (the client's, then its task's budget, here one short retry), no channel
    run, no task retries multiplied per channel."""
    from mattermost_prefect.flows.sync import mattermost_sync
    from tests.support import World

    world = World(sim, workdir, monkeypatch)
    channels = [world.channel(f"c{i}") for i in range(3)]
    world.configure(channels, CONNECTOR_DELIVERY_RETRIES="1", CONNECTOR_DELIVERY_RETRY_DELAY="0.1")
    sim.stop()
    started = time.monotonic()
    state = mattermost_sync(return_state=True)
    assert state.is_failed()
    assert state.message.startswith("GET /users/me: gave up after 5 attempts"), state.message
    assert "\n" not in state.message
    assert time.monotonic() - started < 30
    assert StateStore(f"sqlite:///{workdir / 'state.db'}").runs() == []


def test_server_gone_mid_run_stops_the_run_after_one_channels_retries(
    prefect_api, sim, workdir, monkeypatch
):
    """Past the probe: the first channel to find the server gone fails after its bounded
    retries (the client's, then its task's), and stops the run: no other channel starts to
    wait out the same retries (one run-level failure, not one per channel)."""
    import mattermost_prefect.flows.sync as sync_flow
    from tests.support import World, report_of

    world = World(sim, workdir, monkeypatch)
    channels = [world.channel(f"c{i}") for i in range(3)]
    for channel in channels:
        world.populate(channel, 3)
    world.configure(
        channels,
        CONNECTOR_CHANNEL_CONCURRENCY="1",
        CONNECTOR_DELIVERY_RETRIES="1",
        CONNECTOR_DELIVERY_RETRY_DELAY="0.1",
    )
    real_run_channels = sync_flow.run_channels

    def server_gone_then_run(*args, **kwargs):
        sim.faults.drop_rate = 1.0  # every request's connection dropped, kept-alive ones too
        return real_run_channels(*args, **kwargs)

    monkeypatch.setattr(sync_flow, "run_channels", server_gone_then_run)
    state = sync_flow.mattermost_sync(return_state=True)

    assert state.is_failed()
    assert state.message.startswith("run stopped: GET /channels/"), state.message
    assert "gave up after 5 attempts" in state.message and "\n" not in state.message
    runs = StateStore(f"sqlite:///{workdir / 'state.db'}").runs()
    assert len(runs) == 1 and runs[0].status == "failed", runs
    assert "gave up after 5 attempts" in runs[0].error
    assert report_of(state) == []
