"""Resolve a channel into what its messages need: a stable STIX name and permalinks."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mattermost_connector.errors import ChannelNotAccessible, MattermostError
from mattermost_connector.mattermost.client import MattermostClient
from mattermost_connector.window import iso

if TYPE_CHECKING:  # stix imports pycti and stix2 (a second): `check` names channels without
    from mattermost_connector.state import StateStore
    from mattermost_connector.stix import ChannelContext

DIRECT, GROUP = "D", "G"


def describe_channel(channel: dict[str, Any]) -> str | None:
    """Purpose and header, and whether the channel is archived (`delete_at` > 0: archiving
    keeps the channel and its posts, api4/channel.go getChannel still answers it)."""
    parts = [
        f"Purpose: {channel['purpose']}" if channel.get("purpose") else None,
        f"Header: {channel['header']}" if channel.get("header") else None,
        f"Archived on {iso(int(channel['delete_at']))}" if channel.get("delete_at") else None,
    ]
    return "\n".join(filter(None, parts)) or None


def _conversation_name(client: MattermostClient, channel: dict[str, Any]) -> str:
    """Direct and group messages have no team: name them by their participants' usernames."""
    if channel["type"] == DIRECT:
        ids = [part for part in channel.get("name", "").split("__") if part]
        users = {user["id"]: user for user in client.users(ids)} if ids else {}
        names = sorted(f"@{users[i]['username']}" if i in users else f"@{i}" for i in ids)
        return "direct/" + ",".join(names)
    display = channel.get("display_name") or channel.get("name") or channel["id"]
    names = sorted(f"@{name.strip()}" for name in display.split(",") if name.strip())
    return "group/" + ",".join(names)


def channel_context(
    client: MattermostClient, channel_id: str, server_url: str
) -> tuple[ChannelContext, dict[str, Any]]:
    """What a channel's messages need: its stable name, description and permalink base."""
    from mattermost_connector.stix import ChannelContext

    channel, name, team_name = named_channel(client, channel_id)
    context = ChannelContext(
        channel_id=channel_id,
        name=name,
        description=describe_channel(channel),
        team_name=team_name,
        channel_type=channel.get("type", "O"),
        created_ms=int(channel.get("create_at") or 0),
        server_url=server_url,
    )
    return context, channel


def named_channel(
    client: MattermostClient, channel_id: str
) -> tuple[dict[str, Any], str, str | None]:
    """The channel, its name (`<team>/<channel>`, `direct/@a,@b`, `group/...`) and team.
    403 and 404 both mean "not accessible"."""
    try:
        channel = client.channel(channel_id)
    except MattermostError as error:
        if error.status in (403, 404):
            raise ChannelNotAccessible(
                f"channel {channel_id} is not accessible: {error.status} {error.error_id}",
                status=error.status,
                error_id=error.error_id,
            ) from None
        raise
    team_name = None
    if channel.get("team_id"):
        team_name = client.team(channel["team_id"])["name"]
        name = f"{team_name}/{channel['name']}"
    else:
        name = _conversation_name(client, channel)
    return channel, name, team_name


def channel_as_first_imported(store: StateStore, context: ChannelContext) -> ChannelContext:
    """The context with the channel's name and team as first imported (recorded now if this
    is the first time): its STIX id and its posts' URLs keep them through renames and moves."""
    key = context.channel_id
    name = store.pin_names("channel", {key: context.name})[key]
    team = store.pin_names("channel_team", {key: context.team_name or ""})[key]
    return replace(context, first_name=name, link_team=team or None)
