"""Publishing whole bundles to OpenCTI's RabbitMQ over connections kept for a channel run.

pycti's send_stix2_bundle opens a RabbitMQ connection for every bundle, asks the platform for
one expectation, then serialises the message with the json module. For one message per bundle
that was most of the delivery's CPU (py-spy: a connection handshake, a GraphQL call and a
5 ms json.dumps of the base64 text, per bundle). Here the message is the one pycti's
`_send_bundle` builds (tests/test_amqp.py compares the two), published on a connection reused
while it is fresh, with publisher confirms: `publish` returns once the broker has the
message, and only then does the caller count its objects on the work (delivery.Expectations).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson

from mattermost_connector.errors import DeliveryError, Fault

log = logging.getLogger("mattermost_connector.amqp")

# pika's heartbeat as pycti sets it. A connection left idle is not heartbeating (a blocking
# connection only does so while in use) and RabbitMQ drops it after two missed beats, 20 s:
# one idle for half a beat is closed rather than reused.
HEARTBEAT_S = 10
MAX_IDLE_S = HEARTBEAT_S / 2


class OneAttempt:
    """Wraps a pika channel: a refused publish (nack, unroutable) fails the delivery at once,
    a busy fault. The load step's retries re-send it, the one retry level for a refused
    bundle; pycti's own loop would retry every 10 s forever and hang the run."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def basic_publish(self, **kwargs: Any) -> Any:
        from pika.exceptions import NackError, UnroutableError

        try:
            return self._channel.basic_publish(**kwargs)
        except (NackError, UnroutableError) as error:
            raise DeliveryError(
                f"RabbitMQ refused the bundle ({type(error).__name__})", fault=Fault.BUSY
            ) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


def plain_publish(helper: Any) -> bool:
    """Whether pycti would simply publish a `no_split` bundle: no validation workflow, draft,
    playbook or shared organisations, each of which sends bundles another way."""
    return (
        helper.queue_protocol == "amqp"
        and not helper.connect_validate_before_import
        and not helper.force_validation
        and helper.draft_id is None
        and helper.playbook is None
        and helper.enrichment_shared_organizations is None
    )


def queue_message(helper: Any, bundle: str, work_id: str | None) -> bytes:
    """The body pycti's `_send_bundle` publishes for one unsplit bundle, serialised by orjson."""
    message: dict[str, Any] = {
        "bundle_type": "QUEUE_BUNDLE",
        "applicant_id": helper.applicant_id,
        "action_sequence": 1,
        "entities_types": [],
        "content": base64.b64encode(bundle.encode("utf-8")).decode("ascii"),
        "update": False,
        "draft_id": None,
        "no_split": True,
    }
    if work_id is not None:
        message["work_id"] = work_id
    return orjson.dumps(message)


@dataclass
class _Link:
    connection: Any
    channel: Any
    used: float


class Publisher:
    """Publishes messages to the connector's push exchange with publisher confirms, keeping up
    to one open connection per concurrent sender. Not tied to threads: a connection is used by
    one sender at a time, then handed back."""

    def __init__(self, helper: Any) -> None:
        self._helper = helper
        self._idle: list[_Link] = []
        self._lock = threading.Lock()

    def publish(self, body: bytes) -> None:
        import pika

        config = self._helper.connector_config
        link = self._take()
        try:
            OneAttempt(link.channel).basic_publish(
                exchange=config["push_exchange"],
                routing_key=config["push_routing"],
                body=body,
                properties=pika.BasicProperties(delivery_mode=2, content_encoding="utf-8"),
            )
        except BaseException:
            _close(link)  # whatever failed, the next message starts on a new connection
            raise
        link.used = time.monotonic()
        with self._lock:
            self._idle.append(link)

    def close(self) -> None:
        """Close the idle connections (end of a channel run: none is left open between runs)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for link in idle:
            _close(link)

    def _take(self) -> _Link:
        now = time.monotonic()
        with self._lock:
            while self._idle:
                link = self._idle.pop()
                if link.connection.is_open and now - link.used < MAX_IDLE_S:
                    return link
                _close(link)
        return self._open()

    def _open(self) -> _Link:
        """A connection as pycti opens one (same parameters, TLS included), confirms on."""
        import pika
        from pika.exceptions import AMQPConnectionError
        from pycti.connector.opencti_connector_helper import create_mq_ssl_context

        connection = self._helper.connector_config["connection"]
        parameters = pika.ConnectionParameters(
            heartbeat=HEARTBEAT_S,
            host=connection["host"],
            port=connection["port"],
            virtual_host=connection["vhost"],
            credentials=pika.PlainCredentials(connection["user"], connection["pass"]),
            ssl_options=(
                pika.SSLOptions(create_mq_ssl_context(self._helper.config), connection["host"])
                if connection["use_ssl"]
                else None
            ),
        )
        try:
            opened = pika.BlockingConnection(parameters)
        except AMQPConnectionError:
            raise
        except (OSError, ValueError) as error:
            # pika's own errors for a socket closed while it connects (ValueError "Expected
            # connected socket, but getpeername() failed" when the peer resets at once): the
            # broker is unreachable, as AMQPConnectionError says for a refused connection
            raise AMQPConnectionError(repr(error)) from error
        try:
            channel = opened.channel()
            channel.confirm_delivery()
        except BaseException:
            _close(_Link(opened, None, 0.0))
            raise
        return _Link(opened, channel, time.monotonic())


def _close(link: _Link) -> None:
    try:
        if link.connection.is_open:
            link.connection.close()
    except Exception as error:  # already gone: nothing to release
        log.debug("closing a RabbitMQ connection: %s", error)
