"""The state store, on SQLite and on the machine's PostgreSQL, through the same code."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from mattermost_connector.state import SCHEMA_VERSION, StateStore

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nested' / 'state.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES)
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def test_cursors_round_trip_and_accumulate(store_url: str):
    store = StateStore(store_url)
    assert store.cursor("c1") is None
    store.save_cursor("c1", {"boundary_ms": 5, "boundary_ids": ["a"], "anchor_id": None}, 10)
    store.save_cursor("c1", {"boundary_ms": 9, "boundary_ids": ["b"], "anchor_id": "a"}, 3)
    store.save_cursor("c2", {"boundary_ms": 1, "boundary_ids": [], "anchor_id": None}, 0)
    assert store.cursor("c1") == {"boundary_ms": 9, "boundary_ids": ["b"], "anchor_id": "a"}
    rows = {row["channel_id"]: row for row in store.cursors()}
    assert rows["c1"]["posts_delivered"] == 13 and set(rows) == {"c1", "c2"}
    store.close()
    assert StateStore(store_url).cursor("c1")["boundary_ms"] == 9  # persisted


def test_run_history(store_url: str):
    store = StateStore(store_url)
    run_id = store.start_run("c1", "sync", flow_run_id="fr-1")
    (running,) = store.runs()
    assert running.status == "running" and running.ended_at is None
    store.finish_run(run_id, "failed", posts=4, files=1, objects=12, error="boom")
    (done,) = store.runs(channel_id="c1")
    assert (done.status, done.posts, done.files, done.objects, done.error) == (
        "failed",
        4,
        1,
        12,
        "boom",
    )
    assert done.flow_run_id == "fr-1" and done.ended_at is not None


def test_an_older_schema_is_migrated_in_place(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as connection:  # what a release before the first migration left
        connection.execute(sa.text("CREATE TABLE schema_version (version INTEGER NOT NULL)"))
        connection.execute(sa.text("INSERT INTO schema_version VALUES (0)"))
    engine.dispose()
    store = StateStore(url)
    assert store.version() == SCHEMA_VERSION
    assert store.migrate() == SCHEMA_VERSION  # idempotent
    store.save_cursor("c", {"boundary_ms": 1}, 1)
