"""`mattermost-connector`: run the connector's flows from a shell.

Exit codes: 0 everything done, 1 a channel or the run failed, 2 bad configuration or input.
Expected failures print one line; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from mattermost_connector.errors import ConfigError, ConnectorError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# Prefect reads these at import: set them first, leaving any the user chose.
_PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "mattermost_connector",
    # our loggers also run outside flows (checks, setup): no warning that the API misses them
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mattermost-connector",
        description="Import Mattermost channels into OpenCTI as STIX 2.1, with Prefect.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sync = commands.add_parser("sync", help="sync the configured channels once, then exit")
    sync.add_argument(
        "--channel",
        action="append",
        metavar="ID",
        help="sync only this channel (repeatable); default: MATTERMOST_CHANNEL_IDS",
    )
    backfill = commands.add_parser(
        "backfill", help="import one channel's posts created in [since, until), then exit"
    )
    backfill.add_argument("--channel", required=True, metavar="ID")
    backfill.add_argument("--since", required=True, metavar="TIME", help="ISO 8601 or epoch s")
    backfill.add_argument("--until", required=True, metavar="TIME", help="ISO 8601 or epoch s")
    commands.add_parser("serve", help="serve the sync (scheduled) and backfill deployments")
    status = commands.add_parser("status", help="cursors and recent runs from the state store")
    status.add_argument("--runs", type=int, default=10, metavar="N", help="how many runs")
    commands.add_parser("check", help="check the token, channels, platform and state store")
    return parser


def _configure_logging(level: str, debug: bool) -> None:
    """Our own console handler, set after Prefect's dictConfig (which disables loggers created
    before it) and independent of the root handler pycti replaces at registration."""
    logger = logging.getLogger("mattermost_connector")
    logger.disabled = False
    logger.propagate = False
    logger.setLevel(logging.DEBUG if debug else getattr(logging, level.upper(), logging.INFO))
    if not any(getattr(h, "_mattermost_console", False) for h in logger.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(
            logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s")
        )
        console._mattermost_console = True  # type: ignore[attr-defined]
        logger.addHandler(console)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Prefect's own API calls


def _print_report(report: Sequence[dict[str, Any]]) -> None:
    from mattermost_connector.channel_run import ChannelResult

    for row in report:
        print(ChannelResult(**row).summary())


def _channels(values: list[str] | None) -> list[str] | None:
    from mattermost_connector.config import parse_channel_ids

    if not values:
        return None
    try:
        return parse_channel_ids(values)
    except ValueError as error:
        raise ConfigError(f"--channel: {error}") from None


def _prepare() -> None:
    """Fail early, in one line, on what would fail later: the state store, registration."""
    from tasks import resources

    settings = resources.settings()
    resources.store()
    import flows.sync  # noqa: F401 - Prefect's logging setup, before ours

    _configure_logging(settings.connector.log_level, settings.mattermost.debug)
    resources.outputs()


def _finish(state: Any, what: str) -> int:
    report = state.result(raise_on_failure=False)
    if isinstance(report, list):
        _print_report(report)
    if state.is_completed():
        return EXIT_OK
    print(f"{what} failed: {state.message}", file=sys.stderr)
    return EXIT_FAILED


def _sync(args: argparse.Namespace) -> int:
    channels = _channels(args.channel)
    _prepare()
    from flows.sync import mattermost_sync

    return _finish(mattermost_sync(channel_ids=channels, return_state=True), "sync")


def _backfill(args: argparse.Namespace) -> int:
    from mattermost_connector.window import parse_window

    (channel,) = _channels([args.channel]) or [args.channel]
    try:
        parse_window(args.since, args.until)
    except ConfigError as error:
        raise ConfigError(f"--since/--until: {error}") from None
    _prepare()
    from flows.backfill import mattermost_backfill

    state = mattermost_backfill(channel, args.since, args.until, return_state=True)
    return _finish(state, "backfill")


def _serve(_: argparse.Namespace) -> int:
    from deployments.serve import serve_all
    from tasks import resources

    _prepare()
    serve_all(resources.settings())
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from mattermost_connector.status import report
    from tasks import resources

    print(report(resources.store(), runs=args.runs))
    return EXIT_OK


def _check(_: argparse.Namespace) -> int:
    from mattermost_connector.check import run_checks
    from tasks import resources

    healthy = True
    for ok, finding in run_checks(resources.settings()):
        healthy &= ok
        print(f"{'ok  ' if ok else 'FAIL'}  {finding}")
    return EXIT_OK if healthy else EXIT_FAILED


COMMANDS = {
    "sync": _sync,
    "backfill": _backfill,
    "serve": _serve,
    "status": _status,
    "check": _check,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name, value in _PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if not os.environ.get("PREFECT_API_URL"):
        # The temporary server Prefect starts for this process logs tracebacks from its own
        # services when it is stopped at exit; they say nothing about the sync.
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    try:
        return COMMANDS[args.command](args)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectorError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted: progress up to the last delivered bundle is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
