"""Integration posts as the Mattermost server stores and serves them, for the simulator.

Read in the server's source:
- server/channels/app/webhook.go HandleIncomingWebhook: `props.webhook_display_name` is the
  hook's display name; text and attachments go through ProcessSlackText and
  ProcessSlackAttachments (app/slack.go); with attachments the post's type is
  `slack_attachment`; the post is made as the hook's creator (`hook.UserId`), under the
  request's username and icon, else the hook's.
- webhook.go CreateWebhookPost: `<url|text>` in the text becomes `[text](url)`;
  `props.from_webhook = "true"`; `props.override_username` is the username given, else
  `webhook` (model.DefaultWebhookUsername), when ServiceSettings.EnablePostUsernameOverride
  (false by default); `props.override_icon_url` likewise with EnablePostIconOverride; other
  request props are copied, those three never; a priority goes to `metadata.priority`;
  splitWebhookPost cuts a text longer than MaxPostSize (16,383 runes) into several posts and
  puts the attachments on the last one(s), each post's props within PostPropsMaxUserRunes.
- server/public/model/slack_attachment.go: StringifySlackFieldValue drops nil attachments and
  fields and prints each field value with Go's `%v`; ParseSlackAttachment rewrites
  `<url|text>` in `text`, `pretext` and string field values (a narrower pattern than the
  message's). The attachment is decoded into SlackAttachment: unknown keys are dropped, and
  every field is written back, empty or null (`actions` only when set).
- server/channels/app/post.go UpdatePost: a new message sets `edit_at`; the props are
  replaced; if `edit_at` did not move and the attachments differ (Post.AttachmentsEqual),
  `edit_at` is set too. The store keeps the old version as an edit-history row.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from tests.mattermost_sim import MattermostSimulator

MAX_POST_SIZE = 16_383  # model.PostMessageMaxRunesV2 (App.MaxPostSize on PostgreSQL)
POST_PROPS_MAX_USER_RUNES = 800_000 - 40_000  # model.PostPropsMaxUserRunes
DEFAULT_WEBHOOK_USERNAME = "webhook"  # model.DefaultWebhookUsername
# webhook.go linkWithTextRegex (the message) and slack_attachment.go's (attachments)
_MESSAGE_LINK = re.compile(r"<([^\n<|>]+)\|([^|\n>]+)>")
_ATTACHMENT_LINK = re.compile(r"<([^<|]+)\|([^>]+)>")
_USER_ID = re.compile(r"<@([a-z0-9]{26})>")  # app/slack.go replaceUserIds
_ANNOUNCEMENTS = {"<!channel>": "@channel", "<!here>": "@here", "<!all>": "@all"}
# model.SlackAttachment's JSON fields, in struct order
_ATTACHMENT_FIELDS = (
    ("id", 0),
    ("fallback", ""),
    ("color", ""),
    ("pretext", ""),
    ("author_name", ""),
    ("author_link", ""),
    ("author_icon", ""),
    ("title", ""),
    ("title_link", ""),
    ("text", ""),
    ("fields", None),
    ("image_url", ""),
    ("thumb_url", ""),
    ("footer", ""),
    ("footer_icon", ""),
    ("ts", None),
)


def go_value(value: Any) -> str:
    """fmt.Sprintf("%v", v) of a value decoded from JSON into `any`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _go_float(float(value))
    if isinstance(value, list):
        return "[" + " ".join(go_value(v) for v in value) + "]"
    if isinstance(value, dict):  # fmt prints a map's keys sorted
        return "map[" + " ".join(f"{k}:{go_value(value[k])}" for k in sorted(value)) + "]"
    return "<nil>" if value is None else str(value)


def _go_float(number: float) -> str:
    """%v of a float64 (JSON numbers decode to float64): strconv's %g with the shortest
    digits, in exponent form when the exponent is below -4 or at least 6 (ftoa.go: "if
    precision was the shortest possible, use precision 6 for this decision"): 1e+06."""
    if number == 0:
        return "0"
    digits = Decimal(repr(number)).normalize()
    exponent = digits.adjusted()
    if exponent < -4 or exponent >= 6:
        mantissa = f"{digits.scaleb(-exponent):f}"
        return f"{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    return f"{digits:f}"


def process_slack_text(sim: MattermostSimulator, text: str) -> str:
    """app/slack.go ProcessSlackText: announcements expanded, `<@userid>` to `@username`."""
    for slack, mattermost in _ANNOUNCEMENTS.items():
        text = text.replace(slack, mattermost)

    def username(match: re.Match[str]) -> str:
        user = sim.state.users.get(match.group(1))
        return f"@{user['username']}" if user else match.group(0)

    return _USER_ID.sub(username, text)


def _as_stored(attachment: dict[str, Any]) -> dict[str, Any]:
    """Decoded into model.SlackAttachment and encoded back: its fields only, all of them."""
    stored = {  # JSON null into a Go string leaves it empty
        key: attachment.get(key) or default if default == "" else attachment.get(key, default)
        for key, default in _ATTACHMENT_FIELDS
    }
    if stored["fields"] is not None:
        stored["fields"] = [
            {"title": f.get("title") or "", "value": f.get("value"), "short": bool(f.get("short"))}
            if f is not None
            else None
            for f in stored["fields"]
        ]
    if attachment.get("actions"):
        stored["actions"] = attachment["actions"]
    return stored


def process_attachments(
    sim: MattermostSimulator, attachments: list[dict[str, Any] | None]
) -> list[dict[str, Any]]:
    """ProcessSlackAttachments (StringifySlackFieldValue, ProcessSlackText on pretext, text,
    title and values), then ParseSlackAttachment (links in text, pretext, values)."""
    processed = []
    for raw in attachments:
        if raw is None:
            continue
        attachment = _as_stored(raw)
        fields = [f for f in attachment["fields"] or [] if f is not None]
        attachment["fields"] = fields or None
        for key in ("pretext", "text", "title"):
            attachment[key] = process_slack_text(sim, attachment[key])
        for field in fields:
            if field["value"] is not None:
                field["value"] = process_slack_text(sim, go_value(field["value"]))
        attachment["text"] = _ATTACHMENT_LINK.sub(r"[\2](\1)", attachment["text"])
        attachment["pretext"] = _ATTACHMENT_LINK.sub(r"[\2](\1)", attachment["pretext"])
        for field in fields:
            if isinstance(field["value"], str):
                field["value"] = _ATTACHMENT_LINK.sub(r"[\2](\1)", field["value"])
        processed.append(attachment)
    return processed


def add_incoming_webhook(
    sim: MattermostSimulator,
    channel: dict[str, Any],
    creator: dict[str, Any],
    display_name: str,
    *,
    username: str = "",
    icon_url: str = "",
) -> dict[str, Any]:
    """model.IncomingWebhook: posts go to `channel` as `creator`."""
    return {
        "id": sim.new_id(),
        "channel_id": channel["id"],
        "user_id": creator["id"],
        "display_name": display_name,
        "username": username,
        "icon_url": icon_url,
    }


def _runes(props: dict[str, Any]) -> int:
    return len(json.dumps(props, ensure_ascii=False, separators=(",", ":")))


def _splits(message: str, base: dict[str, Any], attachments: list[dict[str, Any]]) -> list:
    """splitWebhookPost: (message, props) of each post, attachments on the last ones."""
    pieces = [message[i : i + MAX_POST_SIZE] for i in range(0, len(message), MAX_POST_SIZE)]
    splits = [[piece, dict(base)] for piece in pieces or [""]]
    for attachment in attachments:
        props = {**splits[-1][1], "attachments": [*splits[-1][1].get("attachments", [])]}
        props["attachments"].append(attachment)
        if _runes(props) > POST_PROPS_MAX_USER_RUNES and splits[-1][1].get("attachments"):
            splits.append(["", {**base, "attachments": [attachment]}])
        else:
            splits[-1][1] = props
    return splits


def post_webhook(
    sim: MattermostSimulator,
    hook: dict[str, Any],
    text: str = "",
    *,
    attachments: list[dict[str, Any] | None] | None = None,
    username: str = "",
    icon_url: str = "",
    props: dict[str, Any] | None = None,
    priority: dict[str, Any] | None = None,
    username_override: bool = False,
    icon_override: bool = False,
) -> list[dict[str, Any]]:
    """POST /hooks/{id} (HandleIncomingWebhook, CreateWebhookPost): the posts made, several
    when the text is longer than a post. `username_override`/`icon_override` stand for
    ServiceSettings.EnablePostUsernameOverride/EnablePostIconOverride (false by default)."""
    if not text and attachments is None:
        raise ValueError("web.incoming_webhook.text.app_error")
    if priority is not None and priority.get("priority") is None:
        raise ValueError("webhook.priority.priority is required")
    request_props = {**(props or {}), "webhook_display_name": hook["display_name"]}
    processed = process_attachments(sim, attachments or [])
    post_type = "slack_attachment" if processed else ""
    message = _MESSAGE_LINK.sub(r"[\2](\1)", process_slack_text(sim, text))
    stored: dict[str, Any] = {"from_webhook": "true"}
    if username_override:
        stored["override_username"] = username or hook["username"] or DEFAULT_WEBHOOK_USERNAME
    if icon_override and (icon_url or hook["icon_url"]):
        stored["override_icon_url"] = icon_url or hook["icon_url"]
    for key, value in request_props.items():
        if key not in ("attachments", "override_icon_url", "override_username", "from_webhook"):
            stored[key] = value
    channel = sim.state.channels[hook["channel_id"]]
    user = sim.state.users[hook["user_id"]]
    metadata = {"priority": dict(priority)} if priority else None
    return [
        sim.add_post(channel, user, piece, type=post_type, props=split_props, metadata=metadata)
        for piece, split_props in _splits(message, stored, processed)
    ]


def update_post(
    sim: MattermostSimulator,
    post_id: str,
    *,
    message: str | None = None,
    attachments: list[dict[str, Any]] | None = None,
    compares_attachments: bool = True,
) -> dict[str, Any]:
    """PUT /posts/{id} by an integration (App.UpdatePost): the props replaced, `edit_at` set
    when the message or the attachments change, the old version kept as a history row.
    `compares_attachments=False`: a server from before UpdatePost compared attachments
    (`AttachmentsEqual`), where a change of attachments alone leaves `edit_at`."""
    with sim._lock:
        post = sim.state.posts[post_id]
        at = sim.now()
        before = json.loads(json.dumps(post))
        new_props = dict(post["props"])
        if attachments is not None:
            new_props["attachments"] = attachments
        changed = message is not None and message != post["message"]
        if not changed and compares_attachments:  # AttachmentsEqual
            changed = new_props.get("attachments") != post["props"].get("attachments")
        history = {**before, "id": sim.new_id(), "original_id": post_id}
        history.update(delete_at=at, update_at=at)
        sim._index(history)
        post.update(props=new_props, update_at=at)
        if message is not None:
            post["message"] = message
        if changed:
            post["edit_at"] = at
        sim._bump_root(post, at)
        channel = sim.state.channels[post["channel_id"]]
        channel["last_post_at"] = max(channel["last_post_at"], at)
        sim.websocket.post_event("post_edited", post)
        return post
