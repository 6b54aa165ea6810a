"""A Mattermost server simulator that behaves like the real one, traps included.

It follows docs/mattermost-api.md: the four post-listing modes with their exact
selection and ordering (`since` capped at 1000 rows picked in no order, edit-history and deleted
rows included; `after`/`before` strict on create_at; an unknown anchor answers an empty list),
context posts outside `order`, AppError bodies, hidden emails, and faults on demand: the
server's own GCRA rate limiter with its exact headers (see `rate_limit`), 429s from a shared
budget that hold until their wait is over (some without Retry-After), 5xx answers as AppErrors
or as the reverse proxy's HTML pages, dropped connections and slow answers. Also: posts created
with an old `create_at` and the channel counters they move, archived channels (readable or
refused), a deleted post's files, users the account may not see.

Run it alone with sample data:  python -m tests.mattermost_sim --port 8065 --demo
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import math
import random
import string
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.mattermost_websocket import SocketHub

ID_CHARS = string.ascii_lowercase + string.digits
API = "/api/v4"
SINCE_LIMIT = 1000
# model.PostFileidsMaxRunes: Post.IsValid refuses a post whose file ids, as a JSON array, exceed
# 300 runes (server/public/model/post.go): ten 26-character ids fit (291), eleven do not.
POST_FILEIDS_MAX_RUNES = 300

# Posts the server leaves out of Channels.TotalMsgCount (model/post.go, IsJoinLeaveMessage;
# store/sqlstore/post_store.go, SaveMultiple).
JOIN_LEAVE_TYPES = frozenset(
    {
        "system_join_leave",
        "system_add_remove",
        "system_join_channel",
        "system_leave_channel",
        "system_join_team",
        "system_leave_team",
        "system_add_to_channel",
        "system_remove_from_channel",
        "system_add_to_team",
        "system_remove_from_team",
    }
)


class AppError(Exception):
    def __init__(self, status: int, error_id: str, message: str = "") -> None:
        super().__init__(error_id)
        self.status, self.error_id, self.message = status, error_id, message or error_id


@dataclass
class Faults:
    """Misbehaviour to inject; rates are probabilities per request."""

    error_rate: float = 0.0
    drop_rate: float = 0.0
    throttle_rate: float = 0.0  # 429s caused by other clients sharing the budget (same IP)
    retry_after: int = 1
    # share of injected 429s that carry Retry-After; the others give only X-RateLimit-Reset,
    # as a limiter in front of the server may (the client must fall back on it)
    retry_after_share: float = 0.5
    failing_paths: dict[str, int] = field(default_factory=dict)  # path -> status, every time
    latency: float = 0.0
    rate_limit_per_sec: float | None = None  # None: RateLimitSettings.Enable = false
    rate_limit_burst: int = 100
    seed: int = 7


@dataclass
class RequestLog:
    at: float
    method: str
    path: str
    query: dict[str, list[str]]
    status: int


@dataclass
class StoredFile:
    info: dict[str, Any]
    data: bytes


@dataclass
class State:
    teams: dict[str, dict[str, Any]] = field(default_factory=dict)
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    posts: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, StoredFile] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> user id
    members: dict[str, set[str]] = field(default_factory=dict)  # channel id -> user ids
    team_members: dict[str, set[str]] = field(default_factory=dict)  # team id -> user ids
    tiebreak: dict[str, float] = field(default_factory=dict)  # stands for the DB's row order
    by_channel: dict[str, dict[str, None]] = field(default_factory=dict)  # insertion-ordered
    replies: dict[str, list[str]] = field(default_factory=dict)  # root id -> reply ids


class MattermostSimulator:
    """Holds the data, mutates it like the server does, and serves it over HTTP."""

    def __init__(
        self,
        *,
        show_email: bool = True,
        show_full_name: bool = True,
        old_server: bool = False,
        view_archived_channels: bool = True,
        seed: int = 1,
    ) -> None:
        self.state = State()
        self.faults = Faults()
        self.show_email = show_email
        self.show_full_name = show_full_name
        self.old_server = old_server  # answers 403 instead of 404 for unknown channels
        # TeamSettings.ExperimentalViewArchivedChannels: true by default (model/config.go);
        # false makes servers up to v10 refuse an archived channel's posts (v11 forces true)
        self.view_archived_channels = view_archived_channels
        self.hidden_users: set[str] = set()  # users the token's account may not see
        self.requests: list[RequestLog] = []
        self.on_request: Callable[[str, dict[str, list[str]]], None] | None = None
        self._rng = random.Random(seed)
        self.websocket = SocketHub(self)
        self._fault_rng = random.Random(self.faults.seed)
        self._lock = threading.RLock()
        self._clock_ms = 1_700_000_000_000
        self._skew_ms = 0  # how far advance_clock moved the server's clock ahead of ours
        self._tat: float | None = None  # GCRA theoretical arrival time (monotonic s)
        self._throttled_until = 0.0  # an injected 429 holds until then (monotonic s)
        self._version = 0  # bumped by every change to posts: invalidates the listing cache
        self._listing: dict[str, tuple[int, list[dict[str, Any]], list[int]]] = {}
        # Read replicas (SqlSettings.DataSourceReplicas): the post listings and GetSingle read
        # GetReplicaX (post_store.go getPostsAround, getRootPosts, GetPostsSince, GetSingle),
        # while the WebSocket event is sent from the master's data as soon as it is written
        # (app/post.go): a `posted` event can come before a listing shows the post. Seconds.
        self.replica_lag: float = 0.0
        self._created: dict[str, float] = {}  # post id -> when inserted (monotonic)
        self._history: dict[str, list[tuple[float, dict[str, Any]]]] = {}  # rows before changes
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- data ------------------------------------------------------------------------------

    def new_id(self) -> str:
        with self._lock:
            return "".join(self._rng.choice(ID_CHARS) for _ in range(26))

    def now(self) -> int:
        """A simulated clock in ms, always moving forward."""
        with self._lock:
            self._clock_ms = max(self._clock_ms + 1, int(time.time() * 1000) + self._skew_ms)
            return self._clock_ms

    def advance_clock(self, ms: int) -> None:
        """Move the server's clock forward (what waiting that long would do)."""
        with self._lock:
            self._skew_ms += ms
            self._clock_ms = max(self._clock_ms, int(time.time() * 1000) + self._skew_ms)

    def add_team(
        self,
        name: str,
        display_name: str | None = None,
        members: list[dict[str, Any]] = (),  # type: ignore[assignment]
    ) -> dict[str, Any]:
        team = {"id": self.new_id(), "name": name, "display_name": display_name or name}
        self.state.teams[team["id"]] = team
        self.state.team_members[team["id"]] = {m["id"] for m in members}
        return team

    def join_team(self, team: dict[str, Any], user: dict[str, Any]) -> None:
        self.state.team_members.setdefault(team["id"], set()).add(user["id"])

    def add_user(
        self,
        username: str,
        *,
        email: str | None = None,
        first_name: str = "",
        last_name: str = "",
        is_bot: bool = False,
        token: str | None = None,
        admin: bool = False,
    ) -> dict[str, Any]:
        at = self.now()
        user = {
            "id": self.new_id(),
            "username": username,
            "email": email if email is not None else f"{username}@example.org",
            "first_name": first_name,
            "last_name": last_name,
            "nickname": "",
            "is_bot": is_bot,
            "create_at": at,
            "update_at": at,
            "delete_at": 0,
            "roles": "system_admin system_user" if admin else "system_user",
        }
        self.state.users[user["id"]] = user
        if token:
            self.state.tokens[token] = user["id"]
        return user

    def deactivate_user(self, user_id: str) -> None:
        self.state.users[user_id]["delete_at"] = self.now()

    def add_channel(
        self,
        team: dict[str, Any] | None,
        name: str,
        *,
        type: str = "O",
        members: list[dict[str, Any]] = (),  # type: ignore[assignment]
        purpose: str = "",
        header: str = "",
        display_name: str | None = None,
    ) -> dict[str, Any]:
        at = self.now()
        channel = {
            "id": self.new_id(),
            "team_id": team["id"] if team else "",
            "type": type,
            "name": name,
            "display_name": display_name or name,
            "header": header,
            "purpose": purpose,
            "create_at": at,
            "update_at": at,
            "delete_at": 0,
            "last_post_at": 0,
            "last_root_post_at": 0,
            "total_msg_count": 0,
            "total_msg_count_root": 0,
        }
        self.state.channels[channel["id"]] = channel
        self.state.members[channel["id"]] = {m["id"] for m in members}
        if team:  # a channel member is a member of its team (AddChannelMember requires it)
            self.state.team_members.setdefault(team["id"], set()).update(m["id"] for m in members)
        return channel

    def rename_channel(self, channel_id: str, name: str) -> None:
        """`PATCH /channels/{id}/patch` with a new name: same id, same posts."""
        self.state.channels[channel_id].update(name=name, display_name=name, update_at=self.now())

    def move_channel(self, channel_id: str, team: dict[str, Any]) -> None:
        """`POST /channels/{id}/move` (MoveChannel): the channel, its id and posts, change team."""
        self.state.channels[channel_id].update(team_id=team["id"], update_at=self.now())

    def rename_team(self, team_id: str, name: str) -> None:
        """The team's name (the one in URLs and permalinks) changed; its id stays."""
        self.state.teams[team_id]["name"] = name

    def rename_user(self, user_id: str, username: str) -> None:
        """`PUT /users/{id}/patch` with a new username: same id, earlier posts keep it."""
        self.state.users[user_id].update(username=username, update_at=self.now())

    def add_direct_channel(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        name = "__".join(sorted((a["id"], b["id"])))
        return self.add_channel(None, name, type="D", members=[a, b], display_name="")

    def add_file(
        self, user: dict[str, Any], name: str, data: bytes, mime_type: str
    ) -> dict[str, Any]:
        at = self.now()
        info = {
            "id": self.new_id(),
            "user_id": user["id"],
            "post_id": "",
            "channel_id": "",
            "create_at": at,
            "update_at": at,
            "delete_at": 0,
            "name": name,
            "extension": name.rsplit(".", 1)[-1].lower() if "." in name else "",
            "size": len(data),
            "mime_type": mime_type,
            "width": 0,
            "height": 0,
            "has_preview_image": mime_type.startswith("image/"),
            "mini_preview": None,
        }
        self.state.files[info["id"]] = StoredFile(info, data)
        return info

    def add_post(
        self,
        channel: dict[str, Any],
        user: dict[str, Any],
        message: str,
        *,
        root: dict[str, Any] | None = None,
        create_at: int | None = None,
        files: list[dict[str, Any]] = (),  # type: ignore[assignment]
        type: str = "",
        props: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create a post as the API would: a reply bumps its root's update_at. Its file ids are
        deduplicated (Post.PreCommit) and, like Post.IsValid, more than fit 300 runes of JSON
        (eleven files) are refused, never truncated. `props` and `metadata` as stored (an
        integration's: tests/mattermost_webhooks.py)."""
        file_ids = list(dict.fromkeys(f["id"] for f in files))
        if len(json.dumps(file_ids, separators=(",", ":"))) > POST_FILEIDS_MAX_RUNES:
            raise AppError(400, "model.post.is_valid.file_ids.app_error")
        with self._lock:
            at = create_at if create_at is not None else self.now()
            self._clock_ms = max(self._clock_ms, at)
            post = {
                "id": self.new_id(),
                "create_at": at,
                "update_at": at,
                "edit_at": 0,
                "delete_at": 0,
                "is_pinned": False,
                "user_id": user["id"],
                "channel_id": channel["id"],
                "root_id": root["id"] if root else "",
                "original_id": "",
                "message": message,
                "type": type,
                "props": json.loads(json.dumps(props or {})),
                "hashtags": "",
                "file_ids": file_ids,
                "reply_count": 0,
                "last_reply_at": 0,
                "participants": None,
                "metadata": json.loads(json.dumps(metadata or {})),
            }
            for info in files:
                info.update(post_id=post["id"], channel_id=channel["id"])
            self._index(post)
            if root:
                self.state.replies.setdefault(root["id"], []).append(post["id"])
                stored_root = self.state.posts[root["id"]]
                self._before_change(stored_root)
                # SaveMultiple: "UPDATE Posts SET UpdateAt = <the reply's CreateAt>" on the
                # root, unconditionally: an old reply moves its root's update_at back
                stored_root["update_at"] = at
                self._moved(stored_root)
                stored_root["reply_count"] += 1
                stored_root["last_reply_at"] = at
            self._count(channel, post)
            self.websocket.post_event("posted", post)
            return post

    def _count(self, channel: dict[str, Any], post: dict[str, Any]) -> None:
        """The channel's counters as SaveMultiple moves them: LastPostAt = GREATEST(...) (an
        old create_at leaves it), TotalMsgCount + 1 unless a join/leave message, and the
        same for root posts (post_store.go)."""
        at, counted = post["create_at"], post["type"] not in JOIN_LEAVE_TYPES
        channel["last_post_at"] = max(channel["last_post_at"], at)
        channel["total_msg_count"] += counted
        if not post["root_id"]:
            channel["last_root_post_at"] = max(channel["last_root_post_at"], at)
            channel["total_msg_count_root"] += counted

    def edit_post(self, post_id: str, message: str) -> dict[str, Any]:
        """Edit like the server: a history row (new id, original_id set, deleted) is inserted."""
        with self._lock:
            self._version += 1
            post = self.state.posts[post_id]
            at = self.now()
            history = json.loads(json.dumps(post))
            history.update(id=self.new_id(), original_id=post_id, delete_at=at, update_at=at)
            self._index(history)
            self._before_change(post)
            post.update(message=message, edit_at=at, update_at=at)
            self._moved(post)
            self._bump_root(post, at)
            # SqlPostStore.Update: "UPDATE Channels SET LastPostAt = now WHERE LastPostAt < now"
            channel = self.state.channels[post["channel_id"]]
            channel["last_post_at"] = max(channel["last_post_at"], at)
            self.websocket.post_event("post_edited", post)
            return post

    def _index(self, post: dict[str, Any]) -> None:
        self._version += 1
        self.state.posts[post["id"]] = post
        self.state.tiebreak[post["id"]] = self._rng.random()
        self._created[post["id"]] = time.monotonic()
        self.state.by_channel.setdefault(post["channel_id"], {})[post["id"]] = None

    def _before_change(self, post: dict[str, Any]) -> None:
        """Keep the row as it was, for the replica (`replica_lag`) to serve a while longer."""
        if self.replica_lag:
            self._history.setdefault(post["id"], []).append((time.monotonic(), dict(post)))

    def _replicated(self, post: dict[str, Any] | None) -> dict[str, Any] | None:
        """The row as the read replica has it: `replica_lag` seconds behind the master; None
        while its insert has not reached the replica."""
        if post is None or not self.replica_lag:
            return post
        horizon = time.monotonic() - self.replica_lag
        if self._created.get(post["id"], 0.0) > horizon:
            return None
        for changed_at, before in self._history.get(post["id"], ()):
            if changed_at > horizon:
                return before
        return post

    def replica_rows(self, channel_id: str) -> list[dict[str, Any]]:
        """The channel's rows on the read replica."""
        rows = self.channel_rows(channel_id)
        if not self.replica_lag:
            return rows
        return [r for p in rows if (r := self._replicated(p)) is not None]

    def _moved(self, post: dict[str, Any]) -> None:
        """An UPDATE moved the row: its place among the posts of its millisecond changes.

        The listings order by CreateAt alone, without an Id tie-break (post_store.go:
        getPostsAround, getRootPosts), and PostgreSQL writes an updated row as a new tuple
        (its btree keeps equal keys in heap order), so tied posts come back in another order
        after any update of one of them. Here: a new random place among its ties."""
        self.state.tiebreak[post["id"]] = self._rng.random()

    def channel_rows(self, channel_id: str) -> list[dict[str, Any]]:
        posts = self.state.posts
        return [posts[i] for i in self.state.by_channel.get(channel_id, {}) if i in posts]

    def react(self, post_id: str) -> None:
        with self._lock:
            self._version += 1
            self._before_change(self.state.posts[post_id])
            self.state.posts[post_id]["update_at"] = self.now()
            self._moved(self.state.posts[post_id])

    def delete_post(self, post_id: str) -> None:
        """Soft delete; deleting a root deletes its replies too."""
        with self._lock:
            self._version += 1
            at = self.now()
            post = self.state.posts[post_id]
            if post["delete_at"]:  # App.DeletePost: GetSingle(id, false) finds no such post
                return
            before = json.loads(json.dumps(post))  # the event carries the post as read before
            # SqlPostStore.Delete: "UPDATE Posts SET DeleteAt = ?, UpdateAt = ?, Props = ...
            # WHERE Id = ? OR RootId = ?": the replies of a root, those deleted already and
            # the edit-history rows of its replies (their RootId is the root) included, all
            # stamped again; a root's own history rows (RootId '') are not. The root of a
            # deleted reply is not touched (only its Threads row is).
            targets = [
                row
                for row in self.channel_rows(post["channel_id"])
                if row["id"] == post_id or row["root_id"] == post_id
            ]
            for target in targets:
                self._before_change(target)
                target.update(delete_at=at, update_at=at)
                self._moved(target)
                target["props"] = {**target["props"], "deleteBy": post["user_id"]}
            # App.DeletePost then deletes the files of that post (not of its replies):
            # FileInfo.DeleteForPost sets their DeleteAt, and GET /files/{id} answers 404
            # (app/post.go, file_info_store.go). SqlPostStore.Delete updates Posts only: the
            # channel's TotalMsgCount and LastPostAt stay as they were.
            for file_id in post["file_ids"]:
                if file_id in self.state.files:
                    self.state.files[file_id].info["delete_at"] = at
            if not before["delete_at"]:  # one event, for the post asked: none for its replies
                self.websocket.post_event("post_deleted", before, delete_by=post["user_id"])

    def purge_post(self, post_id: str) -> None:
        """Hard delete (data retention): the row is gone, as if it never existed."""
        with self._lock:
            self._version += 1
            post = self.state.posts.pop(post_id, None)
            if post:
                self.state.by_channel[post["channel_id"]].pop(post_id, None)

    def _bump_root(self, post: dict[str, Any], at: int) -> None:
        if post["root_id"] and post["root_id"] in self.state.posts:
            root = self.state.posts[post["root_id"]]
            self._before_change(root)
            root["update_at"] = max(root["update_at"], at)
            self._moved(root)

    def archive_channel(self, channel_id: str, by: dict[str, Any]) -> dict[str, Any]:
        """App.DeleteChannel: a "has archived the channel." system post, then the channel's
        DeleteAt (and UpdateAt) set; members and posts are kept (app/channel.go)."""
        with self._lock:
            channel = self.state.channels[channel_id]
            self.add_post(
                channel,
                by,
                f"{by['username']} has archived the channel.",
                type="system_channel_deleted",
            )
            at = self.now()
            channel.update(delete_at=at, update_at=at)
            return channel

    def hide_user(self, user_id: str) -> None:
        """The account may not see this user (view restrictions: no shared team or channel
        and no view_members permission, App.GetViewUsersRestrictions)."""
        if user_id not in self.state.users:
            raise KeyError(user_id)
        self.hidden_users.add(user_id)

    def live_posts(self, channel_id: str) -> list[dict[str, Any]]:
        """What a user sees: non-deleted, non-history posts of the channel."""
        return [
            p for p in self.channel_rows(channel_id) if not p["delete_at"] and not p["original_id"]
        ]

    # -- serving ---------------------------------------------------------------------------

    def start(self, port: int = 0, host: str = "127.0.0.1") -> MattermostSimulator:
        simulator = self

        class Handler(_Handler):
            sim = simulator

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def stop(self) -> None:
        self.websocket.forget()
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    # -- request handling ------------------------------------------------------------------

    def rate_limit(self) -> tuple[bool, dict[str, str]]:
        """The server's limiter, step for step: Mattermost's RateLimiter (server/channels/app/
        ratelimit.go) is throttled's GCRARateLimiter with MaxRate PerSec and MaxBurst, keyed
        by client; throttled's rate.go (RateLimitCtx) and http.go (setRateLimitHeaders) give
        the headers. X-RateLimit-Limit is MaxBurst + 1; X-RateLimit-Remaining is how many more
        requests would pass now; X-RateLimit-Reset is ceil(seconds until the bucket is FULL
        again), not until the next request may pass; Retry-After (on a 429 only) is ceil(seconds
        until one request may pass). A request refused does not move the state, so a retry
        before Retry-After is refused again."""
        if self.faults.rate_limit_per_sec is None:
            return True, {}
        with self._lock:
            interval = 1.0 / self.faults.rate_limit_per_sec  # emissionInterval
            limit = self.faults.rate_limit_burst + 1
            tolerance = interval * limit  # delayVariationTolerance
            now = time.monotonic()
            tat = now if self._tat is None else self._tat
            new_tat = max(now, tat) + interval
            allow_at = new_tat - tolerance
            retry_after: float | None = None
            if now < allow_at:
                retry_after, ttl = allow_at - now, tat - now
            else:
                self._tat, ttl = new_tat, new_tat - now
            spare = tolerance - ttl
            headers = {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(int(spare / interval) if spare > -interval else 0),
                "X-RateLimit-Reset": str(math.ceil(ttl)),
            }
            if retry_after is not None:
                headers["Retry-After"] = str(math.ceil(retry_after))
            return retry_after is None, headers

    def injected_throttle(self, fault: str | None) -> dict[str, str] | None:
        """429 headers while an injected throttle holds (a retry before its wait is over is
        refused again, as the real limiter does), or for a new one; None otherwise."""
        with self._lock:
            now = time.monotonic()
            wait = self._throttled_until - now
            if wait <= 0:
                if fault != "throttle":
                    return None
                wait = float(self.faults.retry_after)
                self._throttled_until = now + wait
            headers = {"X-RateLimit-Reset": str(math.ceil(wait))}
            if self._fault_rng.random() < self.faults.retry_after_share:
                headers["Retry-After"] = str(math.ceil(wait))
            return headers

    def fault(self) -> str | None:
        with self._lock:
            roll = self._fault_rng.random()
        if roll < self.faults.drop_rate:
            return "drop"
        if roll < self.faults.drop_rate + self.faults.error_rate:
            return "error"
        if roll < self.faults.drop_rate + self.faults.error_rate + self.faults.throttle_rate:
            return "throttle"
        return None

    def caller(self, headers: Any, query: dict[str, list[str]]) -> dict[str, Any]:
        if "access_token" in query:
            raise AppError(401, "api.context.token_provided.app_error")
        auth = headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        user_id = self.state.tokens.get(token)
        if not user_id:
            raise AppError(
                401, "api.context.session_expired.app_error", "Invalid or expired session"
            )
        return self.state.users[user_id]

    def route(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes, me: dict
    ) -> Any:
        parts = path[len(API) :].strip("/").split("/")
        match method, parts:
            case "GET", ["users", "me"]:
                return self.visible_user(me, me)
            case "GET", ["users", user_id, "teams"]:
                # api4/team.go getTeamsForUser -> TeamStore.GetTeamsByUserId: the teams the
                # user is a member of; not paged
                return [self.state.teams[t] for t in sorted(self.team_ids_of(user_id, me))]
            case "GET", ["users", user_id, "teams", team_id, "channels"]:
                return self.member_channels(self.user_of(user_id, me), team_id, query)
            case "GET", ["teams", team_id, "channels"]:
                return self.public_channels(team_id, query, me)
            case "GET", ["teams", team_id, "channels", "deleted"]:
                return self.archived_channels(team_id, query, me)
            case "GET", ["users", user_id]:
                # api4/user.go getUser: UserCanSeeOtherUser is asked first (403), then the
                # user is loaded (404)
                if _valid(user_id) in self.hidden_users and user_id != me["id"]:
                    raise AppError(403, "api.context.permissions.app_error")
                user = self.state.users.get(user_id)
                if not user:
                    raise AppError(404, "app.user.missing_account.const")
                return self.visible_user(user, me)
            case "POST", ["posts"]:
                # api4/post.go createPost (server/channels/api4/post.go): the body's
                # channel_id, message and root_id; the caller needs create_post in the
                # channel (a member, or for a public channel a member of its team, who joins
                # it on posting: readable_channel's rule); the post, as created. The server
                # answers 201 Created; the simulator's routes answer 200.
                request = json.loads(body or b"{}")
                if not isinstance(request, dict) or not request.get("message"):
                    raise AppError(400, "api.context.invalid_body_param.app_error")
                channel = self.readable_channel(str(request.get("channel_id", "")), me)
                root = self.state.posts.get(str(request.get("root_id") or ""))
                return self.add_post(channel, me, str(request["message"]), root=root)
            case "POST", ["users", "ids"]:
                ids = json.loads(body or b"[]")
                if not isinstance(ids, list) or not ids:
                    raise AppError(400, "api.context.invalid_body_param.app_error")
                # getUsersByIds passes the view restrictions to the store: users the account
                # may not see are left out, silently
                return [
                    self.visible_user(self.state.users[i], me)
                    for i in ids
                    if i in self.state.users and (i not in self.hidden_users or i == me["id"])
                ]
            case "GET", ["channels", channel_id]:
                return self.readable_channel(channel_id, me)
            case "GET", ["teams", team_id]:
                team = self.state.teams.get(_valid(team_id))
                if not team:
                    raise AppError(404, "app.team.get.find.app_error")
                return team
            case "GET", ["channels", channel_id, "posts"]:
                channel = self.readable_channel(channel_id, me)
                # api4/post.go getPostsForChannel (servers up to v10), after the permission
                # check; GET /channels/{id} itself answers an archived channel (delete_at > 0)
                if channel["delete_at"] and not self.view_archived_channels:
                    raise AppError(
                        403, "api.user.view_archived_channels.get_posts_for_channel.app_error"
                    )
                return self.list_posts(channel["id"], query, me)
            case "GET", ["posts", post_id]:
                post = self._replicated(self.state.posts.get(_valid(post_id)))
                if not post or post["delete_at"]:  # GetSingle reads the replica
                    raise AppError(404, "app.post.get.app_error")
                self.readable_channel(post["channel_id"], me)
                return self.with_metadata(post)
            case "GET", ["files", file_id, "info"]:
                return self.readable_file(file_id, me).info
            case "GET", ["files", file_id]:
                return self.readable_file(file_id, me)
        raise AppError(404, "api.context.404.app_error", "Sorry, we could not find the page.")

    def readable_channel(self, channel_id: str, me: dict[str, Any]) -> dict[str, Any]:
        """App.HasPermissionToReadChannel: a member, or any member of the team for a public
        (O) channel (read_public_channel, without joining it)."""
        channel = self.state.channels.get(_valid(channel_id))
        if channel is None:
            if self.old_server:
                raise AppError(403, "api.context.permissions.app_error")
            raise AppError(404, "app.channel.get.existing.app_error")
        if me["id"] not in self.state.members[channel["id"]] and not (
            channel["type"] == "O"
            and me["id"] in self.state.team_members.get(channel["team_id"], set())
        ):
            raise AppError(403, "api.context.permissions.app_error")
        return channel

    # -- finding channels (api4/channel.go, api4/team.go; store/sqlstore/channel_store.go) --

    def user_of(self, user_id: str, me: dict[str, Any]) -> dict[str, Any]:
        """`me` or the account's own id; another user's lists need edit_other_users."""
        if user_id in ("me", me["id"]):
            return me
        _valid(user_id)
        if "system_admin" not in me["roles"]:
            raise AppError(403, "api.context.permissions.app_error")
        if user_id not in self.state.users:
            raise AppError(404, "app.user.missing_account.const")
        return self.state.users[user_id]

    def team_ids_of(self, user_id: str, me: dict[str, Any]) -> list[str]:
        user = self.user_of(user_id, me)
        return [t for t, members in self.state.team_members.items() if user["id"] in members]

    def team_member(self, team_id: str, me: dict[str, Any]) -> str:
        """view_team / list_team_channels: team members (and system admins) only."""
        team_id = _valid(team_id)
        if team_id not in self.state.teams:
            raise AppError(404, "app.team.get.find.app_error")
        members = self.state.team_members.get(team_id, set())
        if me["id"] not in members and "system_admin" not in me["roles"]:
            raise AppError(403, "api.context.permissions.app_error")
        return team_id

    def member_channels(
        self, user: dict[str, Any], team_id: str, query: dict[str, list[str]]
    ) -> list[dict[str, Any]]:
        """GET /users/{id}/teams/{team}/channels (ChannelStore.GetChannels): the user's
        channels of the team AND its direct and group channels (TeamId = ''), archived ones
        only with include_deleted=true; ordered by display name; not paged."""
        team_id = self.team_member(team_id, user)
        deleted = query.get("include_deleted", ["false"])[0] == "true"
        found = [
            c
            for c in self.state.channels.values()
            if c["team_id"] in (team_id, "")
            and user["id"] in self.state.members[c["id"]]
            and (deleted or not c["delete_at"])
        ]
        return sorted(found, key=lambda c: (c["display_name"], c["id"]))

    def _page(self, rows: list[dict[str, Any]], query: dict[str, list[str]]) -> list:
        """c.Params: per_page defaults to 60, at most 200; LIMIT per_page OFFSET page*per_page
        after ORDER BY DisplayName."""
        page = max(_int(query, "page", 0), 0)
        per_page = _int(query, "per_page", 60)
        per_page = 60 if per_page <= 0 else min(per_page, 200)
        rows = sorted(rows, key=lambda c: (c["display_name"], c["id"]))
        return rows[page * per_page : (page + 1) * per_page]

    def public_channels(
        self, team_id: str, query: dict[str, list[str]], me: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """GET /teams/{id}/channels (list_team_channels): the team's public channels, archived
        ones left out, paged."""
        team_id = self.team_member(team_id, me)
        rows = [
            c
            for c in self.state.channels.values()
            if c["team_id"] == team_id and c["type"] == "O" and not c["delete_at"]
        ]
        return self._page(rows, query)

    def archived_channels(
        self, team_id: str, query: dict[str, list[str]], me: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """GET /teams/{id}/channels/deleted (ChannelStore.GetDeleted): the team's archived
        public channels and the archived private ones the caller is a member of, paged."""
        team_id = _valid(team_id)
        rows = [
            c
            for c in self.state.channels.values()
            if c["team_id"] == team_id
            and c["delete_at"]
            and (c["type"] == "O" or me["id"] in self.state.members[c["id"]])
        ]
        return self._page(rows, query)

    def readable_file(self, file_id: str, me: dict[str, Any]) -> StoredFile:
        stored = self.state.files.get(_valid(file_id))
        if stored is None or stored.info["delete_at"]:
            raise AppError(404, "app.file_info.get.app_error")
        if stored.info["channel_id"]:
            self.readable_channel(stored.info["channel_id"], me)
        return stored

    def visible_user(self, user: dict[str, Any], me: dict[str, Any]) -> dict[str, Any]:
        shown = dict(user)
        if "system_admin" not in me["roles"] and user["id"] != me["id"]:
            if not self.show_email:
                shown["email"] = ""
            if not self.show_full_name:
                shown["first_name"] = shown["last_name"] = ""
        return shown

    def with_metadata(self, post: dict[str, Any]) -> dict[str, Any]:
        shown = json.loads(json.dumps(post))
        if post["delete_at"]:
            shown["message"] = ""
            shown["metadata"] = {}
            return shown
        files = [self.state.files[f].info for f in post["file_ids"] if f in self.state.files]
        if files:
            shown["metadata"] = {**shown["metadata"], "files": files}
        return shown

    def list_posts(
        self, channel_id: str, query: dict[str, list[str]], me: dict[str, Any]
    ) -> dict[str, Any]:
        """GET /channels/{id}/posts: one mode, picked in the server's order; others ignored."""
        page = _int(query, "page", 0)
        per_page = _int(query, "per_page", 60)
        per_page = 60 if per_page <= 0 else min(per_page, 200)
        page = max(page, 0)
        since = _int(query, "since", 0)
        after = query.get("after", [""])[0]
        before = query.get("before", [""])[0]
        if (
            query.get("include_deleted", ["false"])[0] == "true"
            and "system_admin" not in me["roles"]
        ):
            raise AppError(403, "api.context.permissions.app_error")
        key = lambda p: (p["create_at"], self.state.tiebreak[p["id"]])  # noqa: E731
        whole = query.get("skipFetchThreads", ["false"])[0] != "true"
        if since > 0:
            changed = [p for p in self.replica_rows(channel_id) if p["update_at"] > since]
            self._rng.shuffle(changed)  # LIMIT 1000 with no ORDER BY: any 1000 rows
            picked = changed[:SINCE_LIMIT]
            roots = {p["root_id"] for p in picked if p["root_id"]}
            picked_ids = {p["id"] for p in picked}
            picked += [
                row
                for r in roots
                if r not in picked_ids
                and (row := self._replicated(self.state.posts.get(r))) is not None
            ]
            # GetPostsSince: the rows, and the roots of the replies among them, are all in
            # `posts`; only those changed after `since` are in `order` (p.UpdateAt > Time):
            # a root sent along for a reply is in `posts` alone unless it changed too
            rows = sorted(picked, key=key, reverse=True)
            selected = [p for p in rows if p["update_at"] > since]
            return self._answer(selected, [p for p in rows if p["update_at"] <= since], etag=False)
        live, stamps = self._live_ascending(channel_id)
        if after or before:
            anchor_id = _valid(after or before)
            anchor = self._replicated(self.state.posts.get(anchor_id))
            if anchor is None:
                return self._answer([], [], etag=True)
            if after:
                start = bisect.bisect_right(stamps, anchor["create_at"])
                begin = start + page * per_page
                selected = live[begin : begin + per_page][::-1]
            else:
                end = bisect.bisect_left(stamps, anchor["create_at"]) - page * per_page
                selected = live[max(0, end - per_page) : max(0, end)][::-1]
            threads = self._threads(selected, every_post=True, whole=whole)
            return self._answer(selected, threads, etag=True)
        end = len(live) - page * per_page
        selected = live[max(0, end - per_page) : max(0, end)][::-1]
        threads = self._threads(selected, every_post=False, whole=whole)
        return self._answer(selected, threads, etag=True)

    def _live_ascending(self, channel_id: str) -> tuple[list[dict[str, Any]], list[int]]:
        """Non-deleted posts by (create_at, row order), as the database's index returns them;
        rebuilt only after a change."""
        cached = self._listing.get(channel_id)
        if cached is None or cached[0] != self._version or self.replica_lag:
            live = sorted(
                (p for p in self.replica_rows(channel_id) if not p["delete_at"]),
                key=lambda p: (p["create_at"], self.state.tiebreak[p["id"]]),
            )
            cached = (self._version, live, [p["create_at"] for p in live])
            self._listing[channel_id] = cached
        return cached[1], cached[2]

    def _threads(
        self, selected: list[dict[str, Any]], *, every_post: bool, whole: bool
    ) -> list[dict[str, Any]]:
        """Every live post of every thread the page touches, sent in `posts`, not in `order`,
        unless `skipFetchThreads=true` (`whole` False): then the roots of its replies only.
        `after`/`before` (getPostsAround): the threads of every post of the page, `Id IN
        rootIds OR RootId IN rootIds` with rootIds the page's ids and their roots. The default
        page (getParentsPostsPostgreSQL): the threads of its replies only (`q1.RootId = q2.Id
        OR q1.RootId = q2.RootId`). post_store.go."""
        posts = self.state.posts
        roots: set[str] = set()
        for post in selected:
            if post["root_id"]:
                roots.add(post["root_id"])
            elif every_post and whole:
                roots.add(post["id"])
        ids = {p["id"] for p in selected}
        extra: dict[str, dict[str, Any]] = {}
        for root_id in roots:
            thread = self.state.replies.get(root_id, ()) if whole else ()
            for post_id in (root_id, *thread):
                post = self._replicated(posts.get(post_id))
                if post is not None and post_id not in ids and not post["delete_at"]:
                    extra[post_id] = post
        return list(extra.values())

    def _answer(
        self, selected: list[dict[str, Any]], context: list[dict[str, Any]], *, etag: bool
    ) -> dict[str, Any]:
        posts = {p["id"]: self.with_metadata(p) for p in (*selected, *context)}
        return {
            "order": [p["id"] for p in selected],
            "posts": posts,
            "next_post_id": "",
            "prev_post_id": "",
            "first_inaccessible_post_time": 0,
            "_etag": etag,
        }


PROXY_REASONS = {502: "Bad Gateway", 504: "Gateway Time-out"}


def proxy_page(status: int) -> bytes:
    """The page nginx (the reverse proxy Mattermost's deployment guide puts in front) sends
    when the server behind it is down or slow: HTML, not an AppError (nginx's
    ngx_http_special_response.c)."""
    title = f"{status} {PROXY_REASONS[status]}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()


def _valid(identifier: str) -> str:
    if len(identifier) != 26 or any(ch not in ID_CHARS for ch in identifier):
        raise AppError(
            400, "api.context.invalid_url_param.app_error", "Invalid or missing parameter"
        )
    return identifier


def _int(query: dict[str, list[str]], name: str, default: int) -> int:
    try:
        return int(query.get(name, [str(default)])[0])
    except ValueError:
        return default


class _Handler(BaseHTTPRequestHandler):
    sim: MattermostSimulator
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave at once, no 40 ms stall

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests read `sim.requests` instead."""

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header from the server's clock (whole seconds, as HTTP dates are), the
        one its `update_at` stamps come from."""
        from email.utils import formatdate

        if timestamp is None:
            timestamp = (time.time() * 1000 + self.sim._skew_ms) / 1000
        return formatdate(timestamp, usegmt=True)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        sim = self.sim
        split = urlsplit(self.path)
        query = parse_qs(split.query)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request_id = uuid.uuid4().hex[:26]
        if sim.faults.latency:
            time.sleep(sim.faults.latency)
        if sim.on_request:
            sim.on_request(split.path, query)
        allowed, limit_headers = sim.rate_limit()
        if not allowed:
            self._log(method, split.path, query, 429)
            self._send(429, b"limit exceeded\n", "text/plain; charset=utf-8", limit_headers)
            return
        if split.path == f"{API}/websocket" and self.headers.get("Upgrade", "").lower() == (
            "websocket"
        ):  # behind the rate limiter, as every request (app/server.go)
            self._log(method, split.path, query, 101)
            sim.websocket.serve(self, query)
            return
        if split.path in sim.faults.failing_paths:
            status = sim.faults.failing_paths[split.path]
            self._log(method, split.path, query, status)
            self._app_error(
                AppError(status, "app.fault.injected", "Injected fault"), request_id, limit_headers
            )
            return
        fault = sim.fault() if split.path.startswith(API) else None
        if fault == "drop":
            self._log(method, split.path, query, 0)
            self.close_connection = True
            self.connection.shutdown(2)
            return
        throttle = sim.injected_throttle(fault) if split.path.startswith(API) else None
        if throttle is not None:
            self._log(method, split.path, query, 429)
            headers = {**limit_headers, **throttle}
            if "Retry-After" not in throttle:
                headers.pop("Retry-After", None)
            self._send(429, b"limit exceeded\n", "text/plain; charset=utf-8", headers)
            return
        if fault == "error":
            status = sim._fault_rng.choice([500, 502, 503, 504])
            self._log(method, split.path, query, status)
            if status in (502, 504):  # from the reverse proxy: its HTML page, no AppError
                self._send(status, proxy_page(status), "text/html", {})
                return
            self._app_error(
                AppError(status, "app.fault.injected", "Injected fault"), request_id, limit_headers
            )
            return
        try:
            me = sim.caller(self.headers, query)
            with sim._lock:
                result = sim.route(method, split.path, query, body, me)
        except AppError as error:
            self._log(method, split.path, query, error.status)
            self._app_error(error, request_id, limit_headers)
            return
        headers = {**limit_headers, "X-Request-ID": request_id}
        if isinstance(result, StoredFile):
            self._log(method, split.path, query, 200)
            self._file(result, headers)
            return
        etag = result.pop("_etag", False) if isinstance(result, dict) else False
        payload = json.dumps(result).encode()
        if etag:
            tag = hashlib.md5(payload).hexdigest()
            headers["ETag"] = tag
            if self.headers.get("If-None-Match") == tag:
                self._log(method, split.path, query, 304)
                self._send(304, b"", None, headers)
                return
        self._log(method, split.path, query, 200)
        self._send(200, payload, "application/json", headers)

    def _log(self, method: str, path: str, query: dict[str, list[str]], status: int) -> None:
        with self.sim._lock:
            self.sim.requests.append(RequestLog(time.monotonic(), method, path, query, status))

    def _app_error(self, error: AppError, request_id: str, extra: dict[str, str]) -> None:
        body = json.dumps(
            {
                "id": error.error_id,
                "message": error.message,
                "detailed_error": "",
                "request_id": request_id,
                "status_code": error.status,
            }
        ).encode()
        self._send(error.status, body, "application/json", {**extra, "X-Request-ID": request_id})

    def _file(self, stored: StoredFile, headers: dict[str, str]) -> None:
        info = stored.info
        mime = info["mime_type"]
        if mime in ("text/html", "application/javascript", "text/javascript"):
            mime = "text/plain"
        name = info["name"]
        ascii_name = name.encode("ascii", "replace").decode().replace('"', "")
        from urllib.parse import quote

        disposition = "inline" if mime.startswith(("image/", "video/", "audio/")) else "attachment"
        headers["Content-Disposition"] = (
            f"{disposition};filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"
        )
        self._send(200, stored.data, mime, headers)

    def _send(
        self, status: int, body: bytes, content_type: str | None, headers: dict[str, str]
    ) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(body)


# -- sample data -----------------------------------------------------------------------------

DEMO_TOKEN = "demo-token-not-secret-0000"


@dataclass
class Demo:
    sim: MattermostSimulator
    token: str
    channels: list[dict[str, Any]]
    users: list[dict[str, Any]]


PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def seed_demo(sim: MattermostSimulator, *, big: int = 1500, token: str = DEMO_TOKEN) -> Demo:
    """Three channels: one of `big` posts (over the 60-post default and the 1000-row `since`
    cap) with threads and attachments, a small private one, and a direct conversation."""
    rng = random.Random(42)
    reader = sim.add_user("octi-reader", token=token, first_name="OpenCTI", last_name="Reader")
    alice = sim.add_user("alice", first_name="Alice", last_name="Analyst")
    bob = sim.add_user("bob", email="")
    bot = sim.add_user("feedbot", is_bot=True)
    team = sim.add_team("threat-intel", "Threat Intel")
    sharing = sim.add_channel(
        team,
        "ioc-sharing",
        members=[reader, alice, bob, bot],
        purpose="Indicators shared by partners",
        header="TLP:AMBER unless stated",
    )
    incident = sim.add_channel(team, "incident-42", type="P", members=[reader, alice, bob])
    direct = sim.add_direct_channel(reader, alice)
    authors = [alice, bob, bot]
    base = 1_700_000_000_000
    roots: list[dict[str, Any]] = []
    for index in range(big):
        author = authors[index % 3]
        at = base + index * 1000 - (index % 7 == 0) * 1000  # some posts share a millisecond
        files = []
        if index % 50 == 0:
            data = f"indicator list {index}\n".encode() + bytes(
                rng.getrandbits(8) for _ in range(512)
            )
            files.append(sim.add_file(author, f"iocs-{index}.txt", data, "text/plain"))
        if index % 125 == 0:
            files.append(sim.add_file(author, f"screenshot-{index}.png", PNG_1PX, "image/png"))
        if roots and index % 4 == 0:
            post = sim.add_post(
                sharing,
                author,
                f"reply {index}: confirmed",
                root=rng.choice(roots[-20:]),
                create_at=at,
                files=files,
            )
        else:
            post = sim.add_post(
                sharing,
                author,
                f"post {index}: 198.51.100.{index % 255} seen",
                create_at=at,
                files=files,
            )
            roots.append(post)
    t0 = base + big * 1000
    first = sim.add_post(incident, alice, "Incident 42 opened: phishing wave", create_at=t0)
    sim.add_post(
        incident,
        bob,
        "Sample attached",
        root=first,
        create_at=t0 + 10,
        files=[sim.add_file(bob, "mail.eml", b"From: x@example.org\n\nhi", "message/rfc822")],
    )
    sim.add_post(direct, alice, "Can you look at incident 42?", create_at=t0 + 20)
    sim.add_post(direct, reader, "On it.", create_at=t0 + 30)
    return Demo(sim, token, [sharing, incident, direct], [reader, alice, bob, bot])


def post_command(sim: MattermostSimulator, demo: Demo) -> str:
    """A shell command that posts to the demo's ioc-sharing through the API (POST /posts, as
    Mattermost's own createPost), as the demo's reader."""
    body = f'{{"channel_id": "{demo.channels[0]["id"]}", "message": "a new indicator"}}'
    return (
        f"curl -s -X POST -H 'Authorization: Bearer {demo.token}' -d '{body}' "
        f"http://127.0.0.1:{sim.port}{API}/posts"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8065)
    parser.add_argument("--demo", action="store_true", help="load the sample channels")
    args = parser.parse_args()
    sim = MattermostSimulator()
    if args.demo:
        demo = seed_demo(sim)
        print("token:", demo.token)
        print("channels:", ",".join(c["id"] for c in demo.channels))
    sim.start(port=args.port)
    print(f"Mattermost simulator on http://127.0.0.1:{sim.port}{API}", flush=True)
    if args.demo:
        print("a new post (for `sync` or `live` to deliver):", post_command(sim, demo), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        sim.stop()


if __name__ == "__main__":
    main()
