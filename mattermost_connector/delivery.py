"""Where bundles go: the OpenCTI platform (through the real pycti helper) and/or a directory.

Each destination delivers a bundle fully or raises DeliveryError, so that the caller advances a
channel's cursor only after every destination has what precedes it.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from mattermost_connector.amqp import OneAttempt, Publisher, plain_publish, queue_message
from mattermost_connector.config import Settings
from mattermost_connector.errors import DeliveryError, Fault, fault_of, local_fault, one_line
from mattermost_connector.retries import retry_call
from mattermost_connector.stix import Upload
from mattermost_connector.upload import ArtifactUploader

log = logging.getLogger("mattermost_connector.delivery")


def _stamp() -> str:
    return datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%S%fZ")


@dataclass
class Work:
    """One channel run as each destination tracks it (an OpenCTI work, a file prefix)."""

    channel_id: str
    friendly_name: str
    ids: dict[str, str | None] = field(default_factory=dict)
    sequence: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    started: str = field(default_factory=_stamp)  # UTC, to the microsecond


class Destination(Protocol):
    name: str

    def open_work(self, work: Work) -> None: ...

    def upload(self, work: Work, upload: Upload) -> None: ...

    def send(self, work: Work, bundle: str, objects: int, sequence: int | None = None) -> None: ...

    def close_work(self, work: Work, message: str, in_error: bool) -> None: ...

    def save_state(self, channel_id: str, state: dict[str, Any]) -> None: ...


class DirectoryDestination:
    """Writes one STIX 2.1 bundle per file, atomically: a reader never sees half a bundle."""

    name = "directory"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DeliveryError(
                f"CONNECTOR_SEND_TO_DIRECTORY_PATH: cannot create {path} ({error.strerror})"
            ) from None

    def open_work(self, work: Work) -> None:
        work.ids[self.name] = work.channel_id

    def upload(self, work: Work, upload: Upload) -> None:
        """Nothing to upload: a directory alone embeds every file; beside OpenCTI, its bundles
        name an uploaded file by its Artifact (hashes, name, type)."""

    def send(self, work: Work, bundle: str, objects: int, sequence: int | None = None) -> None:
        """File names sort in the channel run's bundle order, though bundles are sent
        CONNECTOR_DELIVERY_CONCURRENCY at once: the run's start (µs), the channel, the
        bundle's `sequence` in the run (else the order of sends), a random suffix (a bundle
        sent again, after a failure, does not overwrite the first copy)."""
        number = next(work.sequence) if sequence is None else sequence
        name = f"{work.started}-{work.ids[self.name]}-{number:06d}-{uuid.uuid4().hex[:6]}.json"
        final = self.path / name
        partial = final.with_suffix(".json.tmp")
        try:
            with open(partial, "w", encoding="utf-8") as handle:
                handle.write(bundle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, final)
        except OSError as error:
            partial.unlink(missing_ok=True)
            local = local_fault(error, self.path, len(bundle.encode("utf-8")))
            if local is not None:
                raise local from None
            raise DeliveryError(f"cannot write bundle {final}: {error.strerror}") from None

    def close_work(self, work: Work, message: str, in_error: bool) -> None:
        """Nothing to close: each file is complete when renamed into place."""

    def save_state(self, channel_id: str, state: dict[str, Any]) -> None:
        """The directory keeps no state; the state store holds the cursors."""


def _helper_config(settings: Settings) -> dict[str, Any]:
    opencti, connector = settings.opencti, settings.connector
    assert opencti.url and opencti.token and connector.id  # checked by load_settings
    return {
        "opencti": {"url": opencti.url, "token": opencti.token.get_secret_value()},
        "connector": {
            "id": str(connector.id),
            "type": "EXTERNAL_IMPORT",
            "name": connector.name,
            "scope": connector.scope,
            "log_level": "warning" if connector.log_level == "warn" else connector.log_level,
            "queue_protocol": connector.queue_protocol,
            "send_to_queue": True,
            "send_to_directory": False,
            # Prefect schedules the runs: no pycti scheduler, no heartbeat thread per process.
            "run_and_terminate": True,
        },
    }


def _helper_class() -> type:
    from pycti import OpenCTIConnectorHelper  # heavy import, only when delivering

    class OneAttemptHelper(OpenCTIConnectorHelper):
        def _send_bundle(self, channel: Any, bundle: str, **kwargs: Any) -> None:
            return super()._send_bundle(OneAttempt(channel), bundle, **kwargs)

    return OneAttemptHelper


def _registration_failed(settings: Settings, error: Exception) -> DeliveryError:
    """pycti says "not reachable" for a refused token too: the platform is asked again, and
    a refused token is a permanent fault (retrying it under `serve` only repeats the refusal
    for the whole budget), an unreachable platform a transient one."""
    from mattermost_connector.check import TOKEN_REFUSED, token_refused

    url = settings.opencti.url
    if token_refused(settings):
        return DeliveryError(
            f"cannot register with OpenCTI at {url}: {TOKEN_REFUSED}", fault=Fault.PERMANENT
        )
    reason = one_line(error, settings.secrets, limit=300)
    return DeliveryError(f"cannot register with OpenCTI at {url}: {reason}")


def opencti_helper(settings: Settings) -> Any:
    """Register the connector with the platform: once per destination, which keeps the
    helper for every later run of the process."""
    hook, root = sys.excepthook, logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet_libraries(settings.mattermost.debug, settings.connector.name)
    try:
        return _helper_class()(_helper_config(settings))
    except Exception as error:  # pycti raises bare ValueErrors and requests errors
        raise _registration_failed(settings, error) from None
    finally:
        sys.excepthook = hook  # pycti's hook SIGTERMs the process on any exception
        quiet_libraries(settings.mattermost.debug, settings.connector.name)
        if not settings.mattermost.debug:  # pycti's JSON root handler replaced ours
            root.handlers[:] = handlers
            root.setLevel(level)


def quiet_libraries(debug: bool, connector_name: str) -> None:
    """pycti sends every record to stderr as JSON (the root handler it installs), pika's
    with tracebacks of each lost connection: the connector reports each failure in one line
    of its own, so theirs are shown only with MATTERMOST_DEBUG=true."""
    level = logging.DEBUG if debug else logging.CRITICAL
    for name in ("pika", "api", "urllib3", connector_name):
        logging.getLogger(name).setLevel(level)


ADD_EXPECTATIONS = """
    mutation addExpectations($id: ID!, $expectations: Int) {
        workEdit(id: $id) { addExpectations(expectations: $expectations) }
    }
"""
TO_PROCESSED = """
    mutation workToProcessed($id: ID!, $message: String, $inError: Boolean) {
        workEdit(id: $id) { toProcessed(message: $message, inError: $inError) }
    }
"""


class Expectations:
    """What each OpenCTI work is owed: the objects of messages the broker confirmed, less
    those the platform acknowledged expecting. Expectations follow confirmed publishes only,
    so a failed or retried publish never counts twice, and a failed `addExpectations` (which
    pycti would swallow) is owed until it succeeds: at the latest when the work closes."""

    def __init__(self) -> None:
        self._owed: dict[str, int] = {}
        self._lock = threading.Lock()

    def confirmed(self, work_id: str, objects: int) -> None:
        with self._lock:
            self._owed[work_id] = self._owed.get(work_id, 0) + objects

    def take(self, work_id: str) -> int:
        with self._lock:
            return self._owed.pop(work_id, 0)

    def give_back(self, work_id: str, objects: int) -> None:
        self.confirmed(work_id, objects)

    def owes(self, work_id: str) -> bool:
        with self._lock:
            return bool(self._owed.get(work_id))


class OpenCTIDestination:
    """Drives pycti's helper ourselves: works, bundles and state, never its scheduler."""

    name = "opencti"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._helper = opencti_helper(settings)
        self._publisher = Publisher(self._helper)
        self._uploader: ArtifactUploader | None = None
        self._uploader_lock = threading.Lock()
        self.expectations = Expectations()
        # works this process could not close (the API down past the budget): closed when it
        # opens its next work
        self._unclosed: dict[str, tuple[str, bool]] = {}

    def _fail(self, action: str, error: Exception) -> DeliveryError:
        """One line naming the call; a platform that answered (500, a GraphQL error) is busy,
        one that could not be reached is a transient fault."""
        reason = one_line(error, self._settings.secrets, limit=300)
        kind = fault_of(error)
        if isinstance(error, ValueError) and not isinstance(error, DeliveryError):
            kind = Fault.BUSY  # pycti's ValueError: the API answered with an error
        return DeliveryError(f"OpenCTI {action} failed: {reason}", fault=kind)

    def open_work(self, work: Work) -> None:
        try:
            work.ids[self.name] = self._helper.api.work.initiate_work(
                self._helper.connector_id, work.friendly_name
            )
        except Exception as error:
            raise self._fail("workAdd", error) from None
        for work_id, (message, in_error) in list(self._unclosed.items()):
            try:
                self._close(work_id, message, in_error, patient=False)
            except Exception as error:
                log.info("OpenCTI work %s still open: %s", work_id, one_line(error, limit=200))
            else:
                del self._unclosed[work_id]
                log.info("OpenCTI work %s closed, by a run after its own", work_id)

    def _close(self, work_id: str, message: str, in_error: bool, patient: bool) -> None:
        """Owed expectations, then workToProcessed: the platform completes a work whose counts
        then match (docs/opencti-pycti.md). Patient: each under the retry budget."""
        self._expect(work_id, patient=patient)
        if self.expectations.owes(work_id):
            raise DeliveryError(f"OpenCTI work {work_id}: expectations still owed")
        variables = {"id": work_id, "message": message, "inError": in_error}

        def close() -> None:
            self._helper.api.query(TO_PROCESSED, variables, True)

        if patient:
            retry_call(close, self._settings.connector, f"OpenCTI work {work_id} closing")
        else:
            close()

    def _expect(self, work_id: str, patient: bool) -> None:
        """Tell the platform what `work_id` is owed. Impatient (after each publish): one try,
        a failure stays owed. Patient (closing the work): the retry budget, then raise."""
        owed = self.expectations.take(work_id)
        if not owed:
            return

        def add() -> None:
            self._helper.api.query(ADD_EXPECTATIONS, {"id": work_id, "expectations": owed}, True)

        try:
            if patient:
                retry_call(add, self._settings.connector, f"OpenCTI work {work_id} expectations")
            else:
                add()
        except Exception as error:
            self.expectations.give_back(work_id, owed)
            failure = self._fail(f"addExpectations({owed}) on work {work_id}", error)
            if patient:
                raise failure from None
            log.info("%s; added when the work closes", failure)

    def upload(self, work: Work, upload: Upload) -> None:
        """A file too large for any queue message, uploaded as an Artifact before the bundle
        that links it to its message (the bundle's relationship then finds it)."""
        with self._uploader_lock:
            if self._uploader is None:
                self._uploader = ArtifactUploader(
                    self._helper, self._settings.connector.no_trigger_import
                )
            uploader = self._uploader
        try:
            uploader.upload(upload)
        except Exception as error:
            raise self._fail(f"upload of {upload.name} ({upload.size} bytes)", error) from None

    def send(self, work: Work, bundle: str, objects: int, sequence: int | None = None) -> None:
        """One AMQP message per bundle by default (pycti's `no_split`): OpenCTI's worker then
        imports its objects in dependency order and reports each one on the work, so the
        work expects `objects` of them. Published on this destination's reused connections
        (mattermost_connector.amqp) unless pycti would not simply publish it (validation,
        drafts). CONNECTOR_SPLIT_BUNDLES=true keeps pycti's one message per object, each
        awaiting the broker's confirm."""
        from pika.exceptions import AMQPConnectionError

        whole = self._settings.connector.one_message_per_bundle
        work_id = work.ids.get(self.name)
        try:
            if whole and plain_publish(self._helper):
                body = queue_message(self._helper, bundle, work_id)
                limit = self._settings.connector.queue_max_message_size
                if len(body) > limit:  # bundles are built to fit: never sent to be refused
                    raise DeliveryError(
                        f"a {len(body)}-byte message exceeds CONNECTOR_QUEUE_MAX_MESSAGE_SIZE "
                        f"({limit})",
                        fault=Fault.PERMANENT,
                    )
                self._publisher.publish(body)  # returns once the broker confirmed it
                if work_id:
                    self.expectations.confirmed(work_id, objects)
                    self._expect(work_id, patient=False)
                return
            if whole and work_id and objects > 1:  # pycti adds 1 itself
                self._helper.api.work.add_expectations(work_id, objects - 1)
            self._helper.send_stix2_bundle(
                bundle,
                work_id=work_id,
                send_to_directory=False,
                send_to_s3=False,
                cleanup_inconsistent_bundle=False,
                no_split=whole,
            )
        except DeliveryError:
            raise
        except AMQPConnectionError:
            connection = self._helper.connector_config["connection"]
            raise DeliveryError(
                f"RabbitMQ at {connection['host']}:{connection['port']} is unreachable",
                fault=Fault.TRANSIENT,
            ) from None
        except Exception as error:
            raise self._fail("bundle delivery", error) from None

    def close_work(self, work: Work, message: str, in_error: bool) -> None:
        self._publisher.close()
        with self._uploader_lock:
            uploader, self._uploader = self._uploader, None
        if uploader is not None:
            uploader.close()
        work_id = work.ids.get(self.name)
        if not work_id:
            return
        try:
            self._close(work_id, message, in_error, patient=True)
        except Exception as error:
            failure = (
                error if isinstance(error, DeliveryError) else self._fail("workToProcessed", error)
            )
            self._unclosed[work_id] = (message, in_error)
            log.warning("OpenCTI work %s left open, closed by the next run: %s", work_id, failure)

    def save_state(self, channel_id: str, state: dict[str, Any]) -> None:
        """Mirror the channel's cursor into the connector state shown in OpenCTI's UI."""
        merged = self._helper.get_state() or {}
        merged.setdefault("channels", {})[channel_id] = state
        self._helper.set_state(merged)
        self._helper.force_ping()


def destinations(settings: Settings) -> list[Destination]:
    found: list[Destination] = []
    if settings.connector.send_to_directory:
        found.append(DirectoryDestination(settings.connector.send_to_directory_path))
    if settings.connector.send_to_queue:
        found.append(OpenCTIDestination(settings))
    return found
