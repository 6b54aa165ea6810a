"""Helpers the test files share: a simulated world to sync, a client on the simulator,
settings from a valid environment, the machine's PostgreSQL. Bundle checks are in
`tests/checks.py`. Nothing here imports Prefect: domain tests use it too."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mattermost_connector.config import TLP, MattermostSettings, load_settings
from mattermost_connector.errors import RunFailed
from mattermost_connector.mattermost.channels import channel_context
from mattermost_connector.mattermost.client import MattermostClient, RetryPolicy
from mattermost_connector.stix import marking_id, message_id
from tests.checks import (
    assert_channel_complete,
    delivered_messages,
    directory_bundles,
    objects_by_id,
)
from tests.conftest import apply_env
from tests.mattermost_sim import MattermostSimulator

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

TOKEN = "incremental-reader-token"
AMBER = marking_id(TLP.AMBER)


class World:
    """A simulated server with one team, a reader, authors, and the connector pointed at it."""

    def __init__(self, sim: MattermostSimulator, workdir: Path, monkeypatch: pytest.MonkeyPatch):
        self.sim, self.workdir, self.monkeypatch = sim, workdir, monkeypatch
        self.reader = sim.add_user("reader", token=TOKEN)
        self.authors = [sim.add_user(name) for name in ("alice", "bob", "carol")]
        self.team = sim.add_team("cti")
        self.rng = random.Random(3)
        self.clock = 1_700_000_000_000

    def channel(self, name: str, **kwargs: Any) -> dict[str, Any]:
        return self.sim.add_channel(self.team, name, members=[self.reader, *self.authors], **kwargs)

    def populate(
        self, channel: dict[str, Any], count: int, files_every: int = 10**9
    ) -> list[dict[str, Any]]:
        """Posts with threads, and runs of posts sharing one millisecond."""
        created, roots = [], []
        for index in range(count):
            self.clock += 0 if index % 6 == 5 else self.rng.randint(1, 50)
            author = self.authors[index % 3]
            root = self.rng.choice(roots[-30:]) if roots and index % 4 == 3 else None
            files = []
            if index % files_every == files_every - 1:
                data = self.rng.randbytes(self.rng.randint(1, 4096))
                files = [
                    self.sim.add_file(author, f"f{index}.bin", data, "application/octet-stream")
                ]
            post = self.sim.add_post(
                channel,
                author,
                f"{channel['name']} #{index}",
                root=root,
                create_at=self.clock,
                files=files,
            )
            created.append(post)
            if not root:
                roots.append(post)
        return created

    def configure(self, channels: list[dict[str, Any]], **extra: str) -> None:
        apply_env(
            self.monkeypatch,
            {
                "MATTERMOST_DOMAIN": "127.0.0.1",
                "MATTERMOST_PORT": str(self.sim.port),
                "MATTERMOST_PROTOCOL": "http",
                "MATTERMOST_TOKEN": TOKEN,
                "MATTERMOST_CHANNEL_IDS": ",".join(c["id"] for c in channels),
                "MATTERMOST_KEEPALIVE_DELAY": "0.01",
                "CONNECTOR_SEND_TO_QUEUE": "false",
                "CONNECTOR_SEND_TO_DIRECTORY": "true",
                "CONNECTOR_SEND_TO_DIRECTORY_PATH": str(self.workdir / "bundles"),
                "CONNECTOR_STATE_DATABASE_URL": f"sqlite:///{self.workdir / 'state.db'}",
                **extra,
            },
        )

    def sync(self) -> list[dict[str, Any]]:
        from mattermost_prefect.flows.sync import mattermost_sync

        self.before = set((self.workdir / "bundles").glob("*.json"))
        state = mattermost_sync(return_state=True)
        report = report_of(state)
        assert state.is_completed(), (state.message, report)
        return report

    def bundles(self, latest_run_only: bool = False) -> list[dict[str, Any]]:
        bundles = directory_bundles(self.workdir / "bundles")
        if latest_run_only:
            names = sorted(set((self.workdir / "bundles").glob("*.json")) - self.before)
            import json

            return [json.loads(p.read_text()) for p in names]
        return bundles

    def context(self, channel: dict[str, Any]):
        settings = MattermostSettings(
            domain="127.0.0.1",
            port=self.sim.port,
            protocol="http",
            token=TOKEN,
            channel_ids=[channel["id"]],
        )
        with MattermostClient(settings) as client:
            return channel_context(client, channel["id"], settings.server_url)[0]

    def assert_complete(self, channel: dict[str, Any]) -> int:
        bundles = self.bundles()
        return assert_channel_complete(
            self.sim, self.context(channel), objects_by_id(bundles), AMBER
        )

    def deliveries(self, channel: dict[str, Any], bundles: list[dict[str, Any]]) -> Counter:
        """How many times each post of the channel was delivered in these bundles."""
        context = self.context(channel)
        by_id = {
            message_id(context, p["id"]): p["id"] for p in self.sim.channel_rows(channel["id"])
        }
        return Counter(
            by_id[o["id"]] for b in bundles for o in delivered_messages(b) if o["id"] in by_id
        )


def report_of(state: Any) -> list[dict[str, Any]]:
    """A run's per-channel report: its result when Completed, inside the RunFailed a Failed
    run carries."""
    value = state.result(raise_on_failure=False)
    return value.report if isinstance(value, RunFailed) else value


def make_client(sim: MattermostSimulator, token: str, **retry) -> MattermostClient:
    settings = MattermostSettings(
        domain="127.0.0.1",
        port=sim.port,
        protocol="http",
        token=token,
        channel_ids=["a" * 26],
        timeout=5,
    )
    return MattermostClient(settings, retry=RetryPolicy(base_delay=0.01, **retry))


VALID_TOKEN = "mm-token-3b9d-never-print-me"
VALID = {
    "MATTERMOST_DOMAIN": "chat.example.org",
    "MATTERMOST_TOKEN": VALID_TOKEN,
    "MATTERMOST_CHANNEL_IDS": "5i5rip6zaf8qprwfi86iu9xsjy,ztu3g3f4upgjxezhsuqe5imzpr",
    "CONNECTOR_SEND_TO_QUEUE": "false",
    "CONNECTOR_SEND_TO_DIRECTORY": "true",
}


def settings_with(monkeypatch: pytest.MonkeyPatch, **overrides: str):
    for name, value in {**VALID, **overrides}.items():
        monkeypatch.setenv(name, value)
    return load_settings()
