"""The steps of a channel's run, listed once: `STEPS` names each, its retry class and what it
hands back. `run.run_channel` drives them through a `Steps` object: `plain_steps` gives the
domain functions as they are (tests, any driver without Prefect); tasks/steps.py builds a
Prefect task per row, under the same name."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from mattermost_connector import progress
from mattermost_connector.channel_run import ChannelResult, ChannelRun
from mattermost_connector.kinds import RunKind
from mattermost_connector.pipeline import changed_posts, lifecycle, loading, new_posts
from mattermost_connector.pipeline.lease import HeldLease, acquire
from mattermost_connector.pipeline.ordered import Pending
from mattermost_connector.pipeline.services import Services
from mattermost_connector.retries import retry_call

log = logging.getLogger("mattermost_connector.pipeline")
Window = tuple[int, int] | None


class Retries(StrEnum):
    """How a step is retried when it fails."""

    # a transient or busy fault: CONNECTOR_DELIVERY_RETRIES times, CONNECTOR_DELIVERY_RETRY_DELAY
    # apart, doubling; a local or permanent one never
    BUDGET = "budget"
    # no retry of its own: each state-store call in it has the budget (retries.retry_call),
    # which a retry of the whole step would multiply
    EACH_CALL = "each call"


@dataclass(frozen=True)
class Step:
    """One row of the table: `name` is the `Steps` field, the domain function's name and
    (dashed) the Prefect task's."""

    name: str
    retries: Retries
    returns: str
    function: Callable[..., Any]  # the domain function, `Services` first


STEPS: tuple[Step, ...] = (
    Step("open_channel", Retries.BUDGET, "the run as opened (ChannelRun)", lifecycle.open_channel),
    Step("read_ahead", Retries.BUDGET, "the next batch and its files", new_posts.read_ahead),
    Step("fetch_files", Retries.BUDGET, "a batch's files, in the spool", new_posts.fetch_files),
    Step("transform", Retries.BUDGET, "the batch's bundles, spooled", new_posts.transform),
    Step("load", Retries.BUDGET, "nothing: bundles delivered and recorded", loading.load),
    Step("advance", Retries.BUDGET, "nothing: the cursor moved", loading.advance),
    Step("missing_files", Retries.BUDGET, "posts to deliver again", changed_posts.missing_files),
    Step("scan_changes", Retries.BUDGET, "changes, or none and why", changed_posts.scan_changes),
    Step("reconcile_batch", Retries.BUDGET, "a listing's stretch", changed_posts.reconcile_batch),
    Step("mark_listed", Retries.BUDGET, "nothing: posts marked seen", changed_posts.mark_listed),
    Step("sweep_batch", Retries.BUDGET, "posts deleted since", changed_posts.sweep_batch),
    Step("commit_changes", Retries.BUDGET, "the watermark moved", changed_posts.commit_changes),
)
# Not in the table: the run's two ends (`begin`, `close` below), which a driver wraps as it
# needs (tasks/channel_task.py): the lease is held across the steps, and the close must run
# whatever failed.


class Call(Protocol):
    """A step as its driver runs it: called in place, or submitted to run beside the flow
    (the read ahead, the load), handing back what to wait for."""

    def __call__(self, *args: Any) -> Any: ...

    def submit(self, *args: Any) -> Pending: ...


@dataclass(frozen=True)
class Steps:
    """What `run.run_channel` calls: one field per row of STEPS (the domain function's
    arguments less the services), the run's two ends, and its progress."""

    open_channel: Call
    read_ahead: Call
    fetch_files: Call
    transform: Call
    load: Call
    advance: Call
    missing_files: Call
    scan_changes: Call
    reconcile_batch: Call
    mark_listed: Call
    sweep_batch: Call
    commit_changes: Call
    # (channel_id, kind, window) -> (lease, run id): the channel's lease, then its history row
    begin: Callable[[str, RunKind, Window], tuple[HeldLease, int]]
    # (channel_id, lease, run_id, run, kind, error, archived) -> the report row; releases
    close: Callable[..., ChannelResult]
    progress: Callable[[ChannelRun], None]


class Plain:
    """A domain step over its services, called in place; `submit` runs it at once and hands
    back its outcome as a finished future."""

    def __init__(self, function: Callable[..., Any], services: Services) -> None:
        self.function, self.services = function, services

    def __call__(self, *args: Any) -> Any:
        return self.function(self.services, *args)

    def submit(self, *args: Any) -> Pending:
        done: Future[Any] = Future()
        try:
            done.set_result(self(*args))
        except Exception as error:
            done.set_exception(error)
        return done


def plain_steps(services: Services, flow_run_id: str | None = None) -> Steps:
    """The steps as plain calls over `services`, for a driver without Prefect."""
    calls = {step.name: Plain(step.function, services) for step in STEPS}
    return Steps(
        **calls,
        begin=lambda channel_id, kind, window: begin(
            services, channel_id, kind, window, flow_run_id
        ),
        close=lambda *args: close(services, *args),
        progress=log_progress,
    )


def begin(
    services: Services,
    channel_id: str,
    kind: RunKind,
    window: Window,
    flow_run_id: str | None,
) -> tuple[HeldLease, int]:
    """Wait for the channel's lease, take it, and open its run history row (of flow run
    `flow_run_id`, if any). Without a row, the lease is given back at once."""
    connector = services.settings.connector
    lease = acquire(services.store, connector, channel_id, owner=flow_run_id or "local")
    try:
        run_id = retry_call(
            lambda: lifecycle.start_run(services, channel_id, kind, window, flow_run_id),
            connector,
            f"channel {channel_id} run history",
        )
    except BaseException:
        lease.release()
        raise
    return lease, run_id


def close(
    services: Services,
    channel_id: str,
    lease: HeldLease,
    run_id: int,
    run: ChannelRun | None,
    kind: RunKind,
    error: str | None,
    archived: str | None = None,
) -> ChannelResult:
    """Record the outcome everywhere it is shown (lifecycle.close), then give the channel's
    lease back, whatever happened."""
    try:
        result = lifecycle.close(services, channel_id, run_id, run, kind, error, archived)
    finally:
        lease.release()
    (log.error if error else log.info)(result.summary())
    return result


def log_progress(run: ChannelRun) -> str:
    """Within a channel: posts done of about how many, in the log."""
    done = run.posts_before + run.counts.posts
    text = progress.describe(run.context.name, run.kind, run.counts.posts, done, run.total_posts)
    logging.getLogger("mattermost_connector.progress").info(text)
    return text
