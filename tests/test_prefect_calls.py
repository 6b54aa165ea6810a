"""The Prefect layer's own calls, without Prefect: a channel's steps run inline with their
tasks' retries (tasks/inline.py), and the connector's Prefect API calls wait out a busy API
and never fail the run for what is only shown (tasks/observe.py)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from mattermost_connector import retries
from mattermost_connector.errors import ConfigError
from mattermost_connector.pipeline.steps import STEPS, Retries, Step
from mattermost_prefect.tasks import inline, observe

CONNECTOR = SimpleNamespace(delivery_retries=2, delivery_retry_delay=10.0)  # 10 s, 20 s


def failing(times: int, error: Exception) -> tuple[list[int], Any]:
    """A domain step over its services that fails `times` times, then doubles its input."""
    calls: list[int] = []

    def step(services: Any, value: int) -> int:
        assert services == "services"
        calls.append(value)
        if len(calls) <= times:
            raise error
        return value * 2

    return calls, step


def inline_call(function: Any, retries: Retries = Retries.BUDGET) -> inline.Inline:
    pool = ThreadPoolExecutor(1)
    step = Step("read_ahead", retries, "", function)
    return inline.Inline(step, lambda: "services", CONNECTOR, pool)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(retries.time, "sleep", slept.append)
    return slept


def test_an_inline_step_is_retried_with_the_runs_budget(no_sleep: list[float]):
    calls, step = failing(2, ConnectionResetError("reset"))
    assert inline_call(step)(4) == 8
    assert calls == [4, 4, 4]
    assert no_sleep == [10, 20]


def test_an_inline_step_gives_up_after_the_budget():
    calls, step = failing(5, ConnectionResetError("reset"))
    with pytest.raises(ConnectionResetError):
        inline_call(step)(1)
    assert len(calls) == 3


def test_an_inline_step_never_waits_for_a_permanent_fault():
    calls, step = failing(1, ConfigError("bad"))
    with pytest.raises(ConfigError):
        inline_call(step)(1)
    assert len(calls) == 1


def test_a_step_retried_call_by_call_is_not_retried_whole():
    calls, step = failing(1, ConnectionResetError("reset"))
    with pytest.raises(ConnectionResetError):
        inline_call(step, Retries.EACH_CALL)(1)
    assert len(calls) == 1


def test_a_submitted_inline_step_runs_beside_the_caller_and_hands_back_its_outcome():
    _, step = failing(0, RuntimeError())
    assert inline_call(step).submit(5).result() == 10
    _, broken = failing(9, ConfigError("bad"))
    with pytest.raises(ConfigError):
        inline_call(broken).submit(1).result()


def test_steps_are_inline_only_within_a_channel_task_run():
    assert not inline.inline()
    with inline.inline_steps(lambda: "services", CONNECTOR, "run", print) as steps:  # type: ignore[arg-type]
        assert inline.inline()
        assert {s.name for s in STEPS} <= set(vars(steps))
        assert isinstance(steps.load, inline.Inline)
    assert not inline.inline()


def busy(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://prefect/api/task_runs/")
    response = httpx.Response(status, request=request)
    return httpx.HTTPStatusError(f"{status}", request=request, response=response)


def test_a_busy_prefect_api_is_waited_out_under_the_budget(no_sleep: list[float]):
    _, fn = failing(2, busy(503))
    assert observe.call(lambda: fn("services", 1), "artifact", budget=[10, 20, 40]) == 2
    assert no_sleep == [10, 20]


def test_a_refused_request_is_not_retried():
    calls, fn = failing(1, busy(422))
    with pytest.raises(httpx.HTTPStatusError):
        observe.call(lambda: fn("services", 1), "artifact", budget=[10, 20])
    assert len(calls) == 1


def test_what_is_only_shown_is_given_up_in_one_line_never_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    budget_call = observe.call
    monkeypatch.setattr(observe, "call", lambda action, what: budget_call(action, what, [1, 1]))
    calls, fn = failing(10, httpx.ConnectError("refused"))
    with caplog.at_level(logging.WARNING, logger="mattermost_connector.prefect_api"):
        assert observe.shown(lambda: fn("services", 1), "progress artifact") is None
    assert len(calls) == 3
    (lost,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "progress artifact lost" in lost.getMessage()
