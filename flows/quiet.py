"""Prefect's run records, one line each, in every process that runs the connector's flows
(the CLI, `serve`'s flow run processes, workers): the flows' modules call
`quiet_expected_failures()` on import.

- Under `serve` and on workers, Prefect runs a flow with `run_flow(..., return_type="result")`:
  the result of a Failed state is raised, and its error logger prints "Engine execution exited
  with unexpected exception" with a traceback, after the run already ended Failed with its
  one-line reason. The connector's flows fail only with a RunFailed, which says all there is
  to say: that one record is dropped. Any other exception keeps its record.
- A failed task or flow run's record is one line: its traceback (pika's, pycti's, Prefect's
  own frames) is kept for MATTERMOST_DEBUG=true.
- Prefect's `Finished in state Completed()` line, logged at INFO for every task run (a run has
  hundreds), is dropped, and so is a failed task's `Finished in state Failed(...)`, which
  repeats its failure's line. Failures, retries and crashes keep their lines."""

from __future__ import annotations

import logging

from mattermost_connector.errors import RunFailed, fold

RUN_LOGGER = "prefect.flow_runs"
TASK_LOGGER = "prefect.task_runs"


class ExpectedFailure(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, RunFailed)


class _OneLine(logging.Filter):
    def __init__(self, debug: bool | None) -> None:
        super().__init__()
        self.debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        if self.debug is None:  # decided at the first record: settings load after imports
            self.debug = _debug()
        if not self.debug:
            record.msg, record.args = fold(record.getMessage(), limit=500), None
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


class _CompletedTaskRuns(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # a failed task's own line ("Retries are exhausted", or the failure) said it already
        return not str(record.msg).startswith(
            ("Finished in state Completed(", "Finished in state Failed('Task run encountered")
        )


def _debug() -> bool:
    from mattermost_prefect.tasks import resources

    try:
        return resources.settings().mattermost.debug
    except Exception:  # bad configuration: the run reports it; records stay one line
        return False


def _add_once(logger: logging.Logger, kind: type[logging.Filter], *args: object) -> None:
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(kind(*args))


def quiet_run_records(debug: bool | None = None) -> None:
    """Idempotent. `debug` None: MATTERMOST_DEBUG, read at the first record."""
    for name in (RUN_LOGGER, TASK_LOGGER):
        logger = logging.getLogger(name)
        one_line = next((f for f in logger.filters if isinstance(f, _OneLine)), None)
        if one_line is None:
            logger.addFilter(_OneLine(debug))
        elif debug is not None:
            one_line.debug = debug
    _add_once(logging.getLogger(TASK_LOGGER), _CompletedTaskRuns)


def quiet_expected_failures() -> None:
    """Idempotent: the flows' modules call it on import, in every process that runs them."""
    _add_once(logging.getLogger(RUN_LOGGER), ExpectedFailure)
    quiet_run_records()
