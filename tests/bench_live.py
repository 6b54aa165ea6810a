"""Benchmark of live mode: from a post's creation to its bundle delivered.

    .venv/bin/python -m tests.bench_live                    # directory and AMQP, every scenario
    .venv/bin/python -m tests.bench_live --mode directory --steady 60

`mattermost-connector live` runs in its own process on a real Prefect API (the test harness's
server), against the simulator, delivering to a directory or, through the fake platform, to
the local RabbitMQ (a consumer drains the push queue as OpenCTI's workers would). A watcher
notes when each post's message first arrives (a bundle file renamed into place, or a queue
message); latency is that time less the moment the post was created in the simulator.

Scenarios, one after another on one live process:
- steady: a post a second (p50, p95, max latency);
- burst: 1,000 posts in 10 s (time from the burst's end until all are delivered, and the
  channel runs it caused, from the run history);
- drop: the WebSocket refused for 20 s (upgrades answered 502) while a post a second
  arrives, then the time from the reconnection until all are delivered.
Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")

from mattermost_connector.state import StateStore
from tests.bench import TOKEN, amqp_destination, connector_env, directory_env
from tests.mattermost_sim import MattermostSimulator


class Seen:
    """When each post's message was first delivered (wall clock)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self._lock = threading.Lock()

    def bundle(self, bundle: dict[str, Any], now: float) -> None:
        with self._lock:
            for obj in bundle.get("objects", ()):
                if obj.get("type") == "media-content" and "/pl/" in obj.get("url", ""):
                    self.at.setdefault(obj["url"].rsplit("/", 1)[1], now)

    def wait(self, post_ids: list[str], seconds: float) -> float | None:
        """When the last of these was delivered, or None if not all within `seconds`."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            with self._lock:
                if all(p in self.at for p in post_ids):
                    return max(self.at[p] for p in post_ids)
            time.sleep(0.02)
        return None


def watch_directory(path: Path, seen: Seen, stop: threading.Event) -> None:
    done: set[str] = set()
    while not stop.is_set():
        for file in sorted(path.glob("*.json")) if path.exists() else ():
            if file.name not in done:
                now = time.time()
                done.add(file.name)
                seen.bundle(json.loads(file.read_text()), now)
        time.sleep(0.01)


def watch_queue(queue: str, seen: Seen, stop: threading.Event) -> None:
    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    channel = connection.channel()
    while not stop.is_set():
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            time.sleep(0.005)
            continue
        now = time.time()
        message = json.loads(body)
        seen.bundle(json.loads(base64.b64decode(message["content"])), now)
    connection.close()


def runs(work: Path, channel_id: str) -> int:
    store = StateStore(f"sqlite:///{work / 'state.db'}")
    try:
        return len(store.runs(limit=1_000_000, channel_id=channel_id))
    finally:
        store.close()


def post_at_rate(
    sim: MattermostSimulator, channel: dict, author: dict, count: int, per_second: float, tag: str
) -> list[tuple[str, float]]:
    created = []
    start = time.time()
    for index in range(count):
        pause = start + index / per_second - time.time()
        if pause > 0:
            time.sleep(pause)
        now = time.time()
        post = sim.add_post(channel, author, f"{tag} {index}: indicator 198.51.100.{index % 250}")
        created.append((post["id"], now))
    return created


def latencies(created: list[tuple[str, float]], seen: Seen) -> list[float]:
    return [seen.at[p] - at for p, at in created if p in seen.at]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench(mode: str, steady: int, api: str) -> dict[str, Any]:
    sim = MattermostSimulator()
    reader = sim.add_user("reader", token=TOKEN)
    author = sim.add_user("alice")
    channel = sim.add_channel(sim.add_team("bench"), "live", members=[reader, author])
    for index in range(200):
        sim.add_post(channel, author, f"history {index}", create_at=1_700_000_000_000 + index)
    sim.start()
    work = Path(tempfile.mkdtemp(prefix="bench-live-"))
    env = connector_env(
        sim,
        api,
        work,
        MATTERMOST_CHANNEL_IDS=channel["id"],
        MATTERMOST_KEEPALIVE="true",
        MATTERMOST_KEEPALIVE_DELAY="2",
    )
    seen, stop = Seen(), threading.Event()
    platform = None
    if mode == "directory":
        env |= directory_env(work)
        watcher = threading.Thread(target=watch_directory, args=(work / "bundles", seen, stop))
    else:
        platform, queue, destination = amqp_destination("bench-live")
        env |= destination
        watcher = threading.Thread(target=watch_queue, args=(queue, seen, stop))
    watcher.start()
    log = open(work / "live.log", "w")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mattermost-connector"), "live"],
        env=env,
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    result: dict[str, Any] = {"mode": mode}
    try:
        history = [p["id"] for p in sim.live_posts(channel["id"])]
        if seen.wait(history, 120) is None:
            raise SystemExit("catch-up not done in 120 s:\n" + (work / "live.log").read_text())
        time.sleep(3)

        created = post_at_rate(sim, channel, author, steady, 1.0, "steady")
        seen.wait([p for p, _ in created], 30)
        steady_lat = latencies(created, seen)
        result["steady"] = {
            "posts": len(created),
            "delivered": len(steady_lat),
            "p50": statistics.median(steady_lat),
            "p95": pct(steady_lat, 0.95),
            "max": max(steady_lat),
        }
        time.sleep(3)

        before = runs(work, channel["id"])
        created = post_at_rate(sim, channel, author, 1000, 100.0, "burst")
        burst_end = time.time()
        last = seen.wait([p for p, _ in created], 60)
        time.sleep(3)
        result["burst"] = {
            "posts": len(created),
            "seconds": round(burst_end - created[0][1], 1),
            "all_delivered_after_end": None if last is None else last - burst_end,
            "delivered": len(latencies(created, seen)),
            "channel_runs": runs(work, channel["id"]) - before,
        }

        upgrades = len(sim.websocket.upgrades)
        sim.websocket.down(20)
        dropped_at = time.time()
        created = post_at_rate(sim, channel, author, 20, 1.0, "dropped")
        reconnected = None
        deadline = time.time() + 90
        while time.time() < deadline and reconnected is None:
            if sim.websocket.open_sockets:
                reconnected = time.time()
            time.sleep(0.02)
        last = seen.wait([p for p, _ in created], 60)
        result["drop"] = {
            "posts": len(created),
            "outage": 20,
            "reconnected_after_drop": None if reconnected is None else reconnected - dropped_at,
            "upgrade_attempts": len(sim.websocket.upgrades) - upgrades,
            "all_delivered_after_reconnect": (
                None if last is None or reconnected is None else max(0.0, last - reconnected)
            ),
            "delivered": len(latencies(created, seen)),
        }
    finally:
        process.terminate()
        try:
            result["exit"] = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            result["exit"] = "killed"
        log.close()
        stop.set()
        watcher.join()
        if platform:
            platform.stop()
        sim.stop()
        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["directory", "amqp", "both"], default="both")
    parser.add_argument("--steady", type=int, default=60, help="posts at 1 post/s")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    modes = ["directory", "amqp"] if args.mode == "both" else [args.mode]
    with prefect_test_harness(server_startup_timeout=120):
        api = PREFECT_API_URL.value()
        for _ in range(args.repeat):
            for mode in modes:
                print(json.dumps(_rounded(bench(mode, args.steady, api))), flush=True)


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return round(value, 2) if isinstance(value, float) else value


if __name__ == "__main__":
    main()
