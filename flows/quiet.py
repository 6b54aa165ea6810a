"""No traceback for a run that failed the expected way.

Under `serve` and on workers, Prefect runs a flow with `run_flow(..., return_type="result")`:
the result of a Failed state is raised, and its error logger prints "Engine execution exited
with unexpected exception" with a traceback, after the run already ended Failed with its
one-line reason. The connector's flows fail only with a RunFailed, which says all there is
to say: that one record is dropped. Any other exception keeps its traceback."""

from __future__ import annotations

import logging

from mattermost_connector.errors import RunFailed

RUN_LOGGER = "prefect.flow_runs"


class ExpectedFailure(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, RunFailed)


def quiet_expected_failures() -> None:
    """Idempotent: the flows' modules call it on import, in every process that runs them."""
    logger = logging.getLogger(RUN_LOGGER)
    if not any(isinstance(f, ExpectedFailure) for f in logger.filters):
        logger.addFilter(ExpectedFailure())
