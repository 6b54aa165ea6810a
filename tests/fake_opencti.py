"""A small stand-in for the OpenCTI platform: the GraphQL operations pycti's helper sends.

It answers by operation name, as the platform would for a connector (register, ping, works,
expectations, stixBundlePush), and records every call so tests can check what the platform
received. With the AMQP transport, it points pycti at the real RabbitMQ (docs/opencti-pycti.md).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.graphql_server import GraphQLServer


@dataclass
class Work:
    id: str
    connector_id: str
    friendly_name: str
    expectations: int = 0
    status: str = "wait"
    message: str | None = None
    in_error: bool | None = None


@dataclass
class FakeOpenCTI:
    token: str
    amqp: dict[str, Any] = field(
        default_factory=lambda: {
            "host": "127.0.0.1",
            "vhost": "/",
            "use_ssl": False,
            "port": 5672,
            "user": "guest",
            "pass": "guest",
        }
    )
    push_exchange: str = "amqp.worker.exchange"
    connector_user_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    fail_operations: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.works: dict[str, Work] = {}
        self.states: dict[str, str | None] = {}
        self.pushed_bundles: list[dict[str, Any]] = []
        self.registrations: list[dict[str, Any]] = []
        self.observables: list[dict[str, Any]] = []  # stixCyberObservableAdd, files included
        # importPush (pycti's add_file): the observable's record, and the file with its marking
        self.pushed_files: list[dict[str, Any]] = []
        self._observable_ids: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._server: GraphQLServer | None = None
        self.down_until = 0.0
        self.refused: list[str] = []  # operations answered 500 by `fail_for`

    # -- operations ------------------------------------------------------------------------

    def push_routing(self, connector_id: str) -> str:
        return f"push_routing_{connector_id}"

    def fail_for(self, seconds: float) -> None:
        """Answer every call with HTTP 500 for `seconds` from now (an API that is down)."""
        self.down_until = time.monotonic() + seconds

    def answer(self, operation: str, variables: dict[str, Any]) -> dict[str, Any]:
        if time.monotonic() < self.down_until:
            self.refused.append(operation)
            return {"__status__": 500, "errors": [{"message": "Internal Server Error"}]}
        if operation in self.fail_operations:
            return {"errors": [{"message": f"{operation} refused", "name": "FUNCTIONAL_ERROR"}]}
        handler = getattr(self, f"_op_{operation}", None)
        if handler is None:
            return {"errors": [{"message": f"fake platform: no operation {operation}"}]}
        try:
            return {"data": handler(variables)}
        except ValueError as error:  # the platform's UnsupportedError, as GraphQL errors
            return {"errors": [{"message": str(error), "name": "UNSUPPORTED_ERROR"}]}

    def _op_healthCheck(self, _: dict[str, Any]) -> Any:
        return {"about": {"version": "6.9.0"}}

    def _op_RegisterConnector(self, variables: dict[str, Any]) -> Any:
        connector = variables["input"]
        self.registrations.append(connector)
        connector_id = connector["id"]
        self.states.setdefault(connector_id, None)
        return {"registerConnector": self._registration(connector_id)}

    def _registration(self, connector_id: str) -> dict[str, Any]:
        return {
            "id": connector_id,
            "connector_state": self.states[connector_id],
            "jwks": json.dumps({"keys": []}),
            "connector_user_id": self.connector_user_id,
            "config": {
                "connection": self.amqp,
                "s3": {
                    "endpoint": "localhost",
                    "port": 9000,
                    "use_ssl": False,
                    "bucket_name": "opencti-bucket",
                    "bucket_region": "us-east-1",
                    "access_key": "",
                    "secret_key": "",
                },
                "listen": f"listen_{connector_id}",
                "listen_routing": f"listen_routing_{connector_id}",
                "listen_exchange": "amqp.connector.exchange",
                "push": f"push_{connector_id}",
                "push_routing": self.push_routing(connector_id),
                "push_exchange": self.push_exchange,
            },
        }

    def _op_PingConnector(self, variables: dict[str, Any]) -> Any:
        connector_id = variables["id"]
        if variables.get("state") not in (None, "null"):
            self.states[connector_id] = variables["state"]
        return {
            "pingConnector": {
                "id": connector_id,
                "connector_state": self.states.get(connector_id),
                "connector_info": variables.get("connectorInfo"),
            }
        }

    def _op_workAdd(self, variables: dict[str, Any]) -> Any:
        work = Work(
            id=f"work_{uuid.uuid4()}",
            connector_id=variables["connectorId"],
            friendly_name=variables.get("friendlyName") or "",
        )
        self.works[work.id] = work
        return {"workAdd": {"id": work.id}}

    def _op_addExpectations(self, variables: dict[str, Any]) -> Any:
        self.works[variables["id"]].expectations += int(variables.get("expectations") or 0)
        return {"workEdit": {"addExpectations": variables["id"]}}

    def _op_reportExpectation(self, variables: dict[str, Any]) -> Any:
        return {"workEdit": {"reportExpectation": variables["id"]}}

    def _op_workToReceived(self, variables: dict[str, Any]) -> Any:
        self.works[variables["id"]].status = "progress"
        return {"workEdit": {"toReceived": variables["id"]}}

    def _op_workToProcessed(self, variables: dict[str, Any]) -> Any:
        work = self.works[variables["id"]]
        work.status, work.message = "complete", variables.get("message")
        work.in_error = bool(variables.get("inError"))
        return {"workEdit": {"toProcessed": variables["id"]}}

    def _op_pingWork(self, variables: dict[str, Any]) -> Any:
        return {"workEdit": {"ping": variables["id"]}}

    def _op_StixCyberObservableAdd(self, variables: dict[str, Any]) -> Any:
        """pycti's stix_cyber_observable.create; its files arrive as multipart uploads."""
        self.observables.append(variables)
        internal_id = str(uuid.uuid4())
        self._observable_ids[internal_id] = variables
        return {
            "stixCyberObservableAdd": {
                "id": internal_id,
                "standard_id": variables.get("stix_id"),
                "entity_type": variables["type"],
                "parent_types": ["Stix-Cyber-Observable"],
            }
        }

    def _op_StixCyberObservableEdit(self, variables: dict[str, Any]) -> Any:
        """importPush of a file onto an observable created before (it must exist)."""
        observable = self._observable_ids.get(variables["id"])
        if observable is None or "file" not in variables:
            raise ValueError("Cant upload a file an none existing element")
        self.pushed_files.append({**variables, "observable": observable})
        name = variables["file"]["filename"]
        return {"stixCyberObservableEdit": {"importPush": {"id": name, "name": name}}}

    def _op_StixBundlePush(self, variables: dict[str, Any]) -> Any:
        self.pushed_bundles.append(
            {"work_id": variables.get("work_id"), "bundle": json.loads(variables["bundle"])}
        )
        return {"stixBundlePush": True}

    # -- serving ---------------------------------------------------------------------------

    def start(self) -> FakeOpenCTI:
        self._server = GraphQLServer(self.token, self._recorded).start()
        return self

    def _recorded(self, operation: str, variables: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.calls.append((operation, variables))
            return self.answer(operation, variables)

    @property
    def url(self) -> str:
        assert self._server is not None
        return self._server.url

    def stop(self) -> None:
        if self._server:
            self._server.stop()

    def operations(self) -> list[str]:
        return [name for name, _ in self.calls]
