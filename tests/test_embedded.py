"""The embedded default itself: `sync` without PREFECT_API_URL starts its own temporary
Prefect server (mattermost_prefect/temporary_server.py), early, and leaves nothing behind.
The other CLI tests share one server (PREFECT_API_URL), as a deployment would."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.checks import directory_bundles
from tests.conftest import mattermost_env, offline_env, run_cli
from tests.mattermost_sim import Demo
from tests.test_sync import assert_demo_complete


def processes_with(marker: str) -> set[int]:
    """The processes whose environment holds `marker`: the command's, and any it left."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def test_a_sync_on_the_temporary_server_imports_everything_and_stops_it(workdir: Path, demo: Demo):
    marker = f"embedded-{uuid.uuid4().hex}"
    env = {**mattermost_env(demo), **offline_env(workdir), "EMBEDDED_TEST_MARKER": marker}
    result = run_cli(["sync"], env, workdir, embedded=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert_demo_complete(demo, directory_bundles(workdir / "bundles"))
    assert processes_with(marker) == set(), "the temporary server outlived its command"
