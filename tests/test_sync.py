"""End to end: the sync flow on a real Prefect API, from the simulator to every destination."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mattermost_connector.config import TLP, MattermostSettings
from mattermost_connector.mattermost.channels import channel_context
from mattermost_connector.mattermost.client import MattermostClient
from mattermost_connector.state import StateStore
from mattermost_connector.stix import marking_id
from tests.checks import (
    assert_channel_complete,
    assert_valid_stix,
    channel_bundles,
    directory_bundles,
    expected_line,
    objects_by_id,
    queue_messages,
    worker_reports,
)
from tests.conftest import CONNECTOR_ID, OPENCTI_TOKEN, mattermost_env, offline_env, run_cli
from tests.fake_opencti import FakeOpenCTI
from tests.mattermost_sim import Demo

AMBER = marking_id(TLP.AMBER)


def contexts(demo: Demo) -> list:
    settings = MattermostSettings(
        domain="127.0.0.1",
        port=demo.sim.port,
        protocol="http",
        token=demo.token,
        channel_ids=[c["id"] for c in demo.channels],
    )
    with MattermostClient(settings) as client:
        return [channel_context(client, c["id"], settings.server_url)[0] for c in demo.channels]


def demo_posts(demo: Demo) -> list[int]:
    """The posts a user sees in each demo channel, counted on the server."""
    return [len(demo.sim.live_posts(c["id"])) for c in demo.channels]


def demo_files(demo: Demo, channel: dict) -> int:
    return sum(len(p["file_ids"]) for p in demo.sim.live_posts(channel["id"]))


def assert_demo_complete(demo: Demo, bundles: list[dict]) -> None:
    """Every post the server shows in each channel delivered once, as it is there."""
    objects = objects_by_id(bundles)
    found = [
        assert_channel_complete(demo.sim, ctx, objects, AMBER, bundles) for ctx in contexts(demo)
    ]
    assert all(found)  # no channel passed for being empty
    names = {o["name"] for o in objects.values() if o["type"] == "channel"}
    assert names == {
        "threat-intel/ioc-sharing",
        "threat-intel/incident-42",
        "direct/@alice,@octi-reader",
    }


def test_sync_flow_to_directory_then_rerun_adds_only_new_posts(
    prefect_api, directory_env, demo, workdir
):
    from mattermost_prefect.flows.sync import mattermost_sync

    state = mattermost_sync(return_state=True)
    assert state.is_completed(), state.message
    report = state.result()
    assert [r["status"] for r in report] == ["completed"] * 3
    bundles = directory_bundles(workdir / "bundles")
    assert_valid_stix(bundles)
    assert_demo_complete(demo, bundles)
    first_files = set((workdir / "bundles").glob("*.json"))
    store = StateStore(directory_env["CONNECTOR_STATE_DATABASE_URL"])
    assert {r.status for r in store.runs()} == {"completed"}
    assert sum(r.posts for r in store.runs()) == sum(demo_posts(demo))

    # a second run delivers only what is new, under the same ids
    sharing = demo.channels[0]
    new = demo.sim.add_post(sharing, demo.users[1], "fresh indicator 203.0.113.7")
    state = mattermost_sync(return_state=True)
    assert state.is_completed()
    assert [r["posts"] for r in state.result()] == [1, 0, 0]
    added = set((workdir / "bundles").glob("*.json")) - first_files
    (only,) = added
    delivered = [o for o in json.loads(only.read_text())["objects"] if o["type"] == "media-content"]
    assert [o["content"] for o in delivered] == [new["message"]]
    assert_demo_complete(demo, directory_bundles(workdir / "bundles"))


def test_inaccessible_channels_fail_alone(prefect_api, workdir, demo, monkeypatch):
    """Channels readable when the run was checked (check.preflight) but not any more when
    the flow reaches them: each fails alone, the others are synced."""
    sim = demo.sim
    reader = sim.state.users[sim.state.tokens[demo.token]]
    team = sim.add_team("other")
    doomed = sim.add_channel(team, "doomed", type="P", members=[reader])
    forbidden = sim.add_channel(team, "secret", type="P", members=[reader])
    unknown = doomed["id"]
    asked = []

    def revoke(path: str, query: dict) -> None:
        if path.endswith("/users/me"):
            asked.append(path)
            if len(asked) == 2:  # the flow's own first request, after the preflight
                sim.state.channels.pop(doomed["id"])
                sim.state.members[forbidden["id"]].discard(reader["id"])

    sim.on_request = revoke
    env = {
        **mattermost_env(demo),
        "MATTERMOST_CHANNEL_IDS": ",".join(
            [unknown, demo.channels[1]["id"], forbidden["id"], demo.channels[2]["id"]]
        ),
        **offline_env(workdir),
    }
    result = run_cli(["sync"], env, workdir, prefect_api)
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert (
        lines[0]
        == f"channel {unknown}: FAILED: channel {unknown} is not accessible: 404 app.channel.get.existing.app_error"
    )
    assert lines[1].endswith(f"(threat-intel/incident-42): {expected_line(sim, demo.channels[1])}")
    assert (
        lines[2]
        == f"channel {forbidden['id']}: FAILED: channel {forbidden['id']} is not accessible: 403 api.context.permissions.app_error"
    )
    assert lines[3].endswith(
        f"(direct/@alice,@octi-reader): {expected_line(sim, demo.channels[2])}"
    )
    assert "sync failed: 2 of 4 channels failed" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    store = StateStore(env["CONNECTOR_STATE_DATABASE_URL"])
    errors = {r.channel_id: r.error for r in store.runs() if r.status == "failed"}
    assert "app.channel.get.existing.app_error" in errors[unknown]
    assert "api.context.permissions.app_error" in errors[forbidden["id"]]
    assert store.cursor(demo.channels[1]["id"]) and store.cursor(demo.channels[2]["id"])
    assert store.cursor(unknown) is None
    # no retry storm on a channel that cannot become readable: the preflight's request, the
    # one naming its task run (never synced: flows/names.named_before_running), then the
    # pipeline's single one
    assert sum(1 for r in sim.requests if r.path.endswith(unknown)) == 3


def test_bad_token_refused_before_prefect_starts(workdir, demo):
    env = {
        **mattermost_env(demo),
        "MATTERMOST_TOKEN": "revoked-token-abcdef",
        "CONNECTOR_SEND_TO_QUEUE": "false",
        "CONNECTOR_SEND_TO_DIRECTORY": "true",
        "CONNECTOR_STATE_DATABASE_URL": f"sqlite:///{workdir / 'state.db'}",
    }
    result = run_cli(["sync"], env, workdir)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: Mattermost refused the token (401 api.context.session_expired.app_error): "
        "check MATTERMOST_TOKEN"
    )
    assert len(demo.sim.requests) == 1  # GET /users/me; no channel tried
    assert "revoked-token-abcdef" not in result.stdout + result.stderr


def queue_env(demo: Demo, platform: FakeOpenCTI, workdir: Path, protocol: str) -> dict[str, str]:
    return {
        **mattermost_env(demo),
        "OPENCTI_URL": platform.url,
        "OPENCTI_TOKEN": OPENCTI_TOKEN,
        "CONNECTOR_ID": CONNECTOR_ID,
        "CONNECTOR_QUEUE_PROTOCOL": protocol,
        "CONNECTOR_STATE_DATABASE_URL": f"sqlite:///{workdir / 'state.db'}",
        "MATTERMOST_DEBUG": "true",
    }


def assert_platform_lifecycle(platform: FakeOpenCTI, demo: Demo) -> None:
    assert platform.operations().count("RegisterConnector") == 1
    assert "deleteConnector" not in " ".join(platform.operations())
    works = list(platform.works.values())
    assert len(works) == 3
    assert all(w.status == "complete" and w.in_error is False for w in works)
    # channels run concurrently: their works open in any order
    (ioc,) = [w for w in works if "threat-intel/ioc-sharing" in w.friendly_name]
    sharing = demo.channels[0]
    posts, files = len(demo.sim.live_posts(sharing["id"])), demo_files(demo, sharing)
    assert ioc.message.startswith(f"{posts} posts, {files} files")
    state = json.loads(platform.states[CONNECTOR_ID])
    assert set(state["channels"]) == {c["id"] for c in demo.channels}


@pytest.mark.amqp
@pytest.mark.parametrize("split", [False, True], ids=["bundle-per-message", "object-per-message"])
def test_cli_sync_through_rabbitmq(prefect_api, workdir, demo, platform, push_queue, split):
    env = {**queue_env(demo, platform, workdir, "amqp"), "CONNECTOR_SPLIT_BUNDLES": str(split)}
    result = run_cli(["sync"], env, workdir, prefect_api)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert OPENCTI_TOKEN not in output and demo.token not in output
    assert "GET /api/v4/channels/" in output  # debug mode traces requests, never the token
    messages = queue_messages(push_queue)
    bundles = [m["bundle"] for m in messages]
    assert_demo_complete(demo, bundles)
    assert_platform_lifecycle(platform, demo)
    if split:  # pycti's splitter: one object per message, in dependency order
        assert all(len(m["bundle"]["objects"]) == 1 and not m["no_split"] for m in messages)
    else:  # as delivered: marking, channel and authors first in each, each whole
        assert all(m["no_split"] for m in messages)
        assert [b["objects"][0]["type"] for b in bundles] == ["marking-definition"] * len(bundles)
        assert [b["objects"][1]["type"] for b in bundles] == ["channel"] * len(bundles)
        assert_valid_stix(bundles)
    # the works expect exactly what the platform's worker will report, object by object
    expected = sum(w.expectations for w in platform.works.values())
    assert expected == worker_reports(messages) == sum(len(b["objects"]) for b in bundles)


def test_cli_sync_through_the_api_transport(prefect_api, workdir, demo, platform):
    env = queue_env(demo, platform, workdir, "api")
    result = run_cli(["sync"], env, workdir, prefect_api)
    assert result.returncode == 0, result.stderr[-3000:]
    bundles = [push["bundle"] for push in platform.pushed_bundles]
    assert {push["work_id"] for push in platform.pushed_bundles} <= set(platform.works)
    assert_valid_stix(bundles[:3])
    assert_demo_complete(demo, bundles)
    assert_platform_lifecycle(platform, demo)


def test_cli_sync_to_directory_as_a_user_would(prefect_api, workdir, directory_env, demo):
    result = run_cli(["sync"], directory_env, workdir, prefect_api)
    assert result.returncode == 0, result.stderr[-3000:]
    bundles = directory_bundles(workdir / "bundles")
    channel = demo.channels[0]
    own = channel_bundles(bundles, "threat-intel/ioc-sharing")
    assert result.stdout.splitlines()[0].endswith(
        f"(threat-intel/ioc-sharing): {expected_line(demo.sim, channel, own)}"
    )
    assert_demo_complete(demo, bundles)
