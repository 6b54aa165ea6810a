"""Archived channels: imported when the server lets the account read them, skipped in one line
(not failed, not retried) when it refuses (403 api.user.view_archived_channels...)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mattermost_connector.state import StateStore
from tests.checks import channel_bundles, directory_bundles, expected_line, objects_by_id
from tests.conftest import mattermost_env, offline_env, run_cli
from tests.mattermost_sim import MattermostSimulator
from tests.support import World, report_of

REFUSED = "api.user.view_archived_channels.get_posts_for_channel.app_error"


@pytest.fixture
def world(prefect_api: str, sim: MattermostSimulator, workdir: Path, monkeypatch) -> World:
    return World(sim, workdir, monkeypatch)


def test_a_readable_archived_channel_is_imported_and_says_it_is_archived(world: World):
    channel = world.channel("old-case", purpose="closed incident")
    world.populate(channel, 20)
    world.sim.archive_channel(channel["id"], world.authors[0])
    world.configure([channel])
    (report,) = world.sync()
    assert report["status"] == "completed" and report["posts"] == 20  # the archive message is a
    assert report["skipped"] == 1  # system message: skipped unless asked for
    (described,) = [o for o in objects_by_id(world.bundles()).values() if o["type"] == "channel"]
    assert described["description"].startswith("Purpose: closed incident\nArchived on 20")
    delivered = world.deliveries(channel, world.bundles())
    assert len(delivered) == 20 and set(delivered.values()) == {1}


def test_an_archived_channel_the_server_refuses_is_skipped_not_failed(world: World):
    archived, live = world.channel("archived"), world.channel("live")
    world.populate(archived, 10)
    world.populate(live, 10)
    world.sim.archive_channel(archived["id"], world.authors[0])
    world.sim.view_archived_channels = False
    world.configure([archived, live])
    started = time.monotonic()
    skipped, done = world.sync()  # the flow ends Completed: asserted by sync()
    assert time.monotonic() - started < 30  # no retry delays (10 s + 30 s before)
    assert skipped["status"] == "archived" and skipped["posts"] == 0
    assert skipped["error"] == (
        "archived, and the server lets no one read archived channels "
        "(TeamSettings.ExperimentalViewArchivedChannels is off): skipped"
    )
    assert done["status"] == "completed" and done["posts"] == 10
    refused = [r for r in world.sim.requests if r.path.endswith(f"{archived['id']}/posts")]
    assert [r.status for r in refused] == [403]  # asked once: asking again cannot help
    runs = StateStore(f"sqlite:///{world.workdir / 'state.db'}").runs(channel_id=archived["id"])
    assert [r.status for r in runs] == ["archived"]


def test_a_403_or_404_on_a_channel_is_not_retried(world: World):
    """Whatever the id, such an answer does not change by asking again: one request, no
    waiting (the channel still fails: it was readable when the run opened it)."""
    from mattermost_prefect.flows.sync import mattermost_sync

    forbidden, gone = world.channel("forbidden"), world.channel("gone")
    for channel, status in ((forbidden, 403), (gone, 404)):
        world.populate(channel, 5)
        world.sim.faults.failing_paths[f"/api/v4/channels/{channel['id']}/posts"] = status
    world.configure([forbidden, gone])
    started = time.monotonic()
    state = mattermost_sync(return_state=True)
    assert time.monotonic() - started < 30
    reports = report_of(state)
    assert [r["status"] for r in reports] == ["failed", "failed"]
    assert reports[0]["error"].endswith("403 app.fault.injected Injected fault")
    listings = [r for r in world.sim.requests if r.path.endswith("/posts")]
    assert len(listings) == 2


def test_cli_reports_a_refused_archived_channel_in_one_line_and_succeeds(
    prefect_api, workdir, demo
):
    sharing, incident, _ = demo.channels
    demo.sim.archive_channel(incident["id"], demo.users[1])
    demo.sim.view_archived_channels = False
    env = {
        **mattermost_env(demo, [incident, sharing]),
        **offline_env(workdir),
    }
    result = run_cli(["sync"], env, workdir, prefect_api)
    assert result.returncode == 0, result.stderr[-2000:]
    first, second = result.stdout.strip().splitlines()
    assert first == (
        f"channel {incident['id']} (threat-intel/incident-42): archived, and the server lets "
        "no one read archived channels (TeamSettings.ExperimentalViewArchivedChannels is off): "
        "skipped"
    )
    bundles = channel_bundles(directory_bundles(workdir / "bundles"), "threat-intel/ioc-sharing")
    assert second.endswith(
        f"(threat-intel/ioc-sharing): {expected_line(demo.sim, sharing, bundles)}"
    )
    assert REFUSED not in result.stdout


def test_a_post_by_a_user_the_account_may_not_see_is_imported_with_its_author_unnamed(
    world: World,
):
    """POST /users/ids leaves such users out (the simulator, like the server): the post
    still comes in, its author an identity that says it could not be seen."""
    channel = world.channel("restricted")
    stranger = world.sim.add_user("stranger")
    world.sim.state.members[channel["id"]].add(stranger["id"])
    world.sim.hide_user(stranger["id"])
    post = world.sim.add_post(channel, stranger, "from someone hidden")
    world.configure([channel])
    (report,) = world.sync()
    assert report["status"] == "completed" and report["posts"] == 1
    identities = [o for o in objects_by_id(world.bundles()).values() if o["type"] == "identity"]
    (author,) = identities
    assert "not visible to the connector's account" in author["description"]
    assert stranger["username"] not in author["name"]
    assert world.deliveries(channel, world.bundles())[post["id"]] == 1
