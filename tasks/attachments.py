"""Attachments: stream a batch's files to the run's spool; fetch again what failed before."""

from __future__ import annotations

from prefect import task

from mattermost_connector.attachments import (
    GONE,
    download_attachments,
    first_embedded_files,
    redelivery_files,
)
from mattermost_connector.channel_run import Batch, ChannelRun
from mattermost_connector.errors import AuthenticationError, MattermostError
from mattermost_connector.stix import Attachment
from tasks import resources
from tasks.extract import completed
from tasks.policy import retrying


@task(
    name="attachments",
    task_run_name="attachments-{run.channel_id}",
    **retrying(2, 10),
)
def fetch_attachments(run: ChannelRun, posts: list[dict]) -> dict[str, list[Attachment]]:
    cap = resources.settings().mattermost.max_attachment_size
    return download_attachments(resources.client(), posts, run.spool, cap)


@task(
    name="files-as-delivered",
    task_run_name="files-as-delivered-{run.channel_id}",
    **retrying(2, 10),
)
def files_as_delivered(
    run: ChannelRun,
    batch: Batch,
    attachments: dict[str, list[Attachment]],
    recent: list[dict] | None = None,
) -> dict[str, list[Attachment]]:
    """The batch's files as its bundles must carry them, given what earlier deliveries did
    (the state store, and `recent`: the rows of bundles still being loaded): files of posts
    delivered before (redelivery_files), and the files each thread root's first delivery
    embedded, downloaded again for the copies of it that replies' bundles hold."""
    posts = {post["id"] for post in batch.posts}
    rows = resources.store().attachments_of(posts | batch.roots.keys())
    loading: dict[str, list[dict]] = {}
    for row in recent or ():
        loading.setdefault(row["post_id"], []).append(row)
    rows.update(loading)
    settled = redelivery_files(attachments, {p: r for p, r in rows.items() if p in posts})
    cap = resources.settings().mattermost.max_attachment_size
    roots = {root_id: rows[root_id] for root_id in batch.roots if root_id in rows}
    return {**settled, **first_embedded_files(resources.client(), roots, run.spool, cap)}


@task(
    name="missing-attachments",
    task_run_name="missing-attachments-{run.channel_id}",
    **retrying(2, 10),
)
def posts_missing_files(run: ChannelRun) -> Batch:
    """Delivered posts whose files failed (or exceeded a cap since raised), fetched afresh so
    that delivering them again embeds the files."""
    store = resources.store()
    cap = resources.settings().mattermost.max_attachment_size
    client = resources.client()
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
            [{**a, "status": GONE, "error": reasons[a["post_id"]]} for a in rows],
            run.run_id,
        )
    batch = completed(run, posts)
    batch.updated = len(posts)
    return batch
