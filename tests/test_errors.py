"""`errors.one_line`: the one way an error becomes the line that reports it."""

from __future__ import annotations

import sqlalchemy.exc

from mattermost_connector.errors import ELLIPSIS, DeliveryError, fold, one_line

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
