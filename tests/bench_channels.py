"""Benchmark: many channels of ~40 posts each, a first sync and then syncs that find nothing,
each beside its floor, on the embedded default and on a running Prefect server.

    .venv/bin/python -m tests.bench_channels                       # 1, 150, 1,000 channels, both
    .venv/bin/python -m tests.bench_channels --channels 150 --prefect embedded
    .venv/bin/python -m tests.bench_channels --channels 1 --repeat 3  # a command's fixed cost
    .venv/bin/python -m tests.bench_channels --by-id                # MATTERMOST_CHANNEL_IDS

For each size it seeds one team with that many channels of `--posts` posts, measures the floor
(every channel's posts fetched and JSON-parsed with httpx alone, CONNECTOR_CHANNEL_CONCURRENCY
channels at once: the median of three), then runs `mattermost-connector sync` in its own
process, bundles to a directory: `--first-repeat` first syncs (each into a fresh state store)
and `--repeat` no-op syncs on the last one's state, for each Prefect setting asked: `embedded`
(no PREFECT_API_URL: the command's own temporary server) and `server` (PREFECT_API_URL of a
server started once here). Reported, medians with their spread (min-max): the sync's flow run
(from its own log lines: the same in both settings), the whole process (the no-op sync of one
channel is a command's fixed cost), the simulator's requests per channel and peak RSS (VmHWM);
then the first sync's marginal cost per channel with new posts (the slope of its flow run
between the two largest sizes) and each figure beside its target (issue 20). A sync that does
not exit 0 stops the benchmark. Not a test: figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")

from tests.bench import TOKEN, connector_env, directory_env, peak_rss
from tests.mattermost_sim import MattermostSimulator

SIZES = [1, 150, 1000]
POSTS_PER_CHANNEL = 40
CONCURRENCY = 4  # CONNECTOR_CHANNEL_CONCURRENCY's default, unless BENCH_CONCURRENCY
FLOOR_RUNS = 3
# Issue 20's targets: first sync's flow run by size (embedded), s per further channel with
# new posts, a no-op command end to end (embedded, server).
FIRST_SYNC_TARGET_S = {150: 30.0, 1000: 200.0}
MARGINAL_TARGET_S = 0.2
NOOP_TARGET_S = {"embedded": 8.0, "server": 4.0}
LOG_TIME = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) \|")


@dataclass
class Sync:
    flow_s: float
    process_s: float
    requests: int
    rss_mb: float


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else "-"


@dataclass
class Row:
    channels: int
    prefect: str
    kind: str
    floor_s: float
    syncs: list[Sync]

    def median(self, name: str) -> float:
        return statistics.median(getattr(s, name) for s in self.syncs)

    def text(self) -> str:
        flows = [s.flow_s for s in self.syncs]
        processes = [s.process_s for s in self.syncs]
        return (
            f"| {self.channels:,} | {self.prefect} | {self.kind} | {len(self.syncs)} "
            f"| {self.floor_s:.2f} | {self.median('flow_s'):.2f} | {spread(flows)} "
            f"| {self.median('flow_s') / self.floor_s:.1f}x "
            f"| {self.median('process_s'):.1f} | {spread(processes)} "
            f"| {self.median('requests') / self.channels:.1f} "
            f"| {max(s.rss_mb for s in self.syncs):.0f} |"
        )


def seed(channels: int, posts: int) -> tuple[MattermostSimulator, list[dict]]:
    sim = MattermostSimulator()
    reader = sim.add_user("reader", token=TOKEN)
    authors = [sim.add_user(f"user{i}") for i in range(5)]
    team = sim.add_team("bench", members=[reader, *authors])
    made = []
    at = 1_700_000_000_000
    for index in range(channels):
        channel = sim.add_channel(team, f"channel-{index:04d}", members=[reader, *authors])
        for post in range(posts):
            at += 7
            sim.add_post(channel, authors[post % 5], f"post {post} of {index}", create_at=at)
        made.append(channel)
    return sim.start(), made


def floor(sim: MattermostSimulator, channels: list[dict]) -> float:
    """Every channel's posts with httpx and json alone, as many channels at once as the
    connector runs: what any client must at least do."""
    started = time.perf_counter()
    with httpx.Client(
        base_url=f"http://127.0.0.1:{sim.port}/api/v4",
        headers={"Authorization": f"Bearer {TOKEN}"},
        limits=httpx.Limits(max_connections=concurrency()),
    ) as client:

        def fetch(channel: dict) -> int:
            page, count = 0, 0
            while True:
                body = client.get(
                    f"/channels/{channel['id']}/posts", params={"page": page, "per_page": 200}
                ).json()
                count += len(body["order"])
                if len(body["order"]) < 200:
                    return count
                page += 1

        with ThreadPoolExecutor(concurrency()) as pool:
            list(pool.map(fetch, channels))
    return time.perf_counter() - started


def concurrency() -> int:
    return int(os.environ.get("BENCH_CONCURRENCY") or CONCURRENCY)


def flow_run_seconds(log: str) -> float:
    """The sync's flow run from its first to its last line ("Beginning flow run", "Finished in
    state"): readable whether its server outlives the command or not."""
    begin = end = None
    for line in log.splitlines():
        found = LOG_TIME.match(line)
        if not found or "Flow run '" not in line:
            continue
        if "Beginning flow run" in line and begin is None:
            begin = found.group(1)
        elif "Finished in state" in line:
            end = found.group(1)
    if begin is None or end is None:
        raise SystemExit(f"no flow run in the sync's log:\n{log[-2000:]}")
    took = datetime.strptime(end, "%H:%M:%S.%f") - datetime.strptime(begin, "%H:%M:%S.%f")
    return (took + timedelta(days=1 if took.total_seconds() < 0 else 0)).total_seconds()


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
        flow_run_seconds(err), process_s, len(sim.requests) - before, max(rss, default=0) / 1024
    )


def environment(
    sim: MattermostSimulator, channels: list[dict], work: Path, api: str | None, by_id: bool
) -> dict[str, str]:
    """The connector's environment: on `api`, or without PREFECT_API_URL (embedded)."""
    selection = (
        {"MATTERMOST_CHANNEL_IDS": ",".join(c["id"] for c in channels)}
        if by_id
        else {"MATTERMOST_TEAMS": "bench"}
    )
    if os.environ.get("BENCH_CONCURRENCY"):
        selection["CONNECTOR_CHANNEL_CONCURRENCY"] = os.environ["BENCH_CONCURRENCY"]
    env = connector_env(sim, api or "", work, **selection) | directory_env(work)
    env["PREFECT_LOGGING_LEVEL"] = "INFO"  # the flow run's first and last lines time it
    if api is None:
        env.pop("PREFECT_API_URL", None)
        env["PREFECT_HOME"] = str(work / "prefect")  # a temporary server of its own
    return env


def run(
    size: int, posts: int, apis: dict[str, str | None], repeat: int, first_repeat: int, by_id: bool
) -> list[Row]:
    sim, channels = seed(size, posts)
    floor_s = statistics.median(floor(sim, channels) for _ in range(FLOOR_RUNS))
    rows = []
    for prefect, api in apis.items():
        firsts: list[Sync] = []
        work = Path(tempfile.mkdtemp())
        for _ in range(first_repeat):
            shutil.rmtree(work, ignore_errors=True)
            work = Path(tempfile.mkdtemp(prefix="bench-channels-"))
            firsts.append(sync_once(sim, environment(sim, channels, work, api, by_id), work))
        env = environment(sim, channels, work, api, by_id)
        noops = [sync_once(sim, env, work) for _ in range(repeat)]
        shutil.rmtree(work, ignore_errors=True)
        rows += [
            Row(size, prefect, "first", floor_s, firsts),
            Row(size, prefect, "no-op", floor_s, noops),
        ]
    sim.stop()
    return rows


def verdicts(rows: list[Row]) -> list[str]:
    """Each figure with a target beside it."""
    lines = []
    for row in rows:
        target = None
        if row.kind == "first" and row.prefect == "embedded":
            target = FIRST_SYNC_TARGET_S.get(row.channels)
            figure, what = row.median("flow_s"), "first sync, flow run"
        elif row.kind == "no-op" and row.channels == 1:
            target = NOOP_TARGET_S[row.prefect]
            figure, what = row.median("process_s"), "no-op sync, whole command"
        if target is not None:
            verdict = "within" if figure <= target else "ABOVE"
            lines.append(
                f"{row.channels:,} channels, {row.prefect}, {what}: {figure:.1f} s "
                f"({verdict} the {target:g} s target)"
            )
    for prefect in sorted({r.prefect for r in rows}):
        firsts = {r.channels: r for r in rows if r.prefect == prefect and r.kind == "first"}
        if len(firsts) >= 2:
            low, high = sorted(firsts)[-2:]
            slope = (firsts[high].median("flow_s") - firsts[low].median("flow_s")) / (high - low)
            floor_slope = (firsts[high].floor_s - firsts[low].floor_s) / (high - low)
            verdict = "within" if slope <= MARGINAL_TARGET_S else "ABOVE"
            lines.append(
                f"{prefect}: first sync's marginal cost between {low:,} and {high:,} channels: "
                f"{slope:.3f} s/channel, floor {floor_slope:.4f} ({verdict} the "
                f"{MARGINAL_TARGET_S} s target)"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, action="append", help="sizes (repeatable)")
    parser.add_argument("--posts", type=int, default=POSTS_PER_CHANNEL, help="per channel")
    parser.add_argument("--repeat", type=int, default=3, help="no-op syncs per size (median)")
    parser.add_argument("--first-repeat", type=int, default=3, help="first syncs per size")
    parser.add_argument("--prefect", choices=["embedded", "server", "both"], default="both")
    parser.add_argument("--by-id", action="store_true", help="MATTERMOST_CHANNEL_IDS, not TEAMS")
    args = parser.parse_args()
    sizes = sorted(args.channels or SIZES)
    settings = ["embedded", "server"] if args.prefect == "both" else [args.prefect]
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    print(
        "| channels | Prefect | sync | runs | floor (s) | flow run (s, median) | spread (s) "
        "| flow/floor | process (s) | spread (s) | requests/channel | peak RSS (MB) |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows: list[Row] = []
    with prefect_test_harness(server_startup_timeout=120):
        apis = {s: (PREFECT_API_URL.value() if s == "server" else None) for s in settings}
        for size in sizes:
            for row in run(size, args.posts, apis, args.repeat, args.first_repeat, args.by_id):
                print(row.text(), flush=True)
                rows.append(row)
    print()
    for line in verdicts(rows):
        print(line)


if __name__ == "__main__":
    main()
