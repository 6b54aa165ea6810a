"""Claims the README makes that no other test would catch breaking: flow parameters, the
change scan's look-back, what a reply's bump of update_at re-sends, backfills of threads,
channel leases, the scheduled deployment, the configuration table, and logs kept by Prefect."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from mattermost_connector.state import StateStore
from tests.conftest import OPENCTI_TOKEN, run_cli
from tests.mattermost_sim import MattermostSimulator
from tests.support import TOKEN, World

ROOT = Path(__file__).resolve().parents[1]
SECOND = 1000


@pytest.fixture
def world(prefect_api: str, sim: MattermostSimulator, workdir: Path, monkeypatch) -> World:
    return World(sim, workdir, monkeypatch)


def spaced(world: World, channel: dict, count: int, start_ms: int) -> list[dict]:
    """`count` root posts one second apart from `start_ms`."""
    return [
        world.sim.add_post(channel, world.authors[i % 3], f"{channel['name']} {i}", create_at=at)
        for i, at in enumerate(range(start_ms, start_ms + count * SECOND, SECOND))
    ]


def test_sync_flow_takes_channel_ids_and_start_timestamp(world: World):
    from mattermost_prefect.flows.sync import mattermost_sync

    configured, asked = world.channel("configured"), world.channel("asked")
    spaced(world, configured, 5, 1_700_000_000_000)
    posts = spaced(world, asked, 30, 1_700_000_000_000)
    world.configure([configured, asked], MATTERMOST_START_TIMESTAMP="0")
    state = mattermost_sync(
        channel_ids=[asked["id"]], start_timestamp=1_700_000_010, return_state=True
    )
    assert state.is_completed(), state.message
    (report,) = state.result()
    assert (report["channel_id"], report["posts"]) == (asked["id"], 20)
    assert set(world.deliveries(asked, world.bundles())) == {p["id"] for p in posts[10:]}
    store = StateStore(f"sqlite:///{world.workdir / 'state.db'}")
    assert store.cursor(configured["id"]) is None  # not asked: not run
    # the parameter only places a first sync: the channel now resumes from its cursor
    reports = world.sync()
    assert [(r["channel_id"], r["posts"]) for r in reports] == [
        (configured["id"], 5),
        (asked["id"], 0),
    ]


def test_cli_sync_channel_runs_only_that_channel(world: World, prefect_api: str):
    configured, asked = world.channel("configured"), world.channel("asked")
    spaced(world, configured, 3, 1_700_000_000_000)
    spaced(world, asked, 4, 1_700_000_000_000)
    env = {
        "MATTERMOST_DOMAIN": "127.0.0.1",
        "MATTERMOST_PORT": str(world.sim.port),
        "MATTERMOST_PROTOCOL": "http",
        "MATTERMOST_TOKEN": TOKEN,
        "MATTERMOST_CHANNEL_IDS": configured["id"],
        "CONNECTOR_SEND_TO_QUEUE": "false",
        "CONNECTOR_SEND_TO_DIRECTORY": "true",
        "CONNECTOR_SEND_TO_DIRECTORY_PATH": str(world.workdir / "bundles"),
        "CONNECTOR_STATE_DATABASE_URL": f"sqlite:///{world.workdir / 'state.db'}",
    }
    result = run_cli(["sync", "--channel", asked["id"]], env, world.workdir, prefect_api)
    assert result.returncode == 0, result.stderr[-2000:]
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith(f"channel {asked['id']} (cti/asked): ok, 4 posts")
    store = StateStore(env["CONNECTOR_STATE_DATABASE_URL"])
    assert store.cursor(configured["id"]) is None and store.cursor(asked["id"])


def test_an_edit_stamped_before_a_run_but_seen_after_its_scan_is_taken_next(world: World):
    """The change watermark moves to the run's start by the server's Date header, less a
    margin. An edit whose update_at is earlier than that (another app node's clock, or a
    transaction still open while the run scanned) is still found by the next run."""
    channel = world.channel("edits")
    posts = spaced(world, channel, 20, 1_700_000_000_000)
    world.configure([channel])
    world.sync()
    spaced(world, channel, 5, 1_700_000_100_000)
    started_ms = int(time.time() * 1000)
    world.sync()  # reads the 5 new posts, scans changes, then moves the watermark
    edited = world.sim.edit_post(posts[3]["id"], "edited during the last run")
    stamped = started_ms - 2 * SECOND  # before the run's Date header, inside the margin
    edited.update(edit_at=stamped, update_at=stamped)
    (report,) = world.sync()
    assert report["updated"] == 1
    assert world.deliveries(channel, world.bundles(latest_run_only=True)) == Counter(
        {posts[3]["id"]: 1}
    )


def test_a_new_reply_bumping_its_root_re_sends_nothing_through_since(world: World):
    channel = world.channel("threads")
    posts = spaced(world, channel, 40, 1_700_000_000_000)
    world.configure([channel])
    world.sync()
    root = posts[5]
    reply = world.sim.add_post(channel, world.authors[1], "a late reply", root=root)
    assert world.sim.state.posts[root["id"]]["update_at"] == reply["create_at"]
    count = len(world.sim.requests)
    (report,) = world.sync()
    assert (report["posts"], report["updated"], report["deleted"]) == (1, 0, 0)
    assert world.deliveries(channel, world.bundles(latest_run_only=True)) == Counter(
        {reply["id"]: 1}
    )
    # the change scan went through `since`, and the server did answer the bumped root there
    (scan,) = [r for r in world.sim.requests[count:] if "since" in r.query]
    since = int(scan.query["since"][0])
    assert world.sim.state.posts[root["id"]]["update_at"] > since


def test_a_backfill_brings_a_root_from_before_its_window_once(world: World):
    from mattermost_prefect.flows.backfill import mattermost_backfill

    channel = world.channel("old-threads")
    root = world.sim.add_post(channel, world.authors[0], "old root", create_at=1_600_000_000_000)
    replies = [
        world.sim.add_post(
            channel, world.authors[1], f"reply {i}", root=root, create_at=1_700_000_000_000 + i
        )
        for i in range(3)
    ]
    world.configure([channel])
    for start, end in (("1690000000", "1700000000.002"), ("1700000000.002", "1710000000")):
        state = mattermost_backfill(channel["id"], start, end, return_state=True)
        assert state.is_completed(), state.message
    counts = world.deliveries(channel, world.bundles())
    assert counts == Counter({root["id"]: 1, **{r["id"]: 1 for r in replies}})
    fetched = [r.path for r in world.sim.requests].count(f"/api/v4/posts/{root['id']}")
    assert fetched == 1


def test_a_run_longer_than_its_lease_keeps_the_channel_while_another_waits(
    directory_env, monkeypatch
):
    """The holder renews its lease every third of it: a second run waits however long the
    first one takes, and starts as soon as it releases the channel."""
    from mattermost_connector.pipeline import lease
    from mattermost_prefect.tasks import resources

    monkeypatch.setattr(lease, "LEASE_SECONDS", 0.6)
    monkeypatch.setattr(lease, "POLL_SECONDS", 0.05)
    channel = "c" * 26
    store, connector = resources.store(), resources.settings().connector
    held = lease.acquire(store, connector, channel, "first")
    first = held.holder
    second: list[lease.HeldLease] = []
    waiter = threading.Thread(
        target=lambda: second.append(lease.acquire(store, connector, channel, "second")),
        daemon=True,
    )
    waiter.start()
    time.sleep(0.6 * 4)  # four leases long
    assert not second, "the competing run took a channel still in use"
    assert resources.store().lease_holder(channel)[0] == first
    held.release()
    waiter.join(5)
    assert second and resources.store().lease_holder(channel)[0] == second[0].holder
    second[0].release()


def test_the_scheduled_sync_runs_every_run_every_and_drops_a_run_that_would_overlap(
    directory_env, monkeypatch, capsys
):
    """What `serve` registers, read from the deployment objects the project builds, and what
    deployments/prefect.yaml declares for workers."""
    import yaml
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    from mattermost_connector.config import ConnectorSettings, load_settings
    from mattermost_prefect.cli import main
    from mattermost_prefect.deployments.serve import deployments

    monkeypatch.setenv("CONNECTOR_RUN_EVERY", "15m")
    sync, backfill = deployments(load_settings(None))
    (schedule,) = sync.schedules
    assert schedule.schedule.interval == timedelta(minutes=15)
    assert sync.concurrency_limit == 1
    assert sync.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    assert not backfill.schedules and backfill.concurrency_limit is None
    declared = {
        d["name"]: d
        for d in yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]
    }
    # the interval is what `mattermost-connector schedule` prints where `prefect deploy` runs
    prefect_file = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    (step,) = prefect_file["build"]
    shell = step["prefect.deployments.steps.run_shell_script"]
    assert shell["script"] == "mattermost-connector schedule"
    assert declared["sync"]["schedules"] == [
        {"rrule": f"{{{{ {shell['id']}.stdout }}}}", "timezone": "UTC"}
    ]
    start = r"DTSTART:\d{8}T\d{6}\nRRULE:"  # near now: test_config checks where
    assert main(["schedule"]) == 0
    assert re.fullmatch(f"{start}FREQ=MINUTELY;INTERVAL=15", capsys.readouterr().out.strip())
    monkeypatch.delenv("CONNECTOR_RUN_EVERY")
    assert main(["schedule"]) == 0
    default_every = ConnectorSettings.model_fields["run_every"].default
    assert default_every == timedelta(hours=1)
    assert re.fullmatch(f"{start}FREQ=HOURLY;INTERVAL=1", capsys.readouterr().out.strip())
    monkeypatch.setenv("CONNECTOR_RUN_EVERY", "90s")
    assert main(["schedule"]) == 0
    assert re.fullmatch(f"{start}FREQ=SECONDLY;INTERVAL=90", capsys.readouterr().out.strip())
    assert set(declared) == {"sync", "backfill", "channel"}
    assert declared["sync"]["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert "schedules" not in declared["backfill"]


def readme_configuration() -> dict[str, str]:
    """Variable -> the first value in its Default cell ("" for —), from README.md's table."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]*) \|", table, flags=re.M)
    defaults = {}
    for name, cell in rows:
        value = re.match(r"\s*`([^`]*)`", cell)
        defaults[name] = value.group(1) if value else ""
    return defaults


def test_the_readme_configuration_table_holds_the_settings_and_their_defaults(workdir, monkeypatch):
    from mattermost_connector import config

    required = {"MATTERMOST_DOMAIN": "chat.example.org", "MATTERMOST_TOKEN": "t"}
    required["MATTERMOST_CHANNEL_IDS"] = "a" * 26
    for name, value in required.items():
        monkeypatch.setenv(name, value)
    groups = {
        "OPENCTI_": config.OpenCTISettings,
        "CONNECTOR_": config.ConnectorSettings,
        "MATTERMOST_": config.MattermostSettings,
    }
    fields = {
        prefix + field.upper(): (group, field)
        for prefix, group in groups.items()
        for field in group.model_fields
    }
    documented = readme_configuration()
    assert set(documented) == set(fields)
    for name, shown in documented.items():
        group, field = fields[name]
        default = getattr(group(), field)
        if not shown:  # "—": required, or nothing unless set
            assert default in (None, []) or name in required, name
            continue
        monkeypatch.setenv(name, shown)
        assert getattr(group(), field) == default, f"{name}: README says {shown}"
        monkeypatch.delenv(name)


def test_no_token_in_the_logs_prefect_keeps(world: World, prefect_api: str):
    """Run as a user does (debug tracing on, 5xx to retry), then read back, through the
    Prefect API, every log line the run sent there."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterName,
        LogFilter,
        LogFilterFlowRunId,
        TaskRunFilter,
        TaskRunFilterName,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    channel = world.channel("logged")
    spaced(world, channel, 5, 1_700_000_000_000)
    env = {
        "MATTERMOST_DOMAIN": "127.0.0.1",
        "MATTERMOST_PORT": str(world.sim.port),
        "MATTERMOST_PROTOCOL": "http",
        "MATTERMOST_TOKEN": TOKEN,
        "MATTERMOST_CHANNEL_IDS": channel["id"],
        "MATTERMOST_DEBUG": "true",
        "MATTERMOST_KEEPALIVE_DELAY": "0.01",
        "OPENCTI_TOKEN": OPENCTI_TOKEN,
        "CONNECTOR_SEND_TO_QUEUE": "false",
        "CONNECTOR_SEND_TO_DIRECTORY": "true",
        "CONNECTOR_STATE_DATABASE_URL": f"sqlite:///{world.workdir / 'state.db'}",
    }
    world.sim.faults.error_rate = 0.3  # warnings naming the failed requests, too
    result = run_cli(["sync"], env, world.workdir, prefect_api)
    assert result.returncode == 0, result.stderr[-2000:]

    async def logs() -> list[str]:
        """The sync's run, its channel's task run included, as the UI shows them."""
        async with get_client() as client:
            (run,) = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["sync cti/logged"])),
                sort=FlowRunSort.START_TIME_DESC,
                limit=1,
            )
            channels = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=["cti/logged"])),
            )
            assert [channel.name for channel in channels] == ["cti/logged"]
            found = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=200
            )
            assert any(log.task_run_id == channels[0].id for log in found)
            return [log.message for log in found]

    messages = asyncio.run(logs())  # the CLI flushed its logs to the API before it exited
    assert any(f"GET /api/v4/channels/{channel['id']}/posts" in m for m in messages)
    assert any("failed (status" in m for m in messages)
    text = "\n".join(messages)
    assert TOKEN not in text and OPENCTI_TOKEN not in text
