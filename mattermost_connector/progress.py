"""How far a channel's run has come, in words and as a share, for the log and Prefect's
progress artifact. The total is the channel's `total_msg_count`: an estimate (it counts
system messages and deleted posts too), hence "about"."""

from __future__ import annotations

from mattermost_connector.kinds import RunKind
from mattermost_connector.wording import amount


def share(done: int, total: int) -> float:
    """The part of the channel done, 0 to 1 (1 when the total is unknown or passed)."""
    return min(done / total, 1.0) if total > 0 else 1.0


def describe(name: str, kind: str, this_run: int, done: int, total: int) -> str:
    """One log line: `cti/town-square: 1,200 of about 1,504 posts (1,200 this run)`."""
    if kind != RunKind.SYNC or total <= 0:
        return f"{name}: {amount(this_run, 'post', grouped=True)} this {kind}"
    about = amount(max(total, done), "post", grouped=True)
    return f"{name}: {done:,} of about {about} ({this_run:,} this run)"


def overall(channels_done: int, channels: int, current: float) -> float:
    """Percent of a run of `channels` channels, the current one `current` (0-1) done."""
    return 100.0 * min((channels_done + current) / max(channels, 1), 1.0)
