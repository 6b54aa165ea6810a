"""The steps of one channel's run, each a method of `ChannelPipeline` over the `Services` it
is built with: nothing is looked up, so a unit test passes fakes and a driver passes the
process's clients."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from mattermost_connector.attachments import (
    download_attachments,
    first_embedded_files,
    redelivery_files,
)
from mattermost_connector.batches import complete_batch
from mattermost_connector.changes import (
    CHANGES_MARGIN_MS,
    ChangesVerdict,
    deleted_version,
    delivered_version,
    is_system,
    judge_since,
    listed_since,
    scan_since,
    stale,
)
from mattermost_connector.channel_run import Batch, BundleFile, ChannelResult, ChannelRun
from mattermost_connector.config import Settings
from mattermost_connector.counts import Counts
from mattermost_connector.cursor import Cursor
from mattermost_connector.delivery import Destination, Work
from mattermost_connector.discards import DISCARDS
from mattermost_connector.errors import (
    AuthenticationError,
    DeliveryError,
    MattermostError,
    local_fault,
    one_line,
)
from mattermost_connector.kinds import AttachmentFate as Fate
from mattermost_connector.kinds import RunKind, RunStatus
from mattermost_connector.live.witness import ChangeWitness
from mattermost_connector.mattermost.channels import channel_context, first_imported
from mattermost_connector.mattermost.client import MattermostClient
from mattermost_connector.mattermost.posts import read_batch
from mattermost_connector.mattermost.users import UserDirectory
from mattermost_connector.memory import release_free_memory
from mattermost_connector.pipeline.cursors import bundle_cursors, cut_at_window_end
from mattermost_connector.pipeline.ordered import deliver_in_order
from mattermost_connector.retries import retry_call
from mattermost_connector.state import StateStore
from mattermost_connector.stix import Attachment, iter_bundles
from mattermost_connector.window import backfill_key, iso

log = logging.getLogger("mattermost_connector.load")

BATCH_POSTS = 5000  # 25 pages: few task runs, bounded memory (bundles split it further)
DELIVERED = (Fate.EMBEDDED, Fate.UPLOADED)
Files = dict[str, list[Attachment]]
T = TypeVar("T")


def _utc_now() -> datetime:
    return datetime.now(tz=UTC)


@dataclass(frozen=True)
class Services:
    """What the pipeline works with, passed in by its driver."""

    settings: Settings
    client: MattermostClient
    store: StateStore
    destinations: list[Destination]
    users: UserDirectory
    clock: Callable[[], datetime] = field(default=_utc_now)
    # live mode: the changes its listener saw, complete while it had no gap since the
    # channel's last scan (mattermost_connector/live/witness.py)
    witness: ChangeWitness | None = None


@dataclass(frozen=True)
class Opened:
    """A channel's run as opened, and where it starts from (for the log)."""

    run: ChannelRun
    since: str


def _sent(attachment: Attachment) -> bool:
    return attachment.status in DELIVERED and attachment.path is not None


class ChannelPipeline:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.store = services.store

    # -- opening -------------------------------------------------------------------------

    def start_run(
        self,
        channel_id: str,
        kind: RunKind,
        window: tuple[int, int] | None,
        flow_run_id: str | None,
    ) -> int:
        self.write_unwritten()
        bounds = tuple(_utc(ms) for ms in window) if window else (None, None)
        return self.store.start_run(channel_id, kind, flow_run_id=flow_run_id, window=bounds)

    def write_unwritten(self) -> None:
        """Outcomes of runs this process closed while the state store was down, written now
        it answers: their rows then tell the real cause rather than "interrupted"."""
        with _unwritten_lock:
            pending = dict(_unwritten)
        for run_id, (status, counts, error) in pending.items():
            try:
                self.store.finish_run(run_id, status, counts, error=error)
            except Exception as fault:
                log.info("run %d: outcome still not written (%s)", run_id, one_line(fault))
                continue
            with _unwritten_lock:
                _unwritten.pop(run_id, None)

    def open(
        self,
        channel_id: str,
        run_id: int,
        kind: RunKind,
        window: tuple[int, int] | None = None,
        start_timestamp: int | None = None,
    ) -> Opened:
        """Resolve the channel and where it stands; open one OpenCTI work for this run. A sync
        resumes the channel's cursor (a first sync starts at `start_timestamp`, else
        MATTERMOST_START_TIMESTAMP); a backfill resumes its window's own cursor."""
        client, store = self.services.client, self.store
        mattermost = self.settings.mattermost
        context, channel = channel_context(client, channel_id, mattermost.server_url)
        context = first_imported(store, context)
        store.remember_name(channel_id, context.name)  # for `status`
        server_now = client.server_time_ms or int(self.services.clock().timestamp() * 1000)
        if window:
            key, start_ms = backfill_key(channel_id, *window), window[0]
            label = f"backfill [{iso(window[0])}, {iso(window[1])})"
        else:
            first = mattermost.start_timestamp if start_timestamp is None else start_timestamp
            key, start_ms, label = channel_id, first * 1000, str(RunKind.SYNC)
        cursor = store.cursor(key) or Cursor(boundary_ms=start_ms)
        if self.services.witness is not None and not window:
            self.services.witness.opened(channel_id)
        since = iso(cursor.boundary_ms)
        work = Work(channel_id, friendly_name=f"Mattermost {context.name}: {label} from {since}")
        posts_before = store.posts_delivered(key)
        spool = new_spool(channel_id)
        # last: a retried open (the store, the disk) leaves no OpenCTI work behind unclosed
        for destination in self.services.destinations:
            destination.open_work(work)
        run = ChannelRun(
            channel_id=channel_id,
            kind=kind,
            run_id=run_id,
            context=context,
            cursor=cursor,
            cursor_before=cursor,
            last_post_at=int(channel.get("last_post_at") or 0),
            msg_count=int(channel.get("total_msg_count") or 0),
            work=work,
            spool=spool,
            start_ms=start_ms,
            server_start_ms=server_now,
            cursor_key=key,
            end_ms=window[1] if window else None,
            total_posts=int(channel.get("total_msg_count") or 0),
            posts_before=posts_before,
        )
        return Opened(run, since)

    # -- new posts -----------------------------------------------------------------------

    def complete(self, run: ChannelRun, posts: list[dict], **kwargs: Any) -> Batch:
        """Shared by every pass: filter system messages, fetch old thread roots, resolve
        authors."""
        return complete_batch(
            posts,
            client=self.services.client,
            store=self.store,
            users=self.services.users,
            include_system=self.settings.mattermost.include_system_messages,
            **kwargs,
        )

    def read_batch(
        self, run: ChannelRun, pending: list[dict] | None = None, max_posts: int = BATCH_POSTS
    ) -> Batch:
        """About `max_posts` posts after `run.cursor`, oldest first, cut at a backfill's
        window end. `pending`: posts being delivered meanwhile (the batch before), whose
        replies need not fetch them as roots."""
        posts, cursor, exhausted = read_batch(
            self.services.client,
            run.channel_id,
            run.cursor,
            max_posts,
            last_post_at=run.last_post_at,
        )
        posts, cursor, exhausted = cut_at_window_end(
            posts, run.cursor, cursor, exhausted, run.end_ms
        )
        batch = self.complete(run, posts, cursor=cursor, exhausted=exhausted, pending=pending or ())
        checked = run.cursor_before.messages if run.cursor_before else None
        batch.listed, batch.ahead = listed_since(posts, checked, run.last_post_at)
        return batch

    def fetch_files(self, run: ChannelRun, posts: list[dict]) -> Files:
        cap = self.settings.mattermost.max_attachment_size
        return download_attachments(self.services.client, posts, run.spool, cap)

    def files_as_delivered(
        self, run: ChannelRun, batch: Batch, attachments: Files, recent: list[dict] | None = None
    ) -> Files:
        """The batch's files as its bundles must carry them, given what earlier deliveries
        did (the state store, and `recent`: the rows of bundles still being loaded): files of
        posts delivered before (redelivery_files), and the files each thread root's first
        delivery embedded, downloaded again for the copies of it that replies' bundles
        hold."""
        posts = {post["id"] for post in batch.posts}
        rows = self.store.attachments_of(posts | batch.roots.keys())
        loading: dict[str, list[dict]] = {}
        for row in recent or ():
            loading.setdefault(row["post_id"], []).append(row)
        rows.update(loading)
        settled = redelivery_files(attachments, {p: r for p, r in rows.items() if p in posts})
        cap = self.settings.mattermost.max_attachment_size
        roots = {root_id: rows[root_id] for root_id in batch.roots if root_id in rows}
        return {
            **settled,
            **first_embedded_files(self.services.client, roots, run.spool, cap),
        }

    def missing_files(self, run: ChannelRun) -> Batch:
        """Delivered posts whose files failed (or exceeded a cap since raised), fetched afresh
        so that delivering them again embeds the files."""
        store, client = self.store, self.services.client
        cap = self.settings.mattermost.max_attachment_size
        posts, gone = [], []
        for post_id in store.posts_with_missing_files(run.channel_id, cap, before_run=run.run_id):
            try:
                posts.append(client.post(post_id))
            except AuthenticationError:
                raise
            except MattermostError as error:
                if error.status not in (403, 404):
                    raise
                gone.append((post_id, str(error)))
        if gone:  # the post itself is gone: its files will not come back
            reasons = dict(gone)
            rows = [a for a in store.attachments(run.channel_id) if a["post_id"] in reasons]
            store.record_attachments(
                run.channel_id,
                [{**a, "status": Fate.GONE, "error": reasons[a["post_id"]]} for a in rows],
                run.run_id,
            )
        batch = self.complete(run, posts)
        batch.counts = Counts(updated=len(posts))
        return batch

    # -- transform and load --------------------------------------------------------------

    def transform(self, run: ChannelRun, batch: Batch, attachments: Files) -> list[BundleFile]:
        """Bundles bounded in objects and bytes, written to the spool, each with the cursor
        that holds once it and those before it are delivered (`bundle_cursors`); the spooled
        files are dropped once written into their bundles, except those to upload, which the
        load removes once delivered."""
        connector = self.settings.connector
        written: list[BundleFile] = []
        keep: set[Path] = set()
        try:
            parts = iter_bundles(
                run.context,
                batch.posts,
                batch.users,
                attachments,
                self.settings.mattermost.tlp,
                missing_roots=batch.missing_roots,
                roots=batch.roots,
                max_objects=connector.bundle_max_objects,
                max_bytes=connector.bundle_bytes,
                no_trigger_import=connector.no_trigger_import,
                queue=connector.send_to_queue,
            )
            for part in parts:
                sequence = run.counts.bundles + len(written) + 1
                path = run.spool / f"bundle-{sequence:06d}.json"
                try:
                    with open(path, "w", encoding="utf-8") as handle:
                        part.write(handle)
                except OSError as error:
                    path.unlink(missing_ok=True)
                    local = local_fault(error, run.spool, connector.bundle_bytes)
                    if local is None:
                        raise
                    raise local from None
                keep.update(upload.path for upload in part.uploads)
                written.append(
                    BundleFile(
                        path=path,
                        objects=part.objects,
                        files=sum(1 for _, a in part.attachments if _sent(a)),
                        posts=part.posts,
                        # a file stored by an earlier delivery, not sent again, keeps its row
                        attachments=[
                            a.record(post_id)
                            for post_id, a in part.attachments
                            if _sent(a) or a.status not in DELIVERED
                        ],
                        cursor=None,
                        uploads=part.uploads,
                        sequence=sequence,
                    )
                )
        finally:  # each download has a path of its own: none is written again once dropped
            DISCARDS.discard(
                *(
                    attachment.path
                    for files in attachments.values()
                    for attachment in files
                    if attachment.path is not None and attachment.path not in keep
                )
            )
        carried = bundle_cursors(run.cursor, (b.posts for b in written), batch.cursor)
        for bundle, cursor in zip(written, carried, strict=True):
            bundle.cursor = cursor
        return written

    def load(
        self,
        run: ChannelRun,
        bundles: list[BundleFile],
        record: Callable[[ChannelRun, BundleFile], None] | None = None,
    ) -> None:
        """Deliver a batch's bundles, up to CONNECTOR_DELIVERY_CONCURRENCY at once, recorded
        strictly in order (`deliver_in_order`). A retry skips what was recorded (its spool
        file is gone). The cursor is mirrored once per batch (two GraphQL calls each time).
        `record`: the recording step as the driver wraps it."""
        record = record or self.record
        recorded: list[BundleFile] = []

        def settle(bundle: BundleFile) -> None:
            record(run, bundle)
            recorded.append(bundle)

        deliver_in_order(
            [
                b
                for b in bundles
                if not DISCARDS.gone(b.path) and not recorded_marker(b.path).exists()
            ],
            lambda bundle: self.send(run, bundle),
            settle,
            self.settings.connector.delivery_concurrency,
        )
        cursor = next((b.cursor for b in reversed(recorded) if b.cursor is not None), None)
        if cursor is not None and run.kind == RunKind.SYNC:
            self.publish_state(run.channel_id, cursor)
        release_free_memory()  # the batch is done with: its pages back, not a growing heap

    def send(self, run: ChannelRun, bundle: BundleFile) -> None:
        """Files too large for a message first (the bundle links them), then the bundle. An
        upload that still fails after CONNECTOR_DELIVERY_RETRIES is that file's fate,
        `failed` with its error, not the channel's: the post is delivered without it, and the
        next run fetches and uploads it again (`missing_files`)."""
        connector = self.settings.connector
        for destination in self.services.destinations:
            for upload in bundle.uploads:
                for attempt in range(connector.delivery_retries + 1):
                    try:
                        destination.upload(run.work, upload)
                        break
                    except DeliveryError as error:
                        if attempt < connector.delivery_retries:
                            time.sleep(connector.delivery_retry_delay * 2**attempt)
                            continue
                        log.warning("%s: left for the next run", error)
                        for row in bundle.attachments:
                            if row["file_id"] == upload.file_id:
                                row.update(status=Fate.FAILED, error=str(error))
        text = bundle.path.read_text(encoding="utf-8")
        for destination in self.services.destinations:
            sent = sent_marker(bundle.path, destination.name)
            if sent.exists():  # delivered there by an attempt whose batch failed later
                continue
            destination.send(run.work, text, bundle.objects, bundle.sequence)
            sent.touch()

    def record(self, run: ChannelRun, bundle: BundleFile) -> None:
        """Record posts, attachments and (if the bundle moves it) the cursor, once
        delivered."""
        self.store.record_delivery(
            run.cursor_key,
            run.channel_id,
            bundle.cursor,
            bundle.posts,
            len(bundle.posts),
            files=bundle.attachments,
            run_id=run.run_id,
            tally=Counts(posts=len(bundle.posts), files=bundle.files, objects=bundle.objects),
        )
        if bundle.cursor is None:  # a post's first parts: kept until its last part moves it
            recorded_marker(bundle.path).touch()
            return
        DISCARDS.discard(  # the bundle first: gone for a retried load from now on
            bundle.path,
            *(upload.path for upload in bundle.uploads),
            *(sent_marker(bundle.path, d.name) for d in self.services.destinations),
        )

    def publish_state(self, channel_id: str, cursor: Cursor) -> None:
        """Mirror the cursor where operators look (the connector state in OpenCTI's UI)."""
        state = {"cursor": cursor.to_dict(), "updated_at": self.services.clock().isoformat()}
        for destination in self.services.destinations:
            destination.save_state(channel_id, state)

    def advance(self, run: ChannelRun, cursor: Cursor) -> None:
        """Move past posts that deliver nothing (system messages, when skipped)."""
        self.store.save_cursor(run.cursor_key, cursor)
        if run.kind == RunKind.SYNC:
            self.publish_state(run.channel_id, cursor)

    # -- edits and deletions -------------------------------------------------------------

    def deliverable(
        self, run: ChannelRun, posts: list[dict], added: list[dict] | None = None, **kwargs: Any
    ) -> Batch:
        """Stale `posts` and never delivered `added` ones, oldest first. With
        MATTERMOST_DELETED_POSTS=ignore, deletions are remembered but not re-delivered."""
        added = added or []
        deleted = [post for post in posts if post.get("delete_at")]
        if deleted and self.settings.mattermost.deleted_posts == "ignore":
            self.store.record_posts(run.channel_id, deleted)
            posts = [post for post in posts if not post.get("delete_at")]
        ordered = sorted(posts + added, key=lambda post: (post["create_at"], post["id"]))
        batch = self.complete(run, ordered, **kwargs)
        batch.counts = Counts(
            posts=len(added),
            updated=sum(1 for post in posts if not post.get("delete_at")),
            deleted=len(deleted),
        )
        return batch

    def scan_changes(self, run: ChannelRun) -> tuple[ChangesVerdict, Batch | None]:
        """Posts edited or deleted since the watermark, and posts `since` shows behind the
        cursor, as a batch; none when the verdict is a full check."""
        opened = run.cursor_before or run.cursor
        since = run.cursor.changes_ms
        assert since is not None
        verdict = judge_since(
            self.changed_rows(run, since),
            self.store.delivered,
            since,
            opened_at=opened,
            start_ms=run.start_ms,
            include_system=self.settings.mattermost.include_system_messages,
            msg_count=run.msg_count,
            listed=run.listed,
            last_post_at=run.last_post_at,
        )
        if verdict.full_check:
            return verdict, None
        return verdict, self.deliverable(run, verdict.stale, verdict.behind)

    def changed_rows(self, run: ChannelRun, since: int) -> list[dict] | None:
        """`since`'s rows (None: maybe cut at 1000). In live mode, when the listener saw the
        channel without a gap since its last scan, the posts it saw instead, uncapped, with
        the replies a deleted root takes along (the server sends no event for them)."""
        witness = self.services.witness
        if witness is not None:
            seen = witness.begin_scan(run.channel_id)
            if seen.complete:
                rows = list(seen.posts.values())
                deleted = {r["id"]: r["delete_at"] for r in rows if r.get("delete_at")}
                roots = [i for i, r in seen.posts.items() if i in deleted and not r["root_id"]]
                for reply in self.store.delivered_replies(run.channel_id, roots):
                    at = deleted[reply["root_id"]]
                    rows.append({**delivered_version(reply), "delete_at": at, "update_at": at})
                log.info(
                    "channel %s: %d changes seen live since the last scan (no `since` scan)",
                    run.channel_id,
                    len(rows),
                )
                return rows
        return scan_since(self.services.client, run.channel_id, since)

    def reconcile_batch(self, run: ChannelRun, position: Cursor) -> Batch:
        """One stretch of the complete listing, compared with what was delivered: the stale
        posts and those never delivered (created behind the cursor, or before schema v2), and
        in `cursor` where the listing stands. It stops at the delivered cursor, since what
        is newer is the new-posts pass's."""
        walked, cursor, exhausted = read_batch(
            self.services.client, run.channel_id, position, BATCH_POSTS
        )
        boundary = run.cursor.boundary_ms
        listed = [post for post in walked if post["create_at"] <= boundary]
        exhausted = exhausted or len(listed) < len(walked)
        delivered = self.store.delivered(post["id"] for post in listed)
        self.store.mark_seen(run.channel_id, delivered.keys(), run.run_id)
        include_system = self.settings.mattermost.include_system_messages
        never = [
            post
            for post in listed
            if post["id"] not in delivered and (include_system or not is_system(post))
        ]
        batch = self.deliverable(
            run, stale(listed, delivered), never, cursor=cursor, exhausted=exhausted
        )
        batch.seen = [post["id"] for post in never]
        return batch

    def mark_listed(self, run: ChannelRun, post_ids: list[str]) -> None:
        """Posts the complete listing returned and this run delivered for the first time:
        seen by it, so its sweep does not take them for deleted ones."""
        self.store.mark_seen(run.channel_id, post_ids, run.run_id)

    def sweep_batch(self, run: ChannelRun) -> Batch:
        """Delivered posts the complete listing no longer returned: deleted (or purged)."""
        gone = self.store.unseen(run.channel_id, run.run_id, created_from=run.start_ms)
        posts = [deleted_version(row, run.server_start_ms) for row in gone]
        return self.deliverable(run, posts, exhausted=not posts)

    def commit_changes(self, run: ChannelRun) -> Cursor:
        """Every change up to this run's start is delivered: move the watermark there, and
        keep the channel's message count and last_post_at read then, to compare with the
        next run's."""
        cursor = run.cursor
        cursor = Cursor(
            cursor.boundary_ms,
            cursor.boundary_ids,
            cursor.anchor_id,
            changes_ms=max(run.server_start_ms - CHANGES_MARGIN_MS, cursor.changes_ms or 0),
            messages=(run.msg_count, run.last_post_at, run.ahead),
        )
        self.store.save_cursor(run.channel_id, cursor)
        self.publish_state(run.channel_id, cursor)
        if self.services.witness is not None:
            self.services.witness.end_scan(run.channel_id)
        return cursor

    # -- closing -------------------------------------------------------------------------

    def _stored(self, action: Callable[[], T]) -> T:
        """A state-store call under the retry budget for transient faults."""
        return retry_call(action, self.settings.connector, "state store")

    def _final_counts(self, run_id: int, counts: Counts, failed: bool) -> Counts:
        """The run's counts with its files by fate; a failed run's delivered ones as its
        history row tallied them bundle by bundle (its passes did not all return)."""
        if failed:
            tallied = self.store.run_counts(run_id)
            counts = replace(
                counts, posts=tallied.posts, files=tallied.files, objects=tallied.objects
            )
        return replace(counts, fates=self.store.file_fates(run_id))

    def close(
        self,
        channel_id: str,
        run_id: int,
        run: ChannelRun | None,
        kind: RunKind,
        error: str | None,
        archived: str | None = None,
    ) -> ChannelResult:
        """Record the outcome where it is shown: run history, OpenCTI work. `archived`: why
        an archived channel the server refuses to read was left alone, without failing."""
        status = (
            RunStatus.FAILED if error else RunStatus.ARCHIVED if archived else RunStatus.COMPLETED
        )
        counts = run.counts if run else Counts()
        unrecorded: str | None = None
        try:  # what the history row tallied: for a failed run, what it did deliver
            counts = self._stored(lambda: self._final_counts(run_id, counts, failed=bool(error)))
        except Exception as fault:
            unrecorded = one_line(fault, limit=300, first_line=True)
        if run is not None:
            by_fate = counts.fates_text()
            message = (
                f"{counts.posts} posts, {counts.files} files, {counts.objects} objects in "
                f"{counts.bundles} bundles"
                + (f"; files: {by_fate}" if by_fate else "")
                + (
                    f"; {counts.updated} updated, {counts.deleted} deleted"
                    if counts.updated or counts.deleted
                    else ""
                )
            )
            for destination in self.services.destinations:
                destination.close_work(run.work, error or archived or message, in_error=bool(error))
            shutil.rmtree(run.spool, ignore_errors=True)
        note = run.note if run else None
        shown = error or archived or note
        if unrecorded is None:
            try:
                self._stored(
                    lambda: self.store.finish_run(
                        run_id, status, None if error else counts, error=shown
                    )
                )
            except Exception as fault:
                unrecorded = one_line(fault, limit=300, first_line=True)
        if unrecorded is not None:  # the report says so; the row gets the run's own outcome
            with _unwritten_lock:  # written by this process's next run start
                _unwritten[run_id] = (status, None if error else counts, shown)
            status = RunStatus.FAILED
            error = (error + "; " if error else "") + (
                f"state store unavailable, run history not written ({unrecorded})"
            )
        return ChannelResult(
            channel_id=channel_id,
            name=run.context.name if run else None,
            kind=kind,
            status=status,
            counts=counts,
            error=error or archived,
            cursor_before=run.cursor_before if run else None,
            cursor_after=run.cursor if run else None,
            note=note,
        )


# run id -> (status, counts, error) of runs closed while the state store was unreachable
_unwritten: dict[int, tuple[RunStatus, Counts | None, str | None]] = {}
_unwritten_lock = threading.Lock()

SPOOL_PREFIX = "mattermost-{channel_id}-"


def new_spool(channel_id: str) -> Path:
    """The run's spool directory in the temporary directory, after removing those of earlier
    runs of the channel that were killed before clearing theirs (the caller holds the
    channel's lease: no other run of it is using one)."""
    prefix = SPOOL_PREFIX.format(channel_id=channel_id)
    temp = Path(tempfile.gettempdir())
    for left in temp.glob(f"{prefix}*"):
        if left.is_dir():
            log.info("channel %s: removing %s, left by a run that was killed", channel_id, left)
            shutil.rmtree(left, ignore_errors=True)
    try:
        return Path(tempfile.mkdtemp(prefix=prefix))
    except OSError as error:
        local = local_fault(error, temp)
        if local is None:
            raise
        raise local from None


def sent_marker(bundle: Path, destination: str) -> Path:
    """Beside a spooled bundle: it reached `destination` (a broker's confirm, a renamed
    file). A retried load skips it there, so a retry re-sends only what may not have been
    delivered."""
    return bundle.with_name(f"{bundle.name}.sent-{destination}")


def recorded_marker(bundle: Path) -> Path:
    """Beside a spooled bundle that moves no cursor: recorded already, not to send again."""
    return bundle.with_name(f"{bundle.name}.recorded")


def _utc(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
