"""How long Prefect's scheduler takes to compute the sync's next dates, with the rule
anchored on 2020-01-01 (as before) and near now (config.recurrence):

    .venv/bin/python -m tests.bench_schedule 30s 1m 5m 1h
"""

from __future__ import annotations

import asyncio
import sys
import time

from mattermost_connector.config import parse_duration, recurrence

OLD_START = "DTSTART:20200101T000000"


async def next_dates_seconds(rule: str) -> float:
    """What the server's scheduler service does for a deployment: its next 3 dates."""
    from prefect.server.schemas.schedules import RRuleSchedule

    schedule = RRuleSchedule(rrule=rule, timezone="UTC")
    started = time.perf_counter()
    await schedule.get_dates(n=3)
    return time.perf_counter() - started


def main(argv: list[str]) -> None:
    for text in argv or ["30s", "1m", "5m", "1h"]:
        rule = recurrence(parse_duration(text))
        old = OLD_START + "\n" + rule.split("\n", 1)[1]
        before = asyncio.run(next_dates_seconds(old))
        after = asyncio.run(next_dates_seconds(rule))
        print(f"{text:>4}: from 2020-01-01 {before:7.3f} s, near now {after:7.3f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
