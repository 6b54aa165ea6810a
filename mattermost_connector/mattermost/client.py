"""A thin Mattermost REST API v4 client: one keep-alive httpx connection pool, no state.

Transient faults are retried here, per request, because a page or a file is the unit that can
be repeated safely; retrying a whole channel (Prefect's task retries) is the outer layer.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import IO, Any, TypeVar

import httpx
import orjson

from mattermost_connector.config import MattermostSettings
from mattermost_connector.errors import (
    AuthenticationError,
    ChannelArchived,
    FileTooLarge,
    MalformedPost,
    MattermostError,
    ServerUnavailable,
    one_line,
)
from mattermost_connector.retries import backoff

log = logging.getLogger("mattermost_connector.mattermost")

PER_PAGE = 200  # the server's silent cap
USERS_BATCH = 100
_RETRY_STATUSES = {500, 502, 503, 504}
ARCHIVED_REFUSED = "api.user.view_archived_channels."  # the id of every such 403, any endpoint
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter for 5xx, timeouts and dropped connections."""

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0
    max_rate_limit_wait: float = 300.0
    max_throttled: int = 100

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, backoff(self.base_delay, attempt)))


@dataclass(frozen=True)
class FileDownload:
    size: int
    sha256: str
    mime_type: str | None


class MattermostClient:
    """Calls the endpoints the connector needs; every error becomes a MattermostError."""

    def __init__(
        self,
        settings: MattermostSettings,
        *,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._debug = settings.debug
        self._retry = retry or RetryPolicy(base_delay=max(settings.keepalive_delay, 0.0) or 0.5)
        self._sleep = sleep
        self._not_before = 0.0  # monotonic time before which no request may leave (rate limit)
        self.server_time_ms: int | None = None  # the server's clock, from its last Date header
        timeout = httpx.Timeout(settings.timeout, read=settings.request_timeout or settings.timeout)
        self._http = httpx.Client(
            base_url=settings.api_url,
            headers={
                "Authorization": f"Bearer {settings.token.get_secret_value()}",
                "X-Requested-With": "XMLHttpRequest",
                "User-Agent": "opencti-mattermost-prefect",
            },
            timeout=timeout,
            verify=settings.verify,
            transport=transport,
            limits=httpx.Limits(max_keepalive_connections=8, keepalive_expiry=60),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MattermostClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- endpoints -------------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        return self._json("GET", "/users/me")

    def channel(self, channel_id: str) -> dict[str, Any]:
        return self._json("GET", f"/channels/{channel_id}")

    def team(self, team_id: str) -> dict[str, Any]:
        return self._json("GET", f"/teams/{team_id}")

    def my_teams(self) -> list[dict[str, Any]]:
        """The account's teams (`GET /users/me/teams`: not paged)."""
        return self._json("GET", "/users/me/teams")

    def my_channels(self, team_id: str) -> list[dict[str, Any]]:
        """The account's channels of a team, archived ones included, and its direct and group
        channels (`GET /users/me/teams/{id}/channels`: not paged)."""
        path = f"/users/me/teams/{team_id}/channels"
        return self._json("GET", path, params={"include_deleted": "true"})

    def public_channels(self, team_id: str) -> list[dict[str, Any]]:
        """The team's public channels, archived ones left out (paged)."""
        return self._pages(f"/teams/{team_id}/channels")

    def archived_channels(self, team_id: str) -> list[dict[str, Any]]:
        """The team's archived public channels and the archived private ones the account
        belongs to (paged)."""
        return self._pages(f"/teams/{team_id}/channels/deleted")

    def _pages(self, path: str) -> list[dict[str, Any]]:
        """Every page of a listing, PER_PAGE at a time, until a page comes back short."""
        found: list[dict[str, Any]] = []
        page = 0
        while True:
            rows = self._json("GET", path, params={"page": page, "per_page": PER_PAGE})
            found.extend(rows)
            if len(rows) < PER_PAGE:
                return found
            page += 1

    def post(self, post_id: str) -> dict[str, Any]:
        return _checked_post(self._json("GET", f"/posts/{post_id}"), f"GET /posts/{post_id}")

    def posts(self, channel_id: str, **params: Any) -> list[dict[str, Any]]:
        """One page of a channel's posts in the server's `order` (newest first).

        `posts` may hold context posts (roots, siblings) that are not part of the page: only
        the ids in `order` are returned.
        """
        params.setdefault("per_page", PER_PAGE)
        path = f"/channels/{channel_id}/posts"
        body = self._json("GET", path, params=params)
        if not isinstance(body, dict):
            raise MalformedPost(f"GET {path}: the answer is not a post list")
        posts = body.get("posts") or {}
        return [
            _checked_post(posts[post_id], f"GET {path}")
            for post_id in body.get("order") or []
            if post_id in posts
        ]

    def users(self, user_ids: Iterable[str]) -> list[dict[str, Any]]:
        ids = sorted(set(user_ids))
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), USERS_BATCH):
            found.extend(self._json("POST", "/users/ids", json=ids[start : start + USERS_BATCH]))
        return found

    def download(self, file_id: str, sink: IO[bytes], max_bytes: int | None = None) -> FileDownload:
        """Stream a file's bytes into `sink`; a retried attempt rewinds and starts over.

        Raises FileTooLarge as soon as the file proves larger than `max_bytes`.
        """
        start = sink.tell()
        path = f"/files/{file_id}"

        def perform() -> FileDownload:
            sink.seek(start)
            sink.truncate()
            digest = hashlib.sha256()
            size = 0
            with self._http.stream("GET", path) as response:
                if not response.is_success:
                    response.read()
                self._check(response)
                announced = response.headers.get("Content-Length")
                if max_bytes is not None and announced and int(announced) > max_bytes:
                    raise FileTooLarge(int(announced))
                for chunk in response.iter_bytes(1 << 16):
                    if max_bytes is not None and size + len(chunk) > max_bytes:
                        raise FileTooLarge(size + len(chunk))
                    digest.update(chunk)
                    sink.write(chunk)
                    size += len(chunk)
                expected = response.headers.get("Content-Length")
                if expected is not None and int(expected) != size:
                    raise httpx.RemoteProtocolError("file body shorter than Content-Length")
            mime = response.headers.get("Content-Type", "").split(";")[0] or None
            return FileDownload(size=size, sha256=digest.hexdigest(), mime_type=mime)

        return self._with_retries("GET", path, perform)

    # -- plumbing --------------------------------------------------------------------------

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        def perform() -> httpx.Response:
            response = self._http.request(method, path, **kwargs)
            self._check(response, kwargs.get("params"))
            return response

        response = self._with_retries(method, path, perform)
        try:  # orjson: pages of 200 posts, parsed 3x faster than with json (always UTF-8)
            return orjson.loads(response.content)
        except ValueError:
            raise MattermostError(
                f"{method} {path}: answer is not JSON (status {response.status_code})",
                status=response.status_code,
            ) from None

    def _with_retries(self, method: str, path: str, perform: Callable[[], T]) -> T:
        """Run one request until it succeeds, with separate budgets for 429s and failures."""
        failures = throttled = 0
        while True:
            self._wait_rate_limit()
            try:
                return perform()
            except _Throttled as signal:
                throttled += 1
                if throttled > self._retry.max_throttled:
                    raise MattermostError(
                        f"{method} {path}: still rate limited after {throttled} waits"
                    ) from None
                self._not_before = max(self._not_before, time.monotonic() + signal.delay)
            except (_Transient, httpx.TransportError) as error:
                failures += 1
                reason = str(error) if isinstance(error, _Transient) else one_line(error)
                log.warning("%s %s failed (%s), attempt %d", method, path, reason, failures)
                if failures >= self._retry.attempts:
                    raise ServerUnavailable(
                        f"{method} {path}: gave up after {failures} attempts ({reason})",
                        reachable=isinstance(error, _Transient),
                    ) from None
                self._sleep(self._retry.backoff(failures - 1))

    def _check(self, response: httpx.Response, params: Any = None) -> None:
        """Trace the answer, note the rate-limit budget, and classify any error."""
        request = response.request
        self._trace(request.method, request.url.path, response, params)
        self._note_rate_limit(response)
        self._note_server_time(response)
        status = response.status_code
        if response.is_success:
            return
        if status == 429:
            raise _Throttled(_retry_after(response))
        if status in _RETRY_STATUSES:
            raise _Transient(f"status {status}")
        error_id, message = _app_error(response)
        if status == 401:
            raise AuthenticationError(
                f"Mattermost refused the token ({status} {error_id}): check MATTERMOST_TOKEN",
                status=status,
                error_id=error_id,
            )
        if status == 403 and (error_id or "").startswith(ARCHIVED_REFUSED):
            raise ChannelArchived(
                "archived, and the server lets no one read archived channels "
                "(TeamSettings.ExperimentalViewArchivedChannels is off): skipped",
                status=status,
                error_id=error_id,
            )
        raise MattermostError(
            " ".join(
                part
                for part in (f"{request.method} {request.url.path}: {status}", error_id, message)
                if part
            ),
            status=status,
            error_id=error_id,
        )

    def _wait_rate_limit(self) -> None:
        """Wait until the token's budget allows a request. Every channel of a run shares this
        client, and Mattermost's limit is per token: a 429 (or a spent budget) another thread
        learns of meanwhile moves the deadline, so it is read again after each wait rather
        than every thread sending once more to find out on its own."""
        waited = 0.0
        while (delay := self._not_before - time.monotonic()) > 0:
            delay = min(delay, self._retry.max_rate_limit_wait - waited)
            if delay <= 0:
                return
            if not waited:
                log.info("rate limited by Mattermost: waiting %.1f s", delay)
            self._sleep(delay)
            waited += delay

    def _note_rate_limit(self, response: httpx.Response) -> None:
        """Pace before the server has to say 429: when the budget is spent, wait for its reset."""
        remaining = response.headers.get("X-RateLimit-Remaining")
        reset = response.headers.get("X-RateLimit-Reset")
        if remaining is None or reset is None:
            return
        try:
            if int(remaining) <= 1:
                self._not_before = max(self._not_before, time.monotonic() + float(reset))
        except ValueError:
            return

    def _note_server_time(self, response: httpx.Response) -> None:
        date = response.headers.get("Date")
        if date:
            try:
                self.server_time_ms = int(parsedate_to_datetime(date).timestamp() * 1000)
            except (TypeError, ValueError):
                return

    def _trace(self, method: str, path: str, response: httpx.Response, params: Any = None) -> None:
        if self._debug:
            query = f"?{httpx.QueryParams(params)}" if params else ""
            elapsed = response.elapsed.total_seconds() * 1000 if response.is_closed else 0.0
            log.info("%s %s%s -> %d (%.0f ms)", method, path, query, response.status_code, elapsed)


class _Throttled(Exception):
    def __init__(self, delay: float) -> None:
        super().__init__(f"429, retry after {delay:g} s")
        self.delay = delay


class _Transient(Exception):
    """A 5xx answer: worth another attempt."""


def _retry_after(response: httpx.Response) -> float:
    """Seconds to wait after a 429: Retry-After, else X-RateLimit-Reset (relative), else 1."""
    for header in ("Retry-After", "X-RateLimit-Reset"):
        value = response.headers.get(header)
        if value:
            try:
                return max(float(value), 0.0)
            except ValueError:
                continue
    return 1.0


def _app_error(response: httpx.Response) -> tuple[str | None, str]:
    try:
        body = response.json()
    except ValueError:
        return None, _not_an_app_error(response)
    if isinstance(body, dict):
        return body.get("id"), str(body.get("message", ""))
    return None, ""


_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)
EXCERPT = 80


def _not_an_app_error(response: httpx.Response) -> str:
    """An answer that is not Mattermost's AppError JSON, in a few words: a web page (a proxy,
    another site on that host and port) by its title, never its whole markup."""
    text = response.text.strip()
    if "html" in response.headers.get("Content-Type", "").lower() or text.startswith("<"):
        title = _TITLE.search(text)
        name = " ".join(title.group(1).split())[:EXCERPT] if title else ""
        return (
            f"an HTML page{f' ({name!r})' if name else ''}, not Mattermost's API: check "
            "MATTERMOST_DOMAIN, MATTERMOST_PORT and MATTERMOST_BASEPATH"
        )
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"


_POST_FIELDS = (("id", str), ("create_at", int), ("user_id", str))


def _checked_post(post: Any, where: str) -> dict[str, Any]:
    """The server's schema guarantees these fields; a proxy or a broken plugin may not. One
    line naming the post beats a KeyError deep in the walk."""
    if (  # the usual case, in one expression (run for every post)
        type(post) is dict
        and type(post.get("id")) is str
        and type(post.get("create_at")) is int
        and type(post.get("user_id")) is str
        and post["id"]
        and post["user_id"]
    ):
        return post
    if not isinstance(post, dict):
        raise MalformedPost(f"{where}: a post is not a JSON object")
    for name, kind in _POST_FIELDS:
        value = post.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) or value == "":
            raise MalformedPost(f"{where}: post {post.get('id')!r} has no valid {name} ({value!r})")
    return post
