"""One channel's pipeline: extract -> attachments -> transform -> load, batch after batch.

Only orchestration lives here: every read, write and request happens inside a task.
"""

from __future__ import annotations

from dataclasses import replace

from prefect.utilities.annotations import quote

from mattermost_connector.channel_run import ChannelResult, ChannelRun
from mattermost_connector.errors import AuthenticationError
from tasks.attachments import fetch_attachments
from tasks.channel import close_channel, open_channel, start_run
from tasks.extract import extract_batch
from tasks.load import load_bundle
from tasks.policy import describe
from tasks.transform import transform_batch


def run_channel(channel_id: str, kind: str = "sync") -> ChannelResult:
    """Deliver everything after the channel's cursor; a failure stays within this channel,
    except a refused token, which ends the whole run."""
    run_id = start_run(channel_id, kind)
    run: ChannelRun | None = None
    try:
        run = open_channel(channel_id, run_id, kind)
        while True:
            batch = extract_batch(run)
            if batch.posts:
                attachments = fetch_attachments(run, quote(batch.posts))
                bundle = transform_batch(run, quote(batch), quote(attachments))
                load_bundle(run, quote(bundle), batch.cursor, len(batch.posts))
                run = replace(
                    run,
                    cursor=batch.cursor,
                    posts=run.posts + len(batch.posts),
                    files=run.files + bundle.files,
                    objects=run.objects + bundle.objects,
                    bundles=run.bundles + 1,
                )
            if batch.exhausted:
                break
    except AuthenticationError as error:
        close_channel(channel_id, run_id, run, kind, describe(error))
        raise
    except Exception as error:
        return close_channel(channel_id, run_id, run, kind, describe(error))
    return close_channel(channel_id, run_id, run, kind, None)
