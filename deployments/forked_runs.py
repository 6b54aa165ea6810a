"""Served runs started from a process that has already imported the connector.

Prefect's runner starts each flow run of a served deployment in a new process
(`prefect.flow_engine.run_flow_in_subprocess`, multiprocessing "spawn"): a fresh interpreter
that imports Prefect, pycti and the connector again, seconds before a no-op sync can start.
Under `mattermost-connector serve` the same function runs with multiprocessing's "forkserver"
context instead: one server process imports the flows once (`set_forkserver_preload`), started
with `serve`, and each run is a fork of it, already imported. Everything else about the run is
Prefect's own (its environment, its settings, cancellation, the control channel), because
Prefect's function is called unchanged and only its choice of start method is replaced.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

# What a run imports: imported once, in the fork server, before any run.
PRELOAD = [
    "mattermost_prefect.flows.sync",
    "mattermost_prefect.flows.backfill",
    "mattermost_prefect.flows.channel",
    "mattermost_connector.delivery",
    "mattermost_connector.stix",
]


class _StartMethod:
    """Stands in for the `multiprocessing` module within prefect.flow_engine: every attribute
    is the module's, except that the context asked for is the fork server's."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def get_context(self, method: str | None = None) -> Any:
        return self._context

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


def start_runs_forked() -> None:
    """From now on, in this process, served runs fork from a preloaded fork server, which is
    started now so that the first scheduled run does not wait for its imports."""
    import prefect.flow_engine

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    from multiprocessing import forkserver

    forkserver.ensure_running()
    prefect.flow_engine.multiprocessing = _StartMethod(context)  # type: ignore[attr-defined]
