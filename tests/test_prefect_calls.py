"""The Prefect layer's own calls, without Prefect: a channel's steps run inline with their
tasks' retries (tasks/inline.py), and the connector's Prefect API calls wait out a busy API
and never fail the run for what is only shown (tasks/observe.py)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from mattermost_connector.errors import ConfigError
from mattermost_prefect.tasks import inline, observe


def fake_task(fn: Any, retries: int, delays: Any, condition: Any = True) -> SimpleNamespace:
    """What run_retried reads of a Prefect task."""
    return SimpleNamespace(
        fn=fn,
        name="step",
        retries=retries,
        retry_delay_seconds=delays,
        retry_condition_fn=(lambda *a: True) if condition else None,
    )


def failing(times: int, error: Exception) -> tuple[list[int], Any]:
    calls: list[int] = []

    def fn(value: int) -> int:
        calls.append(value)
        if len(calls) <= times:
            raise error
        return value * 2

    return calls, fn


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(inline.time, "sleep", slept.append)
    monkeypatch.setattr(observe.time, "sleep", slept.append)
    return slept


def test_an_inline_step_is_retried_with_its_tasks_delays(no_sleep: list[float]):
    calls, fn = failing(2, ConnectionResetError("reset"))
    assert inline.run_retried(fake_task(fn, 3, [1, 5]), (4,), {}) == 8
    assert calls == [4, 4, 4]
    assert no_sleep == [1, 5]  # Prefect repeats a list's last delay


def test_an_inline_step_gives_up_after_its_tasks_retries():
    calls, fn = failing(5, ConnectionResetError("reset"))
    with pytest.raises(ConnectionResetError):
        inline.run_retried(fake_task(fn, 2, 0.0), (1,), {})
    assert len(calls) == 3


def test_an_inline_step_never_waits_for_a_permanent_fault():
    calls, fn = failing(1, ConfigError("bad"))
    with pytest.raises(ConfigError):
        inline.run_retried(fake_task(fn, 3, 0.0), (1,), {})
    assert len(calls) == 1


def test_step_is_the_task_outside_a_channel_task_run_and_a_plain_call_inside():
    calls, fn = failing(0, RuntimeError())
    task = fake_task(fn, 0, None)
    assert inline.step(task) is task
    with inline.inline_steps():
        assert inline.step(task)(3) == 6
        assert inline.step(task).submit(5).result() == 10
    assert inline.step(task) is task
    assert calls == [3, 5]


def busy(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://prefect/api/task_runs/")
    response = httpx.Response(status, request=request)
    return httpx.HTTPStatusError(f"{status}", request=request, response=response)


def test_a_busy_prefect_api_is_waited_out_under_the_budget(no_sleep: list[float]):
    _, fn = failing(2, busy(503))
    assert observe.call(lambda: fn(1), "artifact", budget=[10, 20, 40]) == 2
    assert no_sleep == [10, 20]


def test_a_refused_request_is_not_retried():
    calls, fn = failing(1, busy(422))
    with pytest.raises(httpx.HTTPStatusError):
        observe.call(lambda: fn(1), "artifact", budget=[10, 20])
    assert len(calls) == 1


def test_what_is_only_shown_is_given_up_in_one_line_never_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    budget_call = observe.call
    monkeypatch.setattr(observe, "call", lambda action, what: budget_call(action, what, [1, 1]))
    calls, fn = failing(10, httpx.ConnectError("refused"))
    with caplog.at_level(logging.WARNING, logger="mattermost_connector.prefect_api"):
        assert observe.shown(lambda: fn(1), "progress artifact") is None
    assert len(calls) == 3
    (lost,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "progress artifact lost" in lost.getMessage()
