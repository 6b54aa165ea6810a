"""Prefect operations: backfills, per-channel locking, artifacts, status and check, PostgreSQL."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from mattermost_connector.mattermost.client import PER_PAGE
from mattermost_connector.pipeline.new_posts import BATCH_POSTS
from mattermost_connector.state import StateStore
from mattermost_connector.window import backfill_key, iso
from tests.conftest import clean_environ, run_cli
from tests.support import POSTGRES, TOKEN, World


@pytest.fixture
def world(prefect_api: str, sim, workdir: Path, monkeypatch) -> World:
    return World(sim, workdir, monkeypatch)


def env_of(world: World, channel: dict, **extra: str) -> dict[str, str]:
    return {
        "MATTERMOST_DOMAIN": "127.0.0.1",
        "MATTERMOST_PORT": str(world.sim.port),
        "MATTERMOST_PROTOCOL": "http",
        "MATTERMOST_TOKEN": TOKEN,
        "MATTERMOST_CHANNEL_IDS": channel["id"],
        "CONNECTOR_SEND_TO_QUEUE": "false",
        "CONNECTOR_SEND_TO_DIRECTORY": "true",
        "CONNECTOR_SEND_TO_DIRECTORY_PATH": str(world.workdir / "bundles"),
        "CONNECTOR_STATE_DATABASE_URL": f"sqlite:///{world.workdir / 'state.db'}",
        **extra,
    }


def store_of(world: World) -> StateStore:
    return StateStore(f"sqlite:///{world.workdir / 'state.db'}")


def test_backfill_takes_exactly_its_window_without_moving_the_sync_cursor(world: World):
    from mattermost_prefect.flows.backfill import mattermost_backfill

    channel = world.channel("history")
    posts = world.populate(channel, 900)
    world.configure([channel])
    world.sync()
    store = store_of(world)
    sync_cursor = store.cursor(channel["id"])
    synced = world.deliveries(channel, world.bundles())
    start, end = posts[200]["create_at"], posts[600]["create_at"]
    window = {p["id"] for p in world.sim.live_posts(channel["id"]) if start <= p["create_at"] < end}
    world.before = set((world.workdir / "bundles").glob("*.json"))
    state = mattermost_backfill(channel["id"], iso(start), str(end / 1000), return_state=True)
    assert state.is_completed(), state.message
    (report,) = state.result()
    assert report["kind"] == "backfill" and report["posts"] == len(window)
    backfilled = world.deliveries(channel, world.bundles(latest_run_only=True))
    assert set(backfilled) == window and set(backfilled.values()) == {1}
    assert set(backfilled) <= set(synced)  # the same ids as the sync: nothing new in OpenCTI
    assert store.cursor(channel["id"]) == sync_cursor
    assert store.cursor(backfill_key(channel["id"], start, end)).boundary_ms < end
    (run,) = [r for r in store.runs() if r.kind == "backfill"]
    assert run.status == "completed" and run.posts == len(window)


def test_an_interrupted_backfill_continues_where_it_stopped(world: World):
    from mattermost_prefect.flows.backfill import mattermost_backfill

    channel = world.channel("long-history")
    total = BATCH_POSTS + 1000
    posts = world.populate(channel, total)
    world.configure([channel])
    listings = []

    def revoke_token_midway(path: str, query: dict) -> None:
        if path.endswith("/posts") and "after" in query:
            listings.append(path)
            if len(listings) == BATCH_POSTS // PER_PAGE + 2:  # reading the second batch
                world.sim.state.tokens.pop(TOKEN)

    world.sim.on_request = revoke_token_midway
    start, end = posts[0]["create_at"], posts[-1]["create_at"] + 1
    state = mattermost_backfill(
        channel["id"], str(start / 1000), str(end / 1000), return_state=True
    )
    assert state.is_failed() and "check MATTERMOST_TOKEN" in state.message
    world.sim.on_request = None
    world.sim.state.tokens[TOKEN] = world.reader["id"]
    first = world.deliveries(channel, world.bundles())
    assert 0 < len(first) < total
    world.before = set((world.workdir / "bundles").glob("*.json"))
    state = mattermost_backfill(
        channel["id"], str(start / 1000), str(end / 1000), return_state=True
    )
    assert state.is_completed(), state.message
    second = world.deliveries(channel, world.bundles(latest_run_only=True))
    assert not set(first) & set(second)
    assert len(first) + len(second) == total


USE = "use ISO 8601 (2024-01-31 or 2024-01-31T12:00:00Z) or epoch seconds"


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (
            "2024-02-01",
            "2024-01-01",
            "end (2024-01-01T00:00:00Z) must be after start (2024-02-01T00:00:00Z): "
            "the window is [start, end)",
        ),
        ("last tuesday", "2024-01-01", f"start: 'last tuesday' is not a time: {USE}"),
        ("1700000000", "soon", f"end: 'soon' is not a time: {USE}"),
    ],
)
def test_backfill_window_errors_are_one_line(world: World, since: str, until: str, expected: str):
    channel = world.channel("w")
    result = run_cli(
        ["backfill", "--channel", channel["id"], "--since", since, "--until", until],
        env_of(world, channel),
        world.workdir,
    )
    assert result.returncode == 2
    assert result.stderr == f"configuration error: --since/--until: {expected}\n"


def test_backfill_of_an_unknown_channel_fails_clearly(world: World, prefect_api: str):
    channel = world.channel("known")
    unknown = "u" * 26
    result = run_cli(
        ["backfill", "--channel", unknown, "--since", "2024-01-01", "--until", "2024-02-01"],
        env_of(world, channel),
        world.workdir,
        prefect_api,
    )
    assert result.returncode == 1
    # refused before Prefect starts (check.preflight), in one line
    assert result.stderr.strip() == (
        f"error: channel {unknown} is not accessible: 404 app.channel.get.existing.app_error; "
        "check MATTERMOST_CHANNEL_IDS"
    )
    assert result.stdout == ""


def test_a_sync_and_a_backfill_of_one_channel_take_turns(world: World, prefect_api: str):
    channel = world.channel("contended")
    posts = world.populate(channel, 2500)
    world.sim.faults.latency = 0.01
    env = {**clean_environ(), **env_of(world, channel), "PREFECT_API_URL": prefect_api}
    binary = str(Path(sys.executable).parent / "mattermost-connector")
    start, end = str(posts[0]["create_at"] / 1000), str((posts[-1]["create_at"] + 1) / 1000)
    runs = [
        subprocess.Popen(
            [binary, "sync"],
            env=env,
            cwd=world.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ),
        subprocess.Popen(
            [binary, "backfill", "--channel", channel["id"], "--since", start, "--until", end],
            env=env,
            cwd=world.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ),
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    first, second = sorted(store_of(world).runs(), key=lambda r: r.started_at)
    assert {first.kind, second.kind} == {"sync", "backfill"}
    assert first.ended_at <= second.started_at  # one waited for the other's lock
    assert first.posts == second.posts == 2500
    assert set(world.deliveries(channel, world.bundles())) == {p["id"] for p in posts}


def test_artifacts_report_each_channel_without_secrets(world: World):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    channel = world.channel("observed")
    world.populate(channel, 40, files_every=10)
    world.configure([channel])
    world.sync()
    # the tests share one Prefect server: read this sync's artifacts only (a listing of every
    # run's stops at its page size)
    with get_client(sync_client=True) as client:
        (table,) = [
            a
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["mattermost-sync-report"])
                ),
                sort=ArtifactSort.CREATED_DESC,
                limit=10,
            )
            if "cti/observed" in str(a.data)
        ]
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[table.flow_run_id])
            )
        )
    (progress,) = [a for a in found if a.type == "progress" and a.key == "mattermost-sync-progress"]
    assert progress.data == 100.0
    (row,) = json.loads(table.data)
    assert (row["posts"], row["status"], row["name"]) == (40, "completed", "cti/observed")
    assert (row["files"], row["files by fate"]) == (4, "4 embedded")
    assert row["cursor before"] == "1970-01-01T00:00:00Z" and row["cursor after"] > "2023"
    assert TOKEN not in str([a.data for a in found])


def test_status_and_check(world: World, prefect_api: str):
    channel = world.channel("inspected")
    world.populate(channel, 30)
    env = env_of(world, channel)
    assert run_cli(["sync"], env, world.workdir, prefect_api).returncode == 0
    status = run_cli(["status"], env, world.workdir)
    assert status.returncode == 0
    assert channel["id"] in status.stdout and "completed" in status.stdout and "30" in status.stdout
    assert "cti/inspected" in status.stdout
    check = run_cli(["check"], env, world.workdir)
    assert check.returncode == 0, check.stdout
    assert "ok    Mattermost token: valid, acting as @reader" in check.stdout
    assert f"ok    channel {channel['id']} (cti/inspected): readable" in check.stdout
    assert "ok    state store: writable (sqlite)" in check.stdout
    outsider = world.sim.add_channel(world.team, "secret", type="P", members=[])
    bad = run_cli(
        ["check"],
        {
            **env,
            "MATTERMOST_CHANNEL_IDS": f"{channel['id']},{outsider['id']}",
            "MATTERMOST_TOKEN": TOKEN,
        },
        world.workdir,
    )
    assert bad.returncode == 1
    assert (
        f"FAIL  channel {outsider['id']}: channel {outsider['id']} is not accessible: 403 api.context.permissions.app_error"
        in bad.stdout
    )
    revoked = run_cli(["check"], {**env, "MATTERMOST_TOKEN": "revoked-1234"}, world.workdir)
    assert revoked.returncode == 1 and "FAIL  Mattermost token" in revoked.stdout
    assert "revoked-1234" not in revoked.stdout + revoked.stderr
    teams = run_cli(["check"], {**env, "MATTERMOST_TEAMS": "cti"}, world.workdir)
    # the private channel the reader is not in is neither readable nor found
    assert "ok    channels to sync: 1 (found now on the server)" in teams.stdout, teams.stdout
    unknown = run_cli(["check"], {**env, "MATTERMOST_TEAMS": "nope"}, world.workdir)
    assert unknown.returncode == 1
    assert "FAIL  MATTERMOST_TEAMS: 'nope' is not a team of the token's account" in unknown.stdout


def test_check_reports_the_platform(world: World, platform):
    from tests.conftest import CONNECTOR_ID, OPENCTI_TOKEN

    channel = world.channel("platformed")
    env = {
        **env_of(world, channel),
        "CONNECTOR_SEND_TO_QUEUE": "true",
        "OPENCTI_URL": platform.url,
        "OPENCTI_TOKEN": OPENCTI_TOKEN,
        "CONNECTOR_ID": CONNECTOR_ID,
    }
    result = run_cli(["check"], env, world.workdir)
    assert result.returncode == 0, result.stdout
    assert f"ok    OpenCTI at {platform.url}: reachable, version 6.9.0" in result.stdout
    assert "RegisterConnector" not in platform.operations()
    down = run_cli(["check"], {**env, "OPENCTI_URL": "http://127.0.0.1:9"}, world.workdir)
    assert down.returncode == 1 and "FAIL  OpenCTI at http://127.0.0.1:9" in down.stdout
    assert OPENCTI_TOKEN not in down.stdout + down.stderr


@pytest.mark.postgres
def test_a_sync_with_its_state_on_postgresql(world: World):
    schema = f"sync_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES)
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    try:
        channel = world.channel("pg")
        world.populate(channel, 1200)
        world.configure([channel], CONNECTOR_STATE_DATABASE_URL=url)
        world.sync()
        world.sim.edit_post(world.sim.live_posts(channel["id"])[5]["id"], "edited on pg")
        world.populate(channel, 10)
        (report,) = world.sync()
        assert (report["posts"], report["updated"]) == (10, 1)
        assert world.assert_complete(channel) == 1210
        assert StateStore(url).cursors()[0]["posts_delivered"] == 1210
    finally:
        from mattermost_prefect.tasks import resources

        resources.reset()
        with admin.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


# The Compose Specification's JSON schema, vendored (no network in CI): compose-spec/compose-spec,
# schema/compose-spec.json at commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6 (Apache-2.0).
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "compose-spec.json"
_VARIABLE = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?+])([^}]*))?\}|(\w+))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR:+other}, and $$ for a literal $."""

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3) or ""
        found = env.get(name)
        empty = found is None or (found == "" and operator and operator.startswith(":"))
        if operator in (":-", "-"):
            return argument if empty else found
        if operator in (":?", "?"):
            assert not empty, f"{name}: {argument}"
            return found
        if operator in (":+", "+"):
            return "" if empty else argument
        return found or ""

    return _VARIABLE.sub(value, text)


def test_compose_file_follows_the_compose_specification():
    """What `docker compose config` checks, without Docker: the file, its variables taken
    from .env.sample (.env is never committed), against the specification's schema; then
    the references the schema cannot see."""
    import jsonschema
    import yaml
    from dotenv import dotenv_values

    root = Path(__file__).resolve().parents[1]
    env = {k: v or "" for k, v in dotenv_values(root / ".env.sample").items()}
    compose = yaml.safe_load(interpolate((root / "docker-compose.yml").read_text(), env))
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    services, volumes = compose["services"], set(compose.get("volumes") or {})
    for name, service in services.items():
        assert set(service.get("depends_on") or ()) <= set(services), name
        for mount in service.get("volumes") or ():
            source = mount.split(":")[0] if isinstance(mount, str) else mount["source"]
            assert source.startswith((".", "/")) or source in volumes, (name, source)
        if "build" in service:
            context = service["build"] if isinstance(service["build"], str) else "."
            assert (root / context / "Dockerfile").is_file(), name
        for env_file in [service["env_file"]] if "env_file" in service else []:
            # .env is the user's copy of .env.sample: every variable it may set is there,
            # deprecated ones commented out (the catalog's linter flags them set)
            sample = (root / ".env.sample").read_text()
            offered = set(env) | set(re.findall(r"^# ([A-Z][A-Z0-9_]+)=", sample, flags=re.M))
            assert env_file == ".env" and offered >= set(readme_variables()), name


def readme_variables() -> list[str]:
    table = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = table.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([A-Z_]+)` \|", table, flags=re.M)


def test_prefect_yaml_declares_the_three_flows():
    import yaml

    from mattermost_prefect.flows.backfill import mattermost_backfill
    from mattermost_prefect.flows.channel import mattermost_channel
    from mattermost_prefect.flows.sync import mattermost_sync

    root = Path(__file__).resolve().parents[1]
    declared = yaml.safe_load((root / "deployments" / "prefect.yaml").read_text())["deployments"]
    flows = {
        "flows/sync.py:mattermost_sync": mattermost_sync,
        "flows/backfill.py:mattermost_backfill": mattermost_backfill,
        "flows/channel.py:mattermost_channel": mattermost_channel,
    }
    assert {d["name"]: d["entrypoint"] for d in declared} == {
        "sync": "flows/sync.py:mattermost_sync",
        "backfill": "flows/backfill.py:mattermost_backfill",
        "channel": "flows/channel.py:mattermost_channel",
    }
    for item in declared:
        assert (root / item["entrypoint"].split(":")[0]).exists()
        assert flows[item["entrypoint"]].name in {
            "mattermost-sync",
            "mattermost-backfill",
            "mattermost-channel",
        }


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _progress_of(flow_run_id, key: str) -> list[float]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key=ArtifactFilterKey(any_=[key]),
            )
        )
    return [a.data for a in found if a.type == "progress"]


def test_progress_reads_100_when_every_channel_was_unchanged_and_after_a_backfill(world: World):
    from mattermost_prefect.flows.backfill import mattermost_backfill
    from mattermost_prefect.flows.sync import mattermost_sync

    channel = world.channel("steady")
    posts = world.populate(channel, 30)
    world.configure([channel])
    world.sync()
    again = mattermost_sync(return_state=True)
    assert again.is_completed() and "unchanged" in str(again.result())
    assert _progress_of(again.state_details.flow_run_id, "mattermost-sync-progress") == [100.0]
    start, end = posts[5]["create_at"], posts[20]["create_at"]
    state = mattermost_backfill(
        channel["id"], str(start / 1000), str(end / 1000), return_state=True
    )
    assert state.is_completed(), state.message
    backfill = state.state_details.flow_run_id
    assert _progress_of(backfill, "mattermost-backfill-progress") == [100.0]
    # one batch (pipeline/new_posts.BATCH_POSTS): the channel's task run made no artifact of
    # its own, the API calls it would take (tasks/report.channel_progress)
    assert _progress_of(backfill, "mattermost-channel-progress") == []
