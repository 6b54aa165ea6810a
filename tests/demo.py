"""The README's first command: the connector on embedded defaults, against sample data.

No Mattermost server is at hand on a fresh clone, so this starts the bundled simulator with
three sample channels and runs `mattermost-connector sync` against it, offline: bundles go to
`data/bundles/`, state to `data/state.db`, Prefect runs on its temporary local server.
Run it again: the second sync finds nothing new, because the cursors were kept.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.mattermost_sim import MattermostSimulator, seed_demo


def main() -> int:
    sim = MattermostSimulator()
    demo = seed_demo(sim)
    sim.start()
    print(f"Sample Mattermost (simulator) on http://127.0.0.1:{sim.port}: 3 channels, 1504 posts")
    env = {
        **os.environ,
        "MATTERMOST_DOMAIN": "127.0.0.1",
        "MATTERMOST_PORT": str(sim.port),
        "MATTERMOST_PROTOCOL": "http",
        "MATTERMOST_TOKEN": demo.token,
        "MATTERMOST_CHANNEL_IDS": ",".join(c["id"] for c in demo.channels),
        "CONNECTOR_SEND_TO_QUEUE": "false",
        "CONNECTOR_SEND_TO_DIRECTORY": "true",
    }
    command = [str(Path(sys.executable).parent / "mattermost-connector"), "sync"]
    before = set(Path("data/bundles").glob("*.json"))
    try:
        code = subprocess.call(command, env=env)
    finally:
        sim.stop()
    bundles = set(Path("data/bundles").glob("*.json"))
    new = len(bundles - before)
    if new:
        print(f"{new} new STIX bundle files in data/bundles/ ({len(bundles)} in all)")
    else:
        print(
            f"nothing new since the last run: no bundle written ({len(bundles)} in data/bundles/)"
        )
    print("State in data/state.db: `.venv/bin/mattermost-connector status` shows it.")
    return code


if __name__ == "__main__":
    sys.exit(main())
