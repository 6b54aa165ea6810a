"""Keep tokens out of every log line, error message and stored text, debug mode included.

The secrets registered for this process live in the one log record factory that masks them
(`MaskingFactory`, installed by `mask_secrets_in_logs`): `redact` reads them from there, so
no module of ours holds them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

MASK = "***"


class MaskingFactory:
    """A log record factory that masks the registered secrets in every record. A record
    factory (rather than a handler filter) also covers the handlers Prefect and pycti
    install after us."""

    def __init__(self, original: Callable[..., logging.LogRecord]) -> None:
        self.original = original
        self.secrets: set[str] = set()

    def __call__(self, *args: object, **kwargs: object) -> logging.LogRecord:
        record = self.original(*args, **kwargs)
        if self.secrets:
            try:
                message = record.getMessage()
            except Exception:  # a malformed record: leave it to logging's own error path
                return record
            masked = redact(message, self.secrets)
            if masked != message:
                record.msg, record.args = masked, None
        return record


def registered() -> set[str]:
    """The secrets this process masks in its logs (none before `mask_secrets_in_logs`)."""
    factory = logging.getLogRecordFactory()
    return factory.secrets if isinstance(factory, MaskingFactory) else set()


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with `secrets` and every registered secret masked."""
    for secret in (*secrets, *registered()):
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_secrets_in_logs(secrets: Iterable[str]) -> None:
    """Register secrets and mask them in every log record this process creates."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, MaskingFactory):
        factory = MaskingFactory(factory)
        logging.setLogRecordFactory(factory)
    factory.secrets.update(s for s in secrets if s and len(s) >= 4)
