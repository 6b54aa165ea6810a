"""Which channels a sync covers: those listed by id, and those found on the server at each
run (MATTERMOST_TEAMS, MATTERMOST_INCLUDE_DIRECT_MESSAGES), minus the excluded ones.

Found again at every run, so that a channel created since the last run is synced too. The
listings (docs/mattermost-api.md, "Finding channels"): the account's teams, then per team its
own channels (private ones, archived ones and its direct and group channels come with them),
the team's public channels (readable without joining) and its archived public channels, the
last two paged. The channel objects they return carry `last_post_at` and `total_msg_count`:
the probe of an unchanged channel needs no `GET /channels/{id}` of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mattermost_connector.config import MattermostSettings
from mattermost_connector.errors import ChannelNotAccessible
from mattermost_connector.mattermost.channels import DIRECT, GROUP
from mattermost_connector.mattermost.client import MattermostClient

ALL_TEAMS = "*"
Channel = dict[str, Any]


@dataclass
class Selection:
    """The channel ids to sync, in order (those listed by id first), and the channel objects
    the listings returned (absent for channels listed by id and not found)."""

    channel_ids: list[str]
    listed: dict[str, Channel] = field(default_factory=dict)
    team_names: dict[str, str] = field(default_factory=dict)  # team id -> name

    def name(self, channel_id: str) -> str | None:
        """`team/channel` or `group/@a,@b` from the listings alone (a direct channel's name
        needs its users: None)."""
        channel = self.listed.get(channel_id)
        if channel is None:
            return None
        team = self.team_names.get(channel.get("team_id") or "")
        if team:
            return f"{team}/{channel['name']}"
        if channel.get("type") == GROUP:
            display = channel.get("display_name") or channel.get("name") or channel_id
            names = sorted(f"@{part.strip()}" for part in display.split(",") if part.strip())
            return "group/" + ",".join(names)
        return None


def resolve_teams(client: MattermostClient, wanted: list[str]) -> list[dict[str, Any]]:
    """The account's teams named (by name or id, `*` for all) in MATTERMOST_TEAMS; one that is
    not among them is reported with the names the account has."""
    teams = client.my_teams()
    if wanted == [ALL_TEAMS]:
        return teams
    by_key = {team["id"]: team for team in teams} | {team["name"].lower(): team for team in teams}
    missing = [name for name in wanted if name.lower() not in by_key and name not in by_key]
    if missing:
        known = ", ".join(sorted(team["name"] for team in teams)) or "none"
        raise ChannelNotAccessible(
            f"MATTERMOST_TEAMS: {missing[0]!r} is not a team of the token's account "
            f"(its teams: {known})",
            status=404,
        )
    chosen: dict[str, dict[str, Any]] = {}
    for name in wanted:
        team = by_key.get(name) or by_key[name.lower()]
        chosen.setdefault(team["id"], team)
    return list(chosen.values())


def discover(client: MattermostClient, settings: MattermostSettings) -> Selection:
    """The channels to sync at this run."""
    excluded = set(settings.exclude_channel_ids)
    selection = Selection([c for c in settings.channel_ids if c not in excluded])
    if not settings.discovers:
        return selection
    found: dict[str, Channel] = {}
    teams = resolve_teams(client, settings.teams) if settings.teams else []
    selection.team_names = {team["id"]: team["name"] for team in teams}
    for team in teams:
        for channel in client.my_channels(team["id"]):
            if channel.get("team_id"):
                found[channel["id"]] = channel
            elif settings.include_direct_messages:
                found.setdefault(channel["id"], channel)
        for channel in client.public_channels(team["id"]) + client.archived_channels(team["id"]):
            found.setdefault(channel["id"], channel)
    if settings.include_direct_messages and not teams:
        found.update(_conversations(client))
    selection.listed = found
    configured = set(selection.channel_ids)
    extra = sorted(
        (c for c in found if c not in configured and c not in excluded),
        key=lambda c: (selection.name(c) or "~", c),
    )
    selection.channel_ids += extra
    return selection


def _conversations(client: MattermostClient) -> dict[str, Channel]:
    """Direct and group channels without MATTERMOST_TEAMS: they come with the account's
    channels of any one of its teams (none without a team)."""
    teams = client.my_teams()
    if not teams:
        return {}
    return {
        channel["id"]: channel
        for channel in client.my_channels(teams[0]["id"])
        if channel.get("type") in (DIRECT, GROUP)
    }
