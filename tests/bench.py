"""Benchmark: a full sync against the simulator, next to the floor (httpx alone).

    .venv/bin/python -m tests.bench                      # every scenario of the README
    .venv/bin/python -m tests.bench --posts 20000 --files 200 --mode directory
    .venv/bin/python -m tests.bench --repeat 3           # each sync three times: the median
    .venv/bin/python -m tests.bench --ratios             # issue 20's throughput and memory targets

For each scenario it seeds one channel, measures the floor (the same posts and files fetched
and JSON-parsed with httpx alone, nothing else; the median of three runs), then runs
`mattermost-connector sync` in its own process on a real Prefect API and samples that
process's peak RSS (VmHWM). Two times are reported: the flow run as Prefect records it (what
a scheduled run takes, and what the ratio to the floor is about) and the whole process, which
adds a fixed few seconds of interpreter start and imports whatever the data. In the `amqp`
modes the fake platform sends pycti to the local RabbitMQ, one message per bundle (`amqp`, the
default) or per object (`amqp-split`), and a consumer drains the push queue as OpenCTI's
workers would. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")

from tests.fake_opencti import FakeOpenCTI
from tests.mattermost_sim import MattermostSimulator

TOKEN = "bench-token"
CONNECTOR_ID = "0f4c6f3e-9d0b-4c55-8a51-6d9b2b7e1a10"
FLOOR_RUNS = 3  # the floor is a second or two: one measurement moves the ratio by +-20%
SCENARIOS = [
    (20_000, 200, "directory"),
    (100_000, 0, "directory"),
    (20_000, 200, "amqp"),
    (100_000, 0, "amqp"),
    (20_000, 200, "amqp-split"),  # CONNECTOR_SPLIT_BUNDLES=true: one message per object
]


@dataclass
class Result:
    posts: int
    files: int
    mode: str
    floor_s: float
    process_s: float
    flow_s: float
    peak_rss_mb: float
    delivered: int

    def row(self) -> str:
        return (
            f"| {self.posts:,} | {self.files} | {self.mode} | {self.floor_s:.1f} "
            f"| {self.flow_s:.1f} | {self.posts / self.flow_s:,.0f} | {self.flow_s / self.floor_s:.1f}x "
            f"| {self.process_s:.1f} | {self.process_s / self.floor_s:.1f}x | {self.peak_rss_mb:.0f} |"
        )


def indicator_text(index: int, rng: random.Random) -> str:
    """A post naming a documentation address (no observable kept when extraction is on)."""
    return f"post {index}: indicator 203.0.113.{index % 250} seen by sensor {rng.randint(1, 99)}"


def seed(
    posts: int, files: int, text: Callable[[int, random.Random], str] = indicator_text
) -> tuple[MattermostSimulator, dict]:
    sim = MattermostSimulator()
    reader = sim.add_user("reader", token=TOKEN)
    authors = [sim.add_user(f"user{i}") for i in range(20)]
    channel = sim.add_channel(sim.add_team("bench"), "load", members=[reader, *authors])
    rng = random.Random(1)
    every = posts // files if files else 0
    roots: list[dict] = []
    at = 1_700_000_000_000
    for index in range(posts):
        at += rng.randint(0, 40)
        author = authors[index % len(authors)]
        attached = []
        if every and index % every == every - 1:
            attached = [
                sim.add_file(author, f"doc{index}.pdf", rng.randbytes(20_000), "application/pdf")
            ]
        root = rng.choice(roots[-50:]) if roots and index % 5 == 4 else None
        post = sim.add_post(
            channel, author, text(index, rng), root=root, create_at=at, files=attached
        )
        if root is None:
            roots.append(post)
    return sim.start(), channel


def floor(sim: MattermostSimulator, channel: dict) -> float:
    """Every post and file once, with httpx and json: what any client must at least do
    (without the threads' other posts, as the connector asks: skipFetchThreads)."""
    started = time.perf_counter()
    with httpx.Client(
        base_url=f"http://127.0.0.1:{sim.port}/api/v4", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as client:
        page, file_ids = 0, []
        while True:
            body = client.get(
                f"/channels/{channel['id']}/posts",
                params={"page": page, "per_page": 200, "skipFetchThreads": "true"},
            ).json()
            if not body["order"]:
                break
            for post_id in body["order"]:
                file_ids.extend(body["posts"][post_id].get("file_ids") or [])
            page += 1
        for file_id in file_ids:
            client.get(f"/files/{file_id}").read()
    return time.perf_counter() - started


def peak_rss(pid: int, stop: threading.Event, found: list[int]) -> None:
    while not stop.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    found.append(int(line.split()[1]))
        except OSError:
            return
        time.sleep(0.05)


def drain(queue: str, stop: threading.Event, counted: list[int]) -> None:
    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    channel = connection.channel()
    while not stop.is_set():
        method, _props, _body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            time.sleep(0.01)
        else:
            counted.append(1)
    while channel.basic_get(queue, auto_ack=True)[0] is not None:
        counted.append(1)
    connection.close()


def connector_env(sim: MattermostSimulator, api: str, work: Path, **extra: str) -> dict[str, str]:
    """The environment of a benchmarked connector process: this one's, less any connector
    setting, pointed at the simulator, the Prefect API and a state store in `work`."""
    return {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MATTERMOST_", "CONNECTOR_", "OPENCTI_"))
        },
        "PREFECT_API_URL": api,
        "MATTERMOST_DOMAIN": "127.0.0.1",
        "MATTERMOST_PORT": str(sim.port),
        "MATTERMOST_PROTOCOL": "http",
        "MATTERMOST_TOKEN": TOKEN,
        "CONNECTOR_STATE_DATABASE_URL": f"sqlite:///{work / 'state.db'}",
        "CONNECTOR_LOG_LEVEL": "warn",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        **extra,
    }


def directory_env(work: Path) -> dict[str, str]:
    """Bundles written to `work`/bundles, no queue."""
    return {
        "CONNECTOR_SEND_TO_QUEUE": "false",
        "CONNECTOR_SEND_TO_DIRECTORY": "true",
        "CONNECTOR_SEND_TO_DIRECTORY_PATH": str(work / "bundles"),
    }


def amqp_destination(prefix: str) -> tuple[FakeOpenCTI, str, dict[str, str]]:
    """A fake platform whose push exchange feeds a queue of the real RabbitMQ that the
    benchmark reads: the platform, the queue's name, the connector's settings for it."""
    import pika

    tag = uuid.uuid4().hex[:6]
    platform = FakeOpenCTI(token="bench-octi-token", push_exchange=f"{prefix}-{tag}").start()
    admin = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672)).channel()
    queue = f"{prefix}-queue-{tag}"
    admin.exchange_declare(platform.push_exchange, exchange_type="direct")
    admin.queue_declare(queue, auto_delete=True)
    admin.queue_bind(queue, platform.push_exchange, routing_key=platform.push_routing(CONNECTOR_ID))
    env = {
        "OPENCTI_URL": platform.url,
        "OPENCTI_TOKEN": "bench-octi-token",
        "CONNECTOR_ID": CONNECTOR_ID,
    }
    return platform, queue, env


def run(posts: int, files: int, mode: str, prefect_api: str, repeat: int = 1) -> Result:
    """Seed, measure the floor, then sync `repeat` times from scratch: the median times and
    the highest peak RSS."""
    sim, channel = seed(posts, files)
    floor_s = statistics.median(floor(sim, channel) for _ in range(FLOOR_RUNS))
    runs = [sync_once(sim, channel, mode, prefect_api) for _ in range(repeat)]
    sim.stop()
    return Result(
        posts,
        files,
        mode,
        floor_s,
        statistics.median(r[0] for r in runs),
        statistics.median(r[1] for r in runs),
        max(r[2] for r in runs),
        runs[-1][3],
    )


def sync_once(
    sim: MattermostSimulator,
    channel: dict,
    mode: str,
    prefect_api: str,
    settings: Mapping[str, str] | None = None,
) -> tuple[float, float, float, int]:
    """One full sync into a fresh state store and destination: process time, flow-run time,
    peak RSS (MB), bundles delivered."""
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    env = connector_env(
        sim, prefect_api, work, MATTERMOST_CHANNEL_IDS=channel["id"], **(settings or {})
    )
    platform, counted, stop = None, [], threading.Event()
    drainer = None
    if mode == "directory":
        env |= directory_env(work)
    else:
        platform, queue, destination = amqp_destination("bench")
        env |= destination | {"CONNECTOR_SPLIT_BUNDLES": str(mode == "amqp-split").lower()}
        drainer = threading.Thread(target=drain, args=(queue, stop, counted), daemon=True)
        drainer.start()
    command = [str(Path(sys.executable).parent / "mattermost-connector"), "sync"]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    rss: list[int] = []
    sampler = threading.Thread(target=peak_rss, args=(process.pid, stop, rss), daemon=True)
    sampler.start()
    out, err = process.communicate()
    process_s = time.perf_counter() - started
    stop.set()
    if drainer:
        drainer.join()
    if process.returncode != 0:
        raise SystemExit(f"sync failed ({process.returncode}):\n{out}\n{err[-3000:]}")
    delivered = len(counted) if platform else len(list((work / "bundles").glob("*.json")))
    if platform:
        platform.stop()
    shutil.rmtree(work, ignore_errors=True)  # 100,000 posts leave ~200 MB of bundles
    return process_s, last_flow_run_seconds(), max(rss, default=0) / 1024, delivered


def last_flow_run_seconds() -> float:
    """The sync's flow run as Prefect recorded it (start to end): the time a scheduled run
    takes once its process is up, without interpreter start and imports."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (flow_run,) = client.read_flow_runs(  # the sync's run, not one of its channels' runs
            flow_filter=FlowFilter(name=FlowFilterName(any_=["mattermost-sync"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    return (flow_run.end_time - flow_run.start_time).total_seconds()


# -- ratios: flow run and marginal cost against the floor, each measured beside its own floor --

RATIO_SCENARIOS = [(20_000, 200), (100_000, 0)]
RATIO_TARGET = 2.0  # flow run / floor and marginal / floor (issue 20, item 3)
RSS_TARGET_MB = 200  # the connector's own peak RSS (issue 20, item 5)


@dataclass
class Trial:
    """One floor, then a full sync into a fresh store and a no-op sync on the same store."""

    floor_s: float
    flow_s: float
    process_s: float
    noop_process_s: float
    peak_rss_mb: float

    @property
    def flow_ratio(self) -> float:
        return self.flow_s / self.floor_s

    @property
    def marginal_ratio(self) -> float:
        """The sync's cost less a command's fixed cost (a no-op sync's, whole processes)."""
        return (self.process_s - self.noop_process_s) / self.floor_s


def timed_sync(env: dict[str, str], work: Path) -> tuple[float, float]:
    """`mattermost-connector sync` in its own process: its seconds and peak RSS (MB)."""
    command = [str(Path(sys.executable).parent / "mattermost-connector"), "sync"]
    stop, rss = threading.Event(), []
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sampler = threading.Thread(target=peak_rss, args=(process.pid, stop, rss), daemon=True)
    sampler.start()
    out, err = process.communicate()
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"sync failed ({process.returncode}):\n{out}\n{err[-3000:]}")
    return elapsed, max(rss, default=0) / 1024


def trial(sim: MattermostSimulator, channel: dict, prefect_api: str) -> Trial:
    """The floor, measured just before the syncs it is compared with (the machine's load
    moves between trials), then a full directory-mode sync and a no-op one after it."""
    floor_s = floor(sim, channel)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    env = connector_env(sim, prefect_api, work, MATTERMOST_CHANNEL_IDS=channel["id"])
    env |= directory_env(work)
    try:
        process_s, rss_mb = timed_sync(env, work)
        flow_s = last_flow_run_seconds()
        shutil.rmtree(work / "bundles", ignore_errors=True)
        noop_s, _ = timed_sync(env, work)
        if any((work / "bundles").glob("*.json")):
            raise SystemExit("the no-op sync delivered something: not a no-op")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Trial(floor_s, flow_s, process_s, noop_s, rss_mb)


def spread(values: list[float], unit: str = "x", digits: int = 2) -> str:
    """The median and, in brackets, the lowest and highest."""
    return (
        f"{statistics.median(values):.{digits}f}{unit} "
        f"[{min(values):.{digits}f}-{max(values):.{digits}f}]"
    )


def ratios(prefect_api: str, trials: int = 3) -> None:
    """Issue 20's throughput (item 3) and memory (item 5) figures, `trials` times each."""
    print(
        f"| posts | files | floor (s) | flow run / floor (<= {RATIO_TARGET}) "
        f"| marginal / floor (<= {RATIO_TARGET}) | no-op sync (s) "
        f"| peak RSS MB (<= {RSS_TARGET_MB}) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for posts, files in RATIO_SCENARIOS:
        sim, channel = seed(posts, files)
        try:
            done = [trial(sim, channel, prefect_api) for _ in range(trials)]
        finally:
            sim.stop()
        print(
            f"| {posts:,} | {files} | {spread([t.floor_s for t in done], 's')} "
            f"| {spread([t.flow_ratio for t in done])} "
            f"| {spread([t.marginal_ratio for t in done])} "
            f"| {spread([t.noop_process_s for t in done], 's', 1)} "
            f"| {spread([t.peak_rss_mb for t in done], '', 0)} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int)
    parser.add_argument("--files", type=int, default=0)
    parser.add_argument("--mode", choices=["directory", "amqp", "amqp-split"], default="directory")
    parser.add_argument("--repeat", type=int, default=1, help="syncs per scenario (median)")
    parser.add_argument(
        "--ratios",
        action="store_true",
        help="flow run / floor, marginal / floor and peak RSS at 20,000 + 200 files and "
        "100,000 posts, each `--repeat` times (default 3) beside its own floor",
    )
    args = parser.parse_args()
    scenarios = [(args.posts, args.files, args.mode)] if args.posts else SCENARIOS
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        api = PREFECT_API_URL.value()
        if args.ratios:
            ratios(api, max(args.repeat, 3))
            return
        print(
            "| posts | files | mode | floor (s) | flow run (s) | posts/s | flow/floor "
            "| process (s) | process/floor | peak RSS (MB) |"
        )
        print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for posts, files, mode in scenarios:
            print(run(posts, files, mode, api, args.repeat).row(), flush=True)


if __name__ == "__main__":
    main()
