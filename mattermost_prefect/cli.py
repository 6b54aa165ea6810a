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

from mattermost_connector.errors import ConfigError, ConnectorError, one_line
from mattermost_connector.kinds import RunKind
from mattermost_prefect import temporary_server

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# Prefect reads these at import: set them first, leaving any the user chose.
_PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "mattermost_connector",
    # our loggers also run outside flows (checks, setup): no warning that the API misses them
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    # a busy API (the temporary server on SQLite answers 503 while it writes) is waited out:
    # 7 retries back off 2, 4, ... 128 s (254 s in all; Prefect's default 5 gives 62 s)
    "PREFECT_CLIENT_MAX_RETRIES": "7",
}


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more (got {text!r})")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("opencti-mattermost-prefect")
    except PackageNotFoundError:
        return "unknown (not installed)"


CONFIG_NOTE = (
    "Configuration: environment variables, then .env, then config.yml in the working "
    "directory (see the README's configuration table)."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mattermost-connector",
        description="Import Mattermost channels into OpenCTI as STIX 2.1, with Prefect.",
        epilog="Exit codes: 0 done, 1 a channel or the run failed, 2 bad configuration or "
        "arguments. Run `mattermost-connector COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        # a plain str: argparse lists the choices by repr (`<RunKind.SYNC: 'sync'>` otherwise)
        return commands.add_parser(
            str(name), help=summary, description=description, epilog=CONFIG_NOTE
        )

    sync = command(
        RunKind.SYNC,
        "sync the configured channels once, then exit",
        "Sync each channel from its cursor once: new posts, files missed before, then edits "
        "and deletions. Runs the flow on $PREFECT_API_URL, or on a temporary local Prefect "
        "server when it is unset (7-16 s to start).",
    )
    sync.add_argument(
        "--channel",
        action="append",
        metavar="ID",
        help="sync only this channel (repeatable); default: MATTERMOST_CHANNEL_IDS",
    )
    backfill = command(
        RunKind.BACKFILL,
        "import one channel's posts created in [since, until), then exit",
        "Import the posts of one channel created in [since, until), under the same ids as a "
        "sync; the sync cursor does not move. Rerunning the same window continues it.",
    )
    backfill.add_argument(
        "--channel", required=True, metavar="ID", help="the channel's 26-character id"
    )
    backfill.add_argument(
        "--since",
        required=True,
        metavar="TIME",
        help="first creation time included: ISO 8601 (2024-01-31, 2024-01-31T12:00:00Z) "
        "or epoch seconds",
    )
    backfill.add_argument(
        "--until",
        required=True,
        metavar="TIME",
        help="first creation time excluded, in the same forms",
    )
    command(
        "serve",
        "serve the sync (scheduled) and backfill deployments",
        "Serve the mattermost-sync/sync deployment (a sync at once, then every "
        "CONNECTOR_DURATION_PERIOD or CONNECTOR_RUN_EVERY) and the "
        "mattermost-backfill/backfill deployment from this "
        "process, until interrupted. Set PREFECT_API_URL to a Prefect server to see and "
        "trigger them in its UI.",
    )
    command(
        "live",
        "catch every channel up, then deliver new posts, edits and deletions as they happen",
        "Catch every configured channel up over REST, then listen on Mattermost's WebSocket "
        "and deliver each channel's new posts, edits and deletions within seconds, through "
        "the same pipeline, cursor and lease as `sync`. Runs until SIGTERM or SIGINT, which "
        "let the delivery in flight finish (exit 0). After a disconnection it reconnects "
        "(MATTERMOST_KEEPALIVE=true) or exits 1 (false).",
    )
    status = command(
        "status",
        "cursors and recent runs from the state store",
        "Show where each channel and backfill window stands and how the last runs went. "
        "Reads only the state store: CONNECTOR_STATE_DATABASE_URL (default "
        "sqlite:///data/state.db), nothing else is needed.",
    )
    status.add_argument(
        "--runs", type=_positive, default=10, metavar="N", help="how many runs (default 10)"
    )
    command(
        "schedule",
        "print the sync's interval, as deployments/prefect.yaml reads it",
        "Print CONNECTOR_DURATION_PERIOD or CONNECTOR_RUN_EVERY as an RFC 5545 rule "
        "(FREQ=HOURLY;INTERVAL=1, from the last whole interval, UTC): `prefect deploy "
        "--prefect-file deployments/prefect.yaml` runs this to schedule the sync "
        "deployment. Reads only the CONNECTOR_ settings.",
    )
    command(
        "check",
        "check the token, channels, platform and state store",
        "Try the configuration without changing anything: the Mattermost token, every "
        "channel, the state store, the bundle directory and the OpenCTI platform (without "
        "registering the connector). Exit 0 if all answer, 1 otherwise.",
    )
    return parser


# Prefect's own console format (prefect/logging/logging.yml, `standard`): one output, one
# timestamp form, whether a line comes from Prefect or from the connector.
CONSOLE_FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s"
CONSOLE_DATEFMT = "%H:%M:%S"


def console_formatter() -> logging.Formatter:
    return logging.Formatter(CONSOLE_FORMAT, datefmt=CONSOLE_DATEFMT)


def _configure_logging(level: str, debug: bool) -> None:
    """Our own console handler, set after Prefect's dictConfig (which disables loggers created
    before it) and independent of the root handler pycti replaces at registration."""
    logger = logging.getLogger("mattermost_connector")
    logger.disabled = False
    logger.propagate = False
    logger.setLevel(logging.DEBUG if debug else getattr(logging, level.upper(), logging.INFO))
    if not any(getattr(h, "_mattermost_console", False) for h in logger.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(console_formatter())
        console._mattermost_console = True  # type: ignore[attr-defined]
        logger.addHandler(console)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Prefect's own API calls
    from mattermost_prefect.flows.quiet import quiet_run_records

    quiet_run_records(debug)


def _print_report(report: Sequence[dict[str, Any]]) -> None:
    from mattermost_connector.channel_run import ChannelResult

    for row in report:
        print(ChannelResult.from_row(row).summary())


def _channels(values: list[str] | None) -> list[str] | None:
    from mattermost_connector.config import parse_channel_ids

    if not values:
        return None
    try:
        return parse_channel_ids(values)
    except ValueError as error:
        raise ConfigError(f"--channel: {error}") from None


def _prepare(channels: list[str] | None = None) -> None:
    """Fail early, in one line, on what would fail later, before Prefect starts: the state
    store, the token, the channels, the teams and the platform (check.preflight), then
    registration."""
    from mattermost_connector.check import preflight
    from mattermost_prefect.tasks import resources

    settings = resources.settings()
    resources.store()  # local and quick: first
    # the client's retry warnings would only repeat the one line the failure prints
    client_log = logging.getLogger("mattermost_connector.mattermost")
    level = client_log.level
    client_log.setLevel(logging.ERROR)
    try:
        preflight(settings, channels)
    finally:
        client_log.setLevel(level)
    temporary_server.use_when_ready()  # started as the command began; before Prefect loads
    import mattermost_prefect.flows.sync  # noqa: F401 - Prefect's logging setup, before ours

    _configure_logging(settings.connector.log_level, settings.mattermost.debug)
    resources.outputs()


def _finish(state: Any, what: str) -> int:
    from mattermost_connector.errors import RunFailed

    report = state.result(raise_on_failure=False)
    if isinstance(report, RunFailed):  # a failed run's state carries its report this way
        report = report.report
    if isinstance(report, list):
        _print_report(report)
    if state.is_completed():
        return EXIT_OK
    print(f"{what} failed: {state.message}", file=sys.stderr)
    return EXIT_FAILED


def _sync(args: argparse.Namespace) -> int:
    channels = _channels(args.channel)
    _prepare(channels)
    from mattermost_prefect.flows.sync import mattermost_sync

    return _finish(mattermost_sync(channel_ids=channels, return_state=True), RunKind.SYNC)


def _backfill(args: argparse.Namespace) -> int:
    from mattermost_connector.window import parse_window

    (channel,) = _channels([args.channel]) or [args.channel]
    try:
        parse_window(args.since, args.until)
    except ConfigError as error:
        raise ConfigError(f"--since/--until: {error}") from None
    _prepare([channel])
    from mattermost_prefect.flows.backfill import mattermost_backfill

    state = mattermost_backfill(channel, args.since, args.until, return_state=True)
    return _finish(state, RunKind.BACKFILL)


def _serve(_: argparse.Namespace) -> int:
    from mattermost_prefect.tasks import resources

    _prepare()
    from mattermost_prefect.deployments.serve import serve_all

    settings = resources.settings()
    live = None
    if settings.mattermost.live:
        from mattermost_prefect.flows.live import start_beside_serve

        live = start_beside_serve(settings)
    try:
        serve_all(settings)
    finally:
        if live is not None:  # the delivery in flight finishes first
            live.request_stop()
            live.wait()
    return EXIT_OK


def _live(_: argparse.Namespace) -> int:
    from mattermost_prefect.tasks import resources

    _prepare()
    from mattermost_prefect.flows.live import run_live

    return run_live(resources.settings())


def _status(args: argparse.Namespace) -> int:
    """The state store alone: no Mattermost, OpenCTI or output settings, no Prefect."""
    from mattermost_connector.config import load_state_database_url
    from mattermost_connector.state import StateStore
    from mattermost_connector.status import report

    store = StateStore(load_state_database_url())
    try:
        print(report(store, runs=args.runs))
    finally:
        store.close()
    return EXIT_OK


def _schedule(_: argparse.Namespace) -> int:
    from mattermost_connector.config import load_run_every, recurrence

    print(recurrence(load_run_every()))
    return EXIT_OK


def _check(_: argparse.Namespace) -> int:
    """Without Prefect or pycti unless a Secret block is configured: a check stays quick."""
    from mattermost_connector.check import run_checks
    from mattermost_connector.config import load_settings
    from mattermost_connector.redact import mask_secrets_in_logs

    settings = load_settings()
    mask_secrets_in_logs(settings.secrets)
    # each finding says what failed; the client's retry warnings would only repeat it
    logging.getLogger("mattermost_connector.mattermost").setLevel(logging.ERROR)
    healthy = True
    for ok, finding in run_checks(settings):
        healthy &= ok
        print(f"{'ok  ' if ok else 'FAIL'}  {finding}")
    return EXIT_OK if healthy else EXIT_FAILED


COMMANDS = {
    RunKind.SYNC: _sync,
    RunKind.BACKFILL: _backfill,
    "serve": _serve,
    "live": _live,
    "status": _status,
    "schedule": _schedule,
    "check": _check,
}


# The commands that run flows: on the temporary server unless PREFECT_API_URL is set.
USES_PREFECT = frozenset({RunKind.SYNC, RunKind.BACKFILL, "serve", "live"})


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name, value in _PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if not os.environ.get("PREFECT_API_URL"):
        # The temporary server Prefect starts for this process logs tracebacks from its own
        # services when it is stopped at exit; they say nothing about the sync.
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    if args.command in USES_PREFECT:
        temporary_server.start_early()  # boots while the connector imports and checks
    try:
        return COMMANDS[args.command](args)
    except ConfigError as error:
        print(f"configuration error: {one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectorError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        # Stopped at once: handlers still holding records (Prefect's API log handler) fail
        # while the interpreter shuts down; that is expected here, not worth pages of stderr.
        logging.raiseExceptions = False
        print("interrupted: progress up to the last delivered bundle is kept", file=sys.stderr)
        return 130
    finally:
        temporary_server.discard()  # unless a flow used it: then it stops at exit


if __name__ == "__main__":
    sys.exit(main())
