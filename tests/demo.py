"""The README's first command: the connector on embedded defaults, against sample data.

No Mattermost server is at hand on a fresh clone, so this starts the bundled simulator with
three sample channels and runs `mattermost-connector sync` against it, offline: bundles go to
`data/bundles/`, state to `data/state.db`, Prefect runs on its temporary local server.
Run it again: the second sync finds nothing new, because the cursors were kept.

    python -m tests.demo                 # a sync against the sample data
    python -m tests.demo --new-posts 5   # the same, with 5 new posts in ioc-sharing first

(`python -m tests.mattermost_sim --demo` serves the same data until Ctrl-C, for `live`, and
prints a command that adds a post through the API.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from mattermost_connector.wording import amount
from tests.mattermost_sim import Demo, MattermostSimulator, seed_demo


def demo_env(sim: MattermostSimulator, demo: Demo) -> dict[str, str]:
    return {
        "MATTERMOST_DOMAIN": "127.0.0.1",
        "MATTERMOST_PORT": str(sim.port),
        "MATTERMOST_PROTOCOL": "http",
        "MATTERMOST_TOKEN": demo.token,
        "MATTERMOST_CHANNEL_IDS": ",".join(c["id"] for c in demo.channels),
        "CONNECTOR_SEND_TO_QUEUE": "false",
        "CONNECTOR_SEND_TO_DIRECTORY": "true",
    }


def add_posts(sim: MattermostSimulator, demo: Demo, count: int) -> None:
    """`count` posts by alice in ioc-sharing, created now: new to the connector's cursor."""
    alice = next(u for u in demo.users if u["username"] == "alice")
    for index in range(count):
        sim.add_post(demo.channels[0], alice, f"new indicator {index + 1}: 203.0.113.{index % 255}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.demo", description=__doc__)
    parser.add_argument("--new-posts", type=int, default=0, metavar="N",
                        help="add N new posts to ioc-sharing before the sync")  # fmt: skip
    args = parser.parse_args(argv)
    sim = MattermostSimulator()
    demo = seed_demo(sim)
    add_posts(sim, demo, args.new_posts)
    sim.start()
    print(f"Sample Mattermost (simulator) on http://127.0.0.1:{sim.port}: 3 channels, 1504 posts")
    env = {**os.environ, **demo_env(sim, demo)}
    command = [str(Path(sys.executable).parent / "mattermost-connector"), "sync"]
    before = set(Path("data/bundles").glob("*.json"))
    try:
        code = subprocess.call(command, env=env)
    finally:
        sim.stop()
    bundles = set(Path("data/bundles").glob("*.json"))
    new = len(bundles - before)
    if new:
        print(f"{amount(new, 'new STIX bundle file')} in data/bundles/ ({len(bundles)} in all)")
    else:
        print(
            f"nothing new since the last run: no bundle written ({len(bundles)} in data/bundles/)"
            "; `.venv/bin/python -m tests.demo --new-posts 5` adds posts first"
        )
    print("State in data/state.db: `.venv/bin/mattermost-connector status` shows it.")
    return code


if __name__ == "__main__":
    sys.exit(main())
