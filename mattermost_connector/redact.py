"""Keep tokens out of every log line, error message and stored text, debug mode included."""

from __future__ import annotations

import logging
from collections.abc import Iterable

MASK = "***"
_secrets: set[str] = set()
_installed = False


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    for secret in (*secrets, *_secrets):
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_secrets_in_logs(secrets: Iterable[str]) -> None:
    """Register secrets and mask them in every log record this process creates.

    A record factory (rather than a handler filter) also covers the handlers Prefect and
    pycti install after us.
    """
    global _installed
    _secrets.update(s for s in secrets if s and len(s) >= 4)
    if _installed:
        return
    _installed = True
    original = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = original(*args, **kwargs)
        if _secrets:
            try:
                message = record.getMessage()
            except Exception:  # a malformed record: leave it to logging's own error path
                return record
            masked = redact(message)
            if masked != message:
                record.msg, record.args = masked, None
        return record

    logging.setLogRecordFactory(factory)
