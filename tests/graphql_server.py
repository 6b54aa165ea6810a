"""The HTTP side of the two fake platforms (tests/fake_opencti.py, tests/replay_platform.py):
OpenCTI's GraphQL endpoint as pycti calls it, with its token check and multipart uploads.

Each fake only says what an operation answers; requests are parsed here, once.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_OPERATION = re.compile(r"\b(query|mutation)\s+(\w+)")
NOT_LOGGED_IN = {"errors": [{"message": "You must be logged in to do this."}]}

Answer = Callable[[str, dict[str, Any]], dict[str, Any]]


def graphql_request(body: bytes, content_type: str) -> dict[str, Any]:
    """A JSON request, or the graphql-multipart-request-spec one pycti sends with files:
    `operations`, a `map` of part -> variable paths, one part per file; each file becomes
    {filename, mimetype, data} at its paths. Parts are split by hand: the email parser
    would take an uploaded `message/rfc822` file for a nested message and lose its bytes."""
    if not content_type.startswith("multipart/form-data"):
        return json.loads(body)
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    assert isinstance(boundary, str), "multipart request without a boundary"
    parts: dict[str, tuple[str | None, str | None, bytes]] = {}
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, content = chunk[2:].partition(b"\r\n\r\n")
        meta = Message()
        for line in head.decode("utf-8").split("\r\n"):
            key, _, value = line.partition(":")
            meta[key.strip()] = value.strip()
        name = meta.get_param("name", header="content-disposition")
        filename = meta.get_param("filename", header="content-disposition")
        parts[str(name)] = (
            str(filename) if filename is not None else None,
            meta.get("content-type"),
            content[:-2] if content.endswith(b"\r\n") else content,
        )
    request = json.loads(parts.pop("operations")[2])
    for part, paths in json.loads(parts.pop("map")[2]).items():
        filename, mime, data = parts[part]
        upload = {
            "filename": filename,
            "mimetype": mime or "application/octet-stream",
            "data": data,
        }
        for path in paths:
            _set_path(request, path.split("."), upload)
    return request


def _set_path(root: Any, path: list[str], value: Any) -> None:
    target = root
    for step in path[:-1]:
        target = target[int(step)] if isinstance(target, list) else target[step]
    last = path[-1]
    if isinstance(target, list):
        index = int(last)
        target.extend([None] * (index + 1 - len(target)))
        target[index] = value
    else:
        target[last] = value


def operation_name(request: dict[str, Any]) -> str:
    match = _OPERATION.search(request.get("query", ""))
    return match.group(2) if match else ""


def _no_bytes(value: Any) -> Any:
    if isinstance(value, bytes):
        return None  # uploads are never echoed back
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class GraphQLServer:
    """Serves `answer(operation, variables)` on 127.0.0.1 for requests bearing `token`."""

    def __init__(self, token: str, answer: Answer) -> None:
        self.token, self.answer = token, answer
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> GraphQLServer:
        served = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body leave at once, no 40 ms stall

            def log_message(self, format: str, *args: Any) -> None:
                """Silent."""

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Authorization") != f"Bearer {served.token}":
                    self._send(NOT_LOGGED_IN)
                    return
                request = graphql_request(body, self.headers.get("Content-Type") or "")
                variables = request.get("variables") or {}
                self._send(served.answer(operation_name(request), variables))

            def _send(self, payload: dict[str, Any]) -> None:
                status = payload.pop("__status__", 200)  # an HTTP error the fake stages
                data = json.dumps(payload, default=_no_bytes).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
