"""Attachments: stream a batch's files to the run's spool; fetch again what failed before."""

from __future__ import annotations

from prefect import task

from mattermost_connector.attachments import GONE, download_attachments
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
    for post_id in store.posts_with_missing_files(run.channel_id, cap):
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
            run.channel_id, [{**a, "status": GONE, "error": reasons[a["post_id"]]} for a in rows]
        )
    batch = completed(run, posts)
    batch.updated = len(posts)
    return batch
