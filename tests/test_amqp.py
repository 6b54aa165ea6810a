"""Publishing to OpenCTI's RabbitMQ: pycti's own message, connections reused, none left open."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from mattermost_connector import amqp
from mattermost_connector.amqp import Publisher, queue_message
from tests.conftest import CONNECTOR_ID, OPENCTI_TOKEN
from tests.fake_opencti import FakeOpenCTI

pytestmark = pytest.mark.amqp

BUNDLE = json.dumps(
    {
        "type": "bundle",
        "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d",
        "objects": [{"type": "identity", "name": 'é漢字🔥 "quoted" \\ \n', "id": "identity--x"}],
    },
    ensure_ascii=False,
)


@pytest.fixture
def helper(platform: FakeOpenCTI, workdir) -> Iterator[Any]:
    """pycti's real helper, registered with the fake platform, which sends it to RabbitMQ."""
    from pycti import OpenCTIConnectorHelper

    hook = sys.excepthook
    try:
        yield OpenCTIConnectorHelper(
            {
                "opencti": {"url": platform.url, "token": OPENCTI_TOKEN},
                "connector": {
                    "id": CONNECTOR_ID,
                    "type": "EXTERNAL_IMPORT",
                    "name": "Mattermost",
                    "scope": "mattermost",
                    "log_level": "error",
                    "run_and_terminate": True,
                },
            }
        )
    finally:
        sys.excepthook = hook


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[pika.BlockingConnection]:
    """Every RabbitMQ connection opened from now on (pika's own class, only counted)."""
    opened: list[pika.BlockingConnection] = []

    class Counted(pika.BlockingConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(pika, "BlockingConnection", Counted)
    return opened


class RecordingChannel:
    """Where pycti's `_send_bundle` publishes in the comparison: it keeps what it is handed."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    def basic_publish(self, **kwargs: Any) -> None:
        self.published.append(kwargs)


def received(queue: str) -> list[tuple[Any, Any, bytes]]:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    channel = connection.channel()
    messages = []
    while (message := channel.basic_get(queue, auto_ack=True))[0] is not None:
        messages.append(message)
    connection.close()
    return messages


def test_the_message_is_the_one_pycti_publishes(helper: Any, push_queue: str):
    recorder = RecordingChannel()
    helper._send_bundle(
        recorder,
        BUNDLE,
        work_id="work-1",
        sequence=1,
        entities_types=[],
        update=False,
        draft_id=None,
        no_split=True,
    )
    (theirs,) = recorder.published
    publisher = Publisher(helper)
    publisher.publish(queue_message(helper, BUNDLE, "work-1"))
    publisher.close()
    ((method, properties, body),) = received(push_queue)
    assert json.loads(body) == json.loads(theirs["body"])
    assert (method.exchange, method.routing_key) == (theirs["exchange"], theirs["routing_key"])
    assert properties.delivery_mode == theirs["properties"].delivery_mode == 2
    assert properties.content_encoding == theirs["properties"].content_encoding


def test_one_connection_serves_consecutive_bundles_and_is_closed_after(
    helper: Any, push_queue: str, connections: list
):
    publisher = Publisher(helper)
    for _ in range(12):
        publisher.publish(queue_message(helper, BUNDLE, None))
    assert len(connections) == 1 and connections[0].is_open
    publisher.close()
    assert not connections[0].is_open
    assert len(received(push_queue)) == 12


def test_an_idle_connection_is_replaced_not_reused(
    helper: Any, push_queue: str, connections: list, monkeypatch: pytest.MonkeyPatch
):
    """RabbitMQ drops a connection that missed two heartbeats; an idle blocking connection
    sends none. One idle too long is closed and a new one opened."""
    monkeypatch.setattr(amqp, "MAX_IDLE_S", 0.0)
    publisher = Publisher(helper)
    for _ in range(3):
        publisher.publish(queue_message(helper, BUNDLE, None))
    assert len(connections) == 3
    assert [c.is_open for c in connections] == [False, False, True]
    publisher.close()
    assert len(received(push_queue)) == 3


def test_a_connection_that_failed_is_not_reused(helper: Any, push_queue: str, connections: list):
    publisher = Publisher(helper)
    publisher.publish(queue_message(helper, BUNDLE, None))
    exchange = helper.connector_config["push_exchange"]
    helper.connector_config["push_exchange"] = "no-such-exchange"  # the broker closes the channel
    with pytest.raises(ChannelClosedByBroker):
        publisher.publish(queue_message(helper, BUNDLE, None))
    assert not connections[0].is_open
    helper.connector_config["push_exchange"] = exchange
    publisher.publish(queue_message(helper, BUNDLE, None))
    publisher.close()
    assert len(connections) == 2 and not any(c.is_open for c in connections)
    assert len(received(push_queue)) == 2


def test_a_socket_closed_while_connecting_is_an_unreachable_broker(monkeypatch):
    """pika raises ValueError, not AMQPConnectionError, when the peer resets the socket as it
    connects (seen through the fault tests' TCP proxy): still the broker unreachable, a
    transient fault the load retries, not an unexplained delivery failure."""
    from types import SimpleNamespace

    from pika.exceptions import AMQPConnectionError

    def reset(_parameters: Any) -> Any:
        raise ValueError("Expected connected socket, but getpeername() failed: error=OSError(107)")

    monkeypatch.setattr(pika, "BlockingConnection", reset)
    connection = {"host": "127.0.0.1", "port": 5672, "vhost": "/", "user": "guest"}
    helper = SimpleNamespace(
        connector_config={"connection": {**connection, "pass": "guest", "use_ssl": False}},
        config={},
    )
    with pytest.raises(AMQPConnectionError, match="getpeername"):
        Publisher(helper).publish(b"{}")


def test_a_refused_publish_is_tried_once_and_fails_as_busy(monkeypatch):
    """One retry level for a refused bundle: the publisher makes a single attempt and raises
    a busy fault, which the load step's retries own (a second level here would multiply
    them: 16 publishes at the defaults)."""
    from types import SimpleNamespace

    from pika.exceptions import NackError

    from mattermost_connector.errors import DeliveryError, Fault, fault_of

    publishes: list[dict] = []

    class Refusing:
        is_open = True

        def channel(self) -> Refusing:
            return self

        def confirm_delivery(self) -> None:
            pass

        def basic_publish(self, **kwargs: Any) -> None:
            publishes.append(kwargs)
            raise NackError([])

        def close(self) -> None:
            self.is_open = False

    monkeypatch.setattr(pika, "BlockingConnection", lambda _parameters: Refusing())
    connection = {"host": "127.0.0.1", "port": 5672, "vhost": "/", "user": "guest"}
    helper = SimpleNamespace(
        connector_config={
            "connection": {**connection, "pass": "guest", "use_ssl": False},
            "push_exchange": "push",
            "push_routing": "push.key",
        },
        config={},
    )
    publisher = Publisher(helper)
    for attempt in range(1, 4):  # each of the load's attempts publishes exactly once
        with pytest.raises(DeliveryError, match="RabbitMQ refused the bundle") as refused:
            publisher.publish(b"{}")
        assert fault_of(refused.value) == Fault.BUSY
        assert len(publishes) == attempt
