"""A reverse proxy in front of an HTTP API (the Prefect server) that a test makes busy.

Requests and WebSocket connections are forwarded byte for byte, one upstream connection per
client connection. `refuse(seconds)` drops every open connection (the client sees a reset) and
answers each new connection's first request with 503 and closes it, for `seconds`; then it
forwards again. `refuse_on(marker, seconds)` does the same the first time a request line
contains `marker` (e.g. "POST /api/artifacts/"), so that the refusals fall mid-run.
As tests/tcp_proxy.py does for RabbitMQ, without touching the shared server.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b'Content-Length: 35\r\nConnection: close\r\n\r\n{"detail": "busy (http_fault_proxy)"}'
)


class HttpFaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.refused = 0  # requests answered 503 and connections dropped
        self.forwarded = 0  # connections forwarded
        self._until = 0.0
        self._marker: bytes | None = None
        self._marker_seconds = 0.0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="http-proxy").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def busy(self) -> bool:
        return time.monotonic() < self._until

    def refuse(self, seconds: float) -> None:
        """Busy from now for `seconds`: open connections reset, new requests answered 503."""
        with self._lock:
            self._until = time.monotonic() + seconds
            dropped, self._open = self._open, set()
        for sock in dropped:
            self.refused += 1
            _reset(sock)

    def refuse_on(self, marker: str, seconds: float) -> None:
        """Busy for `seconds` from the first request whose request line contains `marker`."""
        self._marker, self._marker_seconds = marker.encode(), seconds

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            dropped, self._open = self._open, set()
        for sock in dropped:
            _reset(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = _first_request_line(client)
        if head is None:
            client.close()
            return
        if self._marker is not None and self._marker in head:
            self._marker = None
            self.refuse(self._marker_seconds)
        if self.busy():
            self.refused += 1
            with contextlib.suppress(OSError):
                _drain(client)
                client.sendall(BUSY)
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        self.forwarded += 1
        with self._lock:
            self._open.update((client, upstream))
        upstream.sendall(head)
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream, inspect=True)

    def _pipe(self, source: socket.socket, sink: socket.socket, inspect: bool = False) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if inspect and self._marker is not None and self._marker in data:
                    self._marker = None
                    self.refuse(self._marker_seconds)  # this connection is reset with it
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def _first_request_line(client: socket.socket) -> bytes | None:
    """What the client sent first, at least its request line (bytes as read, to forward)."""
    client.settimeout(30)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                return None
            data += chunk
    except OSError:
        return None
    client.settimeout(None)
    return data


def _drain(client: socket.socket) -> None:
    """Read what is left of the refused request briefly, so closing does not reset the
    connection before the client reads the 503."""
    client.settimeout(0.05)
    with contextlib.suppress(OSError):
        while client.recv(65536):
            pass


def _reset(sock: socket.socket) -> None:
    """Close with RST, as a crashed or restarting server would."""
    import struct

    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
