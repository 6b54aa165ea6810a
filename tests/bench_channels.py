"""Benchmark: many channels with few posts each, a first sync and then syncs that find nothing.

    .venv/bin/python -m tests.bench_channels                  # 1, 30, 150 and 1,000 channels
    .venv/bin/python -m tests.bench_channels --channels 150 --repeat 5
    .venv/bin/python -m tests.bench_channels --by-id          # MATTERMOST_CHANNEL_IDS

For each size it seeds one team with that many channels of a few posts, then runs
`mattermost-connector sync` in its own process on a real Prefect API (bundles to a directory):
a first sync (`--first-repeat` times, each into a fresh state store), then `--repeat` no-op
syncs on the last one's state. The channels are found by MATTERMOST_TEAMS (or listed by id
with `--by-id`). Reported: the flow run as Prefect records it and the whole process (medians),
the simulator's requests per channel, peak RSS (VmHWM, the highest), and at the end the no-op
sync's marginal cost per channel: the slope of its flow-run time between the two largest
sizes. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")

from tests.bench import TOKEN, connector_env, directory_env, last_flow_run_seconds, peak_rss
from tests.mattermost_sim import MattermostSimulator

SIZES = [1, 30, 150, 1000]
POSTS_PER_CHANNEL = 3
TARGET_S_PER_CHANNEL = 0.05


@dataclass
class Sync:
    flow_s: float
    process_s: float
    requests: int
    rss_mb: float


@dataclass
class Row:
    channels: int
    kind: str
    syncs: list[Sync]

    def median(self, name: str) -> float:
        return statistics.median(getattr(s, name) for s in self.syncs)

    def text(self) -> str:
        flows = [s.flow_s for s in self.syncs]
        spread = f"{min(flows):.2f}-{max(flows):.2f}" if len(flows) > 1 else "-"
        return (
            f"| {self.channels:,} | {self.kind} | {len(self.syncs)} | {self.median('flow_s'):.2f} "
            f"| {spread} | {self.median('flow_s') / self.channels:.3f} "
            f"| {self.median('process_s'):.1f} "
            f"| {self.median('requests') / self.channels:.1f} "
            f"| {max(s.rss_mb for s in self.syncs):.0f} |"
        )


def seed(channels: int) -> tuple[MattermostSimulator, list[dict]]:
    sim = MattermostSimulator()
    reader = sim.add_user("reader", token=TOKEN)
    authors = [sim.add_user(f"user{i}") for i in range(5)]
    team = sim.add_team("bench", members=[reader, *authors])
    made = []
    at = 1_700_000_000_000
    for index in range(channels):
        channel = sim.add_channel(team, f"channel-{index:04d}", members=[reader, *authors])
        for post in range(POSTS_PER_CHANNEL):
            at += 7
            sim.add_post(channel, authors[post % 5], f"post {post} of {index}", create_at=at)
        made.append(channel)
    return sim.start(), made


def sync_once(sim: MattermostSimulator, env: dict[str, str], work: Path) -> Sync:
    command = [str(Path(sys.executable).parent / "mattermost-connector"), "sync"]
    before = len(sim.requests)
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    rss: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=peak_rss, args=(process.pid, stop, rss), daemon=True)
    sampler.start()
    out, err = process.communicate()
    process_s = time.perf_counter() - started
    stop.set()
    if process.returncode != 0:
        raise SystemExit(f"sync failed ({process.returncode}):\n{out[-2000:]}\n{err[-3000:]}")
    return Sync(
        last_flow_run_seconds(), process_s, len(sim.requests) - before, max(rss, default=0) / 1024
    )


def environment(
    sim: MattermostSimulator, channels: list[dict], work: Path, api: str, by_id: bool
) -> dict[str, str]:
    """The connector's environment; BENCH_CONCURRENCY, if set, its channels at once."""
    selection = (
        {"MATTERMOST_CHANNEL_IDS": ",".join(c["id"] for c in channels)}
        if by_id
        else {"MATTERMOST_TEAMS": "bench"}
    )
    if os.environ.get("BENCH_CONCURRENCY"):
        selection["CONNECTOR_CHANNEL_CONCURRENCY"] = os.environ["BENCH_CONCURRENCY"]
    return connector_env(sim, api, work, **selection) | directory_env(work)


def run(size: int, api: str, repeat: int, first_repeat: int, by_id: bool) -> tuple[Row, Row]:
    sim, channels = seed(size)
    firsts: list[Sync] = []
    work = Path(tempfile.mkdtemp())
    for _ in range(first_repeat):
        shutil.rmtree(work, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="bench-channels-"))
        firsts.append(sync_once(sim, environment(sim, channels, work, api, by_id), work))
    env = environment(sim, channels, work, api, by_id)
    noops = [sync_once(sim, env, work) for _ in range(repeat)]
    sim.stop()
    shutil.rmtree(work, ignore_errors=True)
    return Row(size, "first", firsts), Row(size, "no-op", noops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, action="append", help="sizes (repeatable)")
    parser.add_argument("--repeat", type=int, default=3, help="no-op syncs per size (median)")
    parser.add_argument("--first-repeat", type=int, default=1, help="first syncs per size")
    parser.add_argument("--by-id", action="store_true", help="MATTERMOST_CHANNEL_IDS, not TEAMS")
    args = parser.parse_args()
    sizes = sorted(args.channels or SIZES)
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    print(
        "| channels | sync | runs | flow run (s, median) | spread (s) | s/channel "
        "| process (s) | requests/channel | peak RSS (MB) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    noop: dict[int, float] = {}
    with prefect_test_harness(server_startup_timeout=120):
        api = PREFECT_API_URL.value()
        for size in sizes:
            first, again = run(size, api, args.repeat, args.first_repeat, args.by_id)
            print(first.text(), flush=True)
            print(again.text(), flush=True)
            noop[size] = again.median("flow_s")
    if len(sizes) >= 2:
        low, high = sizes[-2], sizes[-1]
        slope = (noop[high] - noop[low]) / (high - low)
        verdict = "within" if slope <= TARGET_S_PER_CHANNEL else "ABOVE"
        print(
            f"\nno-op marginal cost between {low} and {high} channels: {slope:.4f} s/channel "
            f"({verdict} the {TARGET_S_PER_CHANNEL} s target)"
        )


if __name__ == "__main__":
    main()
