"""Issue 13: channels found on the server at each run (MATTERMOST_TEAMS, direct messages,
exclusions), the cost of a channel with nothing new, and a busy channel's full check."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mattermost_connector.config import MattermostSettings
from mattermost_connector.mattermost.discovery import discover
from mattermost_connector.state import StateStore
from mattermost_connector.status import report as status_report
from tests.mattermost_sim import MattermostSimulator
from tests.support import TOKEN, World, make_client


@pytest.fixture
def world(sim: MattermostSimulator, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    return World(sim, workdir, monkeypatch)


def by_name(report: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in report}


def posts_requests(sim: MattermostSimulator, since: int) -> Counter:
    """Requests per channel id since the request log's index `since`, of any kind."""
    counts: Counter = Counter()
    for request in sim.requests[since:]:
        parts = request.path.split("/")
        if len(parts) > 4 and parts[3] == "channels":
            counts[parts[4]] += 1
    return counts


def task_runs_of_last_flow_run() -> list[str]:
    """The task runs' names (without Prefect's suffix) of the latest flow run, once the API
    has them all (task runs reach it as events, a moment later)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    names: list[str] = []
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
        for _ in range(20):
            found = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
            )
            if len(found) == len(names) and names:
                break
            names = [t.name.rsplit("-", 1)[0] for t in found]
            time.sleep(0.5)
    return names


def test_teams_find_every_readable_channel_and_a_new_one_at_the_next_run(prefect_api, world):
    sim = world.sim
    general = world.channel("general")
    world.populate(general, 5)
    joined = sim.add_channel(world.team, "not-joined", members=[world.authors[0]])
    world.populate(joined, 3)  # public: readable by the team's members without joining
    hidden = sim.add_channel(world.team, "hidden", type="P", members=[world.authors[0]])
    world.populate(hidden, 2)  # private, reader not a member: not readable, not found
    old = world.channel("old")
    world.populate(old, 2)
    sim.archive_channel(old["id"], world.authors[0])
    outside = sim.add_channel(sim.add_team("elsewhere"), "x", members=[world.authors[1]])
    world.configure([], MATTERMOST_TEAMS="cti")

    first = by_name(world.sync())
    assert set(first) == {"cti/general", "cti/not-joined", "cti/old"}
    assert [first[n]["posts"] for n in ("cti/general", "cti/not-joined")] == [5, 3]
    assert first["cti/old"]["posts"] == 2  # archived, still read (system messages left out)
    assert hidden["id"] not in {r["channel_id"] for r in first.values()}
    assert outside["id"] not in {r["channel_id"] for r in first.values()}

    created = world.channel("created-between-runs")
    world.populate(created, 4)
    second = by_name(world.sync())
    assert second["cti/created-between-runs"]["posts"] == 4
    assert {second[n]["note"] for n in ("cti/general", "cti/not-joined", "cti/old")} == {
        "unchanged"
    }
    world.assert_complete(created)
    store = StateStore(f"sqlite:///{world.workdir / 'state.db'}")
    text = status_report(store, runs=20)
    assert "cti/created-between-runs" in text and "unchanged" in text


def test_exclusions_and_direct_messages_only_when_asked(prefect_api, world):
    sim = world.sim
    kept, dropped = world.channel("kept"), world.channel("dropped")
    direct = sim.add_direct_channel(world.reader, world.authors[0])
    group = sim.add_channel(
        None, "g" * 26, type="G", members=[world.reader, *world.authors[:2]], display_name="x"
    )
    for channel in (kept, dropped, direct, group):
        world.populate(channel, 2)
    world.configure([], MATTERMOST_TEAMS="*", MATTERMOST_EXCLUDE_CHANNEL_IDS=dropped["id"])
    assert {r["channel_id"] for r in world.sync()} == {kept["id"]}

    world.configure(
        [],
        MATTERMOST_TEAMS="*",
        MATTERMOST_EXCLUDE_CHANNEL_IDS=dropped["id"],
        MATTERMOST_INCLUDE_DIRECT_MESSAGES="true",
    )
    report = {r["channel_id"]: r for r in world.sync()}
    assert set(report) == {kept["id"], direct["id"], group["id"]}
    assert report[direct["id"]]["posts"] == 2 and report[group["id"]]["posts"] == 2
    assert report[direct["id"]]["name"] == "direct/@alice,@reader"

    # direct messages alone, without any team named
    world.configure([], MATTERMOST_TEAMS="", MATTERMOST_INCLUDE_DIRECT_MESSAGES="true")
    last = world.sync()
    assert {r["channel_id"] for r in last} == {direct["id"], group["id"]}, last


def test_listings_are_paged_beyond_200_channels(sim: MattermostSimulator):
    reader = sim.add_user("reader", token=TOKEN)
    team = sim.add_team("big", members=[reader])
    public = [
        sim.add_channel(team, f"c{i:03d}", members=[sim.add_user(f"u{i}")]) for i in range(430)
    ]
    archived = [sim.add_channel(team, f"a{i:03d}") for i in range(201)]
    for channel in archived:
        sim.archive_channel(channel["id"], reader)
    mine = sim.add_channel(team, "mine", type="P", members=[reader])
    settings = MattermostSettings(
        domain="127.0.0.1", port=sim.port, protocol="http", token=TOKEN, teams=["big"]
    )
    with make_client(sim, TOKEN) as client:
        selection = discover(client, settings)
    assert set(selection.channel_ids) == {c["id"] for c in (*public, *archived, mine)}
    pages = Counter(
        (r.path.rsplit("/", 1)[-1], r.query["per_page"][0], r.query["page"][0])
        for r in sim.requests
        if r.path.endswith(("/channels", "/deleted")) and "page" in r.query
    )
    assert set(pages) == {
        ("channels", "200", "0"),
        ("channels", "200", "1"),
        ("channels", "200", "2"),
        ("deleted", "200", "0"),
        ("deleted", "200", "1"),
    }
    assert selection.name(mine["id"]) == "big/mine"


def test_an_unchanged_channel_costs_two_requests_at_most(prefect_api, world):
    channels = [world.channel(f"quiet-{i}") for i in range(4)]
    for channel in channels:
        world.populate(channel, 3)
    world.configure(channels)
    world.sync()
    mark = len(world.sim.requests)
    report = world.sync()
    assert [r["note"] for r in report] == ["unchanged"] * 4
    per_channel = posts_requests(world.sim, mark)
    assert per_channel == Counter({c["id"]: 2 for c in channels})  # metadata, then `since`
    since = [r for r in world.sim.requests[mark:] if r.path.endswith("/posts")]
    assert all("since" in r.query for r in since) and len(since) == 4
    assert sorted(task_runs_of_last_flow_run()) == [
        "probe-channels",
        "publish-report",
        "select-channels",
    ]

    # found by MATTERMOST_TEAMS, the listing holds the metadata: one request per channel
    world.configure([], MATTERMOST_TEAMS="cti")
    mark = len(world.sim.requests)
    assert [r["note"] for r in world.sync()] == ["unchanged"] * 4
    assert posts_requests(world.sim, mark) == Counter({c["id"]: 1 for c in channels})

    # an edit or a new post is noticed and delivered by the full pipeline
    edited = world.sim.live_posts(channels[1]["id"])[0]
    world.sim.edit_post(edited["id"], "edited text")
    world.sim.add_post(channels[2], world.authors[0], "new one")
    report = {r["channel_id"]: r for r in world.sync()}
    assert report[channels[1]["id"]]["updated"] == 1 and report[channels[2]["id"]]["posts"] == 1
    assert report[channels[0]["id"]]["note"] == "unchanged"


def test_busy_channel_pays_the_full_check_once(prefect_api, world):
    sim = world.sim
    busy = world.channel("busy")
    world.populate(busy, 10)
    world.configure([busy])
    world.sync()
    for index in range(1001):
        sim.add_post(busy, world.authors[index % 3], f"burst {index}")
    sim.advance_clock(60_000)  # the burst is a minute old when the next run starts
    mark = len(sim.requests)
    (row,) = world.sync()
    assert row["posts"] == 1001
    assert row["note"].startswith("full check: 1,000 or more posts changed")
    assert "CONNECTOR_RUN_EVERY" in row["note"]
    # the complete listing ran: it locates the channel's start by time (pages without
    # `after`), which the new-posts pass, resuming at its anchor, never does
    located = [
        r
        for r in sim.requests[mark:]
        if r.path.endswith("/posts") and not {"since", "after"} & r.query.keys()
    ]
    assert located
    store = StateStore(f"sqlite:///{world.workdir / 'state.db'}")
    # and it listed every post delivered: none is left for its sweep to call deleted
    (checking,) = store.runs(limit=1, channel_id=busy["id"])
    assert store.unseen(busy["id"], checking.id, created_from=0) == []
    assert "full check" in status_report(store)

    mark = len(sim.requests)
    (row,) = world.sync()
    assert row["note"] == "unchanged"
    assert posts_requests(sim, mark) == Counter({busy["id"]: 2})


def test_the_probe_never_moves_a_held_or_moved_cursor(tmp_path: Path):
    from mattermost_connector.cursor import Cursor

    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    old = Cursor(100, ("a",), "b", changes_ms=50, messages=(3, 100, 0))
    new = Cursor(100, ("a",), "b", changes_ms=90, messages=(3, 100, 0))
    for key in ("free", "held", "moved"):
        store.save_cursor(key, old)
    assert store.try_lease("held", "another-run", 60)
    store.save_cursor("moved", Cursor(120, ("c",), "a", changes_ms=50, messages=(4, 120, 0)))
    moved = store.advance_watermarks([(key, old, new) for key in ("free", "held", "moved")])
    assert moved == {"free"}
    assert store.cursor("free") == new and store.cursor("held") == old
    assert store.cursor("moved").boundary_ms == 120


def test_one_unreadable_channel_among_readable_ones_does_not_stop_the_others(
    demo, workdir, monkeypatch
):
    """A channel deleted in Mattermost, or one the account may not read, must not stop the
    whole connector: the preflight lets the run go, which imports the readable channels and
    fails each unreadable one with its reason (tests/test_sync.py). Only when no listed
    channel is readable does it stop, naming each with its reason."""
    from mattermost_connector.check import preflight
    from mattermost_connector.errors import ChannelNotAccessible
    from tests.support import settings_with

    sim = demo.sim
    outsider = sim.add_channel(sim.add_team("elsewhere"), "secret", type="P", members=[])
    unknown = "u" * 26
    env = {
        "MATTERMOST_DOMAIN": "127.0.0.1",
        "MATTERMOST_PORT": str(sim.port),
        "MATTERMOST_PROTOCOL": "http",
        "MATTERMOST_TOKEN": demo.token,
    }
    ids = [demo.channels[0]["id"], unknown, outsider["id"]]
    preflight(settings_with(monkeypatch, **env, MATTERMOST_CHANNEL_IDS=",".join(ids)))
    with pytest.raises(ChannelNotAccessible) as caught:
        preflight(settings_with(monkeypatch, **env, MATTERMOST_CHANNEL_IDS=",".join(ids[1:])))
    assert str(caught.value) == (
        f"channel {unknown} is not accessible: 404 app.channel.get.existing.app_error; "
        f"channel {outsider['id']} is not accessible: 403 api.context.permissions.app_error; "
        "check MATTERMOST_CHANNEL_IDS"
    )
