"""What an analyst sees of a post written by an integration (incoming webhook, bot, slash
command), as plain text, links, notes and labels for its Media-Content.

Integrations put their content in Slack-compatible message attachments (`props.attachments`,
server/public/model/slack_attachment.go), often with an empty `message`; an incoming webhook
posts as its creator's account under a display name of its own (`props.override_username`,
`props.webhook_display_name`, `props.from_webhook = "true"`: server/channels/app/webhook.go
CreateWebhookPost); a post may carry a priority (`metadata.priority`, model/post.go
PostPriority). The web app shows an attachment as pretext, author, title, text, image, fields,
footer and buttons, in that order (webapp message_attachment.tsx): the text is written in that
order, each attachment after the message, links become external references.

Props come from whoever created the post (the REST API takes any JSON): anything of an
unexpected shape is named in a note and left out, never raised.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

# Mattermost's own bound on a message (model.PostMessageMaxRunesV2): the attachments' text is
# kept to as much again, so that a post stays within the room stix.REPLY_RESERVE keeps for it.
ATTACHMENTS_TEXT_MAX = 16_383
LINKS_MAX = 20  # external references of one post; more are named in a note
NOTES_MAX = 20  # notes on parts left out, the last one counting the rest
URL_MAX = 2_048  # longer links are left out (named in a note): they would bloat every copy
PRIORITY_LABEL = "priority:{}"
# The props that change what is shown: kept with what was delivered, and digested to tell an
# edit of an attachment (stale detection) from a reaction.
SHOWN_PROPS = (
    "attachments",
    "from_webhook",
    "from_bot",
    "override_username",
    "override_icon_url",
    "webhook_display_name",
)
_SHOWN_PROPS = frozenset(SHOWN_PROPS)
_LINK_FIELDS = (  # attachment key -> what the reference is, in display order
    ("author_link", "author"),
    ("title_link", "title"),
    ("image_url", "image"),
    ("thumb_url", "thumbnail"),
)


@dataclass(frozen=True)
class Link:
    """A link an attachment shows: its URL, and what it is (`title of attachment 1: ...`)."""

    url: str
    description: str


class Shown(NamedTuple):  # a tuple: built for every post, twice for OpenCTI
    """What the analyst sees of a post: its text, notes for the description (who posted it
    really, priority, anything left out), its links and its labels."""

    content: str
    notes: tuple[str, ...] = ()
    links: tuple[Link, ...] = ()
    labels: tuple[str, ...] = ()


def _js_string(value: Any) -> str:
    """A field value as the web app prints it (`String(field.value)`): the server turns
    webhook values into strings, posts made through the API may keep numbers or booleans."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _text(attachment: Mapping[str, Any], key: str) -> str:
    value = attachment.get(key)
    return "" if value is None else _js_string(value).strip()


def _field_lines(fields: Any, where: str, notes: list[str]) -> list[str]:
    if fields is None:
        return []
    if not isinstance(fields, list):
        notes.append(f"{where}.fields ignored: a {type(fields).__name__}, not a list")
        return []
    lines = []
    for index, field in enumerate(fields):
        if field is None:  # the server drops nil fields (StringifySlackFieldValue)
            continue
        if not isinstance(field, Mapping):
            notes.append(f"{where}.fields[{index}] ignored: a {type(field).__name__}")
            continue
        title, value = _text(field, "title"), _text(field, "value")
        lines.append(f"{title}: {value}" if title and value else title or value)
    return [line for line in lines if line]


def _action_line(actions: Any) -> str:
    if not isinstance(actions, list):
        return ""
    names = [_text(a, "name") for a in actions if isinstance(a, Mapping)]
    return ("buttons: " + ", ".join(n for n in names if n)) if any(names) else ""


def _attachment(
    attachment: Mapping[str, Any], number: int, notes: list[str], links: list[Link]
) -> str:
    """One attachment's text in display order (message_attachment.tsx render); its fallback
    (shown only in notifications) when nothing else is."""
    where = f"attachment {number}"
    lines = [
        _text(attachment, "pretext"),
        _text(attachment, "author_name"),
        _text(attachment, "title"),
        _text(attachment, "text"),
        *_field_lines(attachment.get("fields"), where, notes),
        _text(attachment, "footer"),
        _action_line(attachment.get("actions")),
    ]
    lines = [line for line in lines if line]
    if not lines and _text(attachment, "fallback"):
        lines = [_text(attachment, "fallback")]
    for key, kind in _LINK_FIELDS:
        url = attachment.get(key)
        if not url:
            continue
        label = _text(attachment, "title" if kind == "title" else "author_name")
        described = f"{kind} of {where}" + (f": {label}" if label and kind != "image" else "")
        if not isinstance(url, str) or not url.lower().startswith(("https://", "http://")):
            notes.append(f"{key} of {where} left out: not an http(s) URL")
        elif len(url) > URL_MAX:
            notes.append(f"{key} of {where} left out: {len(url)} characters long")
        else:
            links.append(Link(url, described[:500]))
    return "\n".join(lines)


def _attachments(props: Mapping[str, Any], notes: list[str], links: list[Link]) -> list[str]:
    attachments = props.get("attachments")
    if attachments is None:
        return []
    if not isinstance(attachments, list):
        notes.append(
            f"props.attachments ignored: a {type(attachments).__name__}, not a list "
            "(Mattermost shows nothing of it either)"
        )
        return []
    blocks = []
    for index, attachment in enumerate(attachments):
        if attachment is None:  # dropped by the server (ParseSlackAttachment)
            continue
        if not isinstance(attachment, Mapping):
            notes.append(f"props.attachments[{index}] ignored: a {type(attachment).__name__}")
            continue
        block = _attachment(attachment, index + 1, notes, links)
        if block:
            blocks.append(block)
    return blocks


def _capped(blocks: list[str], notes: list[str]) -> list[str]:
    text = "\n\n".join(blocks)
    if len(text) <= ATTACHMENTS_TEXT_MAX:
        return blocks
    notes.append(
        f"attachments' text cut to its first {ATTACHMENTS_TEXT_MAX} of {len(text)} characters "
        "(the whole post is at its URL)"
    )
    return [text[:ATTACHMENTS_TEXT_MAX]]


def _who(props: Mapping[str, Any], author: Mapping[str, Any]) -> list[str]:
    """Who the channel shows as the author, and the account really behind the post."""
    account = f"@{author.get('username') or author.get('id')}"
    shown_as = props.get("override_username")
    hook = props.get("webhook_display_name")
    notes = []
    if props.get("from_webhook") == "true":
        via = f'incoming webhook "{_js_string(hook)}"' if hook else "a webhook"
        name = f'shown as "{_js_string(shown_as)}", ' if shown_as else ""
        notes.append(f"{name}posted by {via} of the account {account}")
    elif shown_as:  # the web app shows an override only on webhook posts
        notes.append(f'props.override_username "{_js_string(shown_as)}" (not shown)')
    if props.get("from_bot") == "true":
        notes.append(f"posted by the bot account {account}")
    icon = props.get("override_icon_url")
    if isinstance(icon, str) and icon:
        notes.append(f"icon: {icon[:URL_MAX]}")
    return notes


def _priority(post: Mapping[str, Any], notes: list[str]) -> list[str]:
    metadata = post.get("metadata")
    priority = metadata.get("priority") if isinstance(metadata, Mapping) else None
    if priority is None:
        return []
    if not isinstance(priority, Mapping):
        notes.append(f"metadata.priority ignored: a {type(priority).__name__}")
        return []
    level = priority.get("priority")
    labels = []
    if isinstance(level, str) and level.strip():  # "" is the standard priority
        notes.append(f"priority: {level.strip()}")
        labels.append(PRIORITY_LABEL.format(level.strip().lower()))
    elif level not in (None, ""):
        notes.append(f"metadata.priority.priority ignored: a {type(level).__name__}")
    if priority.get("requested_ack") is True:
        notes.append("acknowledgement requested")
    if priority.get("persistent_notifications") is True:
        notes.append("persistent notifications")
    return labels


def _props(post: Mapping[str, Any], notes: list[str]) -> Mapping[str, Any]:
    props = post.get("props")
    if props is None or isinstance(props, Mapping):
        return props or {}
    notes.append(f"props ignored: a {type(props).__name__}, not an object")
    return {}


def _plain(post: Mapping[str, Any]) -> bool:
    """A post with nothing of an integration (most of them): rendered by its message alone,
    without the work below (run for every post, twice for OpenCTI)."""
    props, metadata = post.get("props"), post.get("metadata")
    if metadata and (not isinstance(metadata, Mapping) or metadata.get("priority") is not None):
        return False
    if not props:
        return True
    return isinstance(props, Mapping) and _SHOWN_PROPS.isdisjoint(props)


def render(post: Mapping[str, Any], author: Mapping[str, Any]) -> Shown:
    """The message, then each attachment's text; the links they show; who posted it; its
    priority as a label (`priority:urgent`). A post of a person is its message alone."""
    if _plain(post) and isinstance(post.get("message") or "", str):
        return Shown(post.get("message") or "")
    notes: list[str] = []
    links: list[Link] = []
    props = _props(post, notes)
    message = post.get("message") or ""
    message = message if isinstance(message, str) else _js_string(message)
    blocks = _capped(_attachments(props, notes, links), notes)
    content = "\n\n".join(block for block in [message.strip("\n"), *blocks] if block)
    unique = list({link.url: link for link in reversed(links)}.values())[::-1]
    if len(unique) > LINKS_MAX:
        notes.append(f"{len(unique) - LINKS_MAX} more links left out")
    labels = _priority(post, notes)
    if len(notes) > NOTES_MAX:
        notes[NOTES_MAX - 1 :] = [f"{len(notes) - NOTES_MAX + 1} more parts left out"]
    return Shown(
        content if blocks else message,
        tuple(_who(props, author) + notes),
        tuple(unique[:LINKS_MAX]),
        tuple(labels),
    )


def shown_text(post: Mapping[str, Any]) -> str:
    """The text of a post as the channel shows it (the Media-Content's content): what
    indicator extraction reads (observables.observer_for)."""
    return render(post, {}).content


def external_references(links: tuple[Link, ...] | list[Link]) -> list[dict[str, str]]:
    """OpenCTI external references (x_opencti_external_references): identified by their URL
    (pycti ExternalReference.generate_id), so the same on every delivery."""
    return [
        {"source_name": "mattermost-attachment", "url": link.url, "description": link.description}
        for link in links
    ]


def kept(post: Mapping[str, Any]) -> dict[str, Any] | None:
    """What of a post beyond its message shapes what is shown (SHOWN_PROPS, the priority):
    kept with the delivered version, as the server answers a deleted post without it."""
    props = post.get("props")
    if isinstance(props, Mapping):
        shown = {key: props[key] for key in SHOWN_PROPS if props.get(key) not in (None, "")}
    else:
        shown = {"props": props} if props else {}
    metadata = post.get("metadata")
    if isinstance(metadata, Mapping) and metadata.get("priority") is not None:
        shown["priority"] = metadata["priority"]
    return shown or None


def restored(post: dict[str, Any], parts: Mapping[str, Any] | None) -> dict[str, Any]:
    """`post` (rebuilt from the state store) with what `kept` took from it."""
    if not parts:
        return post
    parts = dict(parts)
    priority = parts.pop("priority", None)
    props = parts.pop("props", None)
    post["props"] = props if props is not None else parts
    if priority is not None:
        post["metadata"] = {**(post.get("metadata") or {}), "priority": priority}
    return post


def encode(parts: Mapping[str, Any] | None) -> str | None:
    return None if parts is None else json.dumps(parts, sort_keys=True, ensure_ascii=False)


def decode(text: str | None) -> dict[str, Any] | None:
    return None if not text else json.loads(text)


def digest(post: Mapping[str, Any]) -> str:
    """SHA-256 of what is shown: the message alone for a post without integration parts (so
    that every digest stored before them still matches), else with them. An attachment edited
    through the API changes it even where the server sets no `edit_at`."""
    message = post.get("message") or ""
    message = message if isinstance(message, str) else _js_string(message)
    parts = None if _plain(post) else kept(post)
    if parts is not None:
        message = f"{message}\x00{encode(parts)}"
    return hashlib.sha256(message.encode("utf-8")).hexdigest()
