"""`errors.one_line`: the one way an error becomes the line that reports it."""

from __future__ import annotations

import errno
import socket
from types import SimpleNamespace

import pytest
import sqlalchemy.exc

from mattermost_connector.errors import (
    ELLIPSIS,
    AuthenticationError,
    ConfigError,
    DeliveryError,
    Fault,
    MattermostError,
    fault_of,
    fold,
    local_fault,
    one_line,
)
from mattermost_connector.retries import delays, retry_call

SECRET = "tok-9f8e7d6c5b4a"


def test_an_expected_error_is_its_message_and_any_other_names_its_type():
    assert one_line(DeliveryError("RabbitMQ refused the bundle 3 times")) == (
        "RabbitMQ refused the bundle 3 times"
    )
    assert one_line(KeyError("id")) == "KeyError: 'id'"
    assert one_line(TimeoutError()) == "TimeoutError"  # no message: the type alone


def test_secrets_are_masked_and_whitespace_folded():
    error = ValueError(f"refused\n  token {SECRET}\tat\r\nhttps://x")
    assert one_line(error, secrets=[SECRET]) == "ValueError: refused token *** at https://x"


def test_first_line_drops_what_sqlalchemy_appends():
    error = sqlalchemy.exc.OperationalError("UPDATE channel_leases", {}, Exception("locked"))
    assert "[SQL: UPDATE channel_leases]" in one_line(error)
    assert one_line(error, first_line=True) == "OperationalError: (builtins.Exception) locked"


def test_a_long_message_is_cut_at_a_word_within_the_limit():
    words = " ".join(f"word{n:03d}" for n in range(100))  # 799 characters
    line = fold(words, limit=100)
    assert len(line) <= 100 and line.endswith(ELLIPSIS)
    assert words.startswith(line.removesuffix(ELLIPSIS) + " ")  # whole words only
    assert len(line) > 90  # not cut shorter than it need be
    unbroken = "x" * 500  # no word boundary: cut where the limit falls
    assert fold(unbroken, limit=100) == "x" * 99 + ELLIPSIS
    assert fold(words, limit=799) == words


# -- the kind of a fault decides its retries (README, Reliability) ------------------------


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ConnectionRefusedError(111, "refused"), Fault.TRANSIENT),
        (TimeoutError(), Fault.TRANSIENT),
        (MattermostError("dropped"), Fault.TRANSIENT),
        (MattermostError("busy", status=503), Fault.BUSY),
        (MattermostError("slow down", status=429), Fault.BUSY),
        (MattermostError("gone", status=404), Fault.PERMANENT),
        (AuthenticationError("revoked", status=401), Fault.PERMANENT),
        (ConfigError("bad"), Fault.PERMANENT),
        (OSError(errno.ENOSPC, "No space left on device"), Fault.LOCAL),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), Fault.LOCAL),
        (PermissionError(errno.EACCES, "denied"), Fault.PERMANENT),
        (DeliveryError("nack", fault=Fault.BUSY), Fault.BUSY),
        (type("OperationalError", (Exception,), {})("server closed"), Fault.TRANSIENT),
        (type("NackError", (Exception,), {})("nack"), Fault.BUSY),
        (sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("closed")), Fault.TRANSIENT),
        (sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("dup")), Fault.PERMANENT),
    ],
)
def test_each_fault_has_its_kind(error: BaseException, kind: Fault):
    assert fault_of(error) == kind


def test_disk_full_names_the_path_the_space_and_the_temporary_directory(tmp_path):
    full = local_fault(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "x", 4096)
    assert full is not None and fault_of(full) == Fault.LOCAL
    line = one_line(full)
    assert line.startswith(f"No space left on device writing {tmp_path / 'x'}: 4096 bytes needed")
    assert " free (temporary directory: " in line and "TMPDIR" in line
    assert local_fault(OSError(errno.EACCES, "denied"), tmp_path) is None


def test_only_transient_and_busy_faults_are_retried_within_the_budget():
    connector = SimpleNamespace(delivery_retries=3, delivery_retry_delay=0.0)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError(104, "reset")
        return "ok"

    assert retry_call(flaky, connector, "test") == "ok" and len(calls) == 3  # type: ignore[arg-type]
    calls.clear()

    def full() -> None:
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        retry_call(full, connector, "test")  # type: ignore[arg-type]
    assert len(calls) == 1
    assert delays(SimpleNamespace(delivery_retries=3, delivery_retry_delay=10)) == [10, 20, 40]  # type: ignore[arg-type]


def _queue_settings(monkeypatch: pytest.MonkeyPatch, url: str, token: str):
    from tests.support import settings_with

    return settings_with(
        monkeypatch,
        CONNECTOR_SEND_TO_QUEUE="true",
        OPENCTI_URL=url,
        OPENCTI_TOKEN=token,
        CONNECTOR_ID="6c3e9a2b-7d41-4f8e-9b0a-1e2d3c4b5a69",
    )


def test_a_refused_opencti_token_is_permanent_an_unreachable_platform_transient(
    workdir, monkeypatch: pytest.MonkeyPatch
):
    """pycti reports both as "OpenCTI API is not reachable": under `serve` a refused token
    was retried for the whole budget. It is asked again, and said as it is."""
    from mattermost_connector.delivery import opencti_helper
    from tests.graphql_server import GraphQLServer

    platform = GraphQLServer("the-right-token", lambda op, v: {"data": {"about": {}}}).start()
    refused = _queue_settings(monkeypatch, platform.url, "a-wrong-token")
    with pytest.raises(DeliveryError) as caught:
        opencti_helper(refused)
    assert fault_of(caught.value) is Fault.PERMANENT
    assert str(caught.value) == (
        f"cannot register with OpenCTI at {platform.url}: the token was refused; "
        "check OPENCTI_TOKEN"
    )
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    away = _queue_settings(monkeypatch, f"http://127.0.0.1:{port}", "a-wrong-token")
    with pytest.raises(DeliveryError) as caught:
        opencti_helper(away)
    assert fault_of(caught.value) is Fault.TRANSIENT
    assert "a-wrong-token" not in str(caught.value)
