"""A TCP proxy a test controls, to cut a service (RabbitMQ, PostgreSQL, the fake platform)
mid-run without touching the machine's service, which other tests share.

`cut()` drops every open connection and answers new ones by closing them at once (a service
gone, as a client sees it: reset, then refused); `restore()` forwards again; `outage(s)` cuts
now and restores `s` seconds later on its own.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.up = True
        self.cuts = 0  # connections dropped or refused, for tests to see the fault hit
        self._pairs: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self.up:
                self._drop(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                self._drop(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._pairs.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                self._forget(end)

    def _drop(self, connection: socket.socket) -> None:
        self.cuts += 1
        with contextlib.suppress(OSError):  # a reset, not a polite end of stream
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._forget(connection)

    def _forget(self, connection: socket.socket) -> None:
        with self._lock:
            self._pairs.discard(connection)
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            connection.close()

    def cut(self) -> None:
        """Drop every connection now and refuse new ones until `restore`."""
        self.up = False
        with self._lock:
            pairs = list(self._pairs)
        for connection in pairs:
            self._drop(connection)

    def restore(self) -> None:
        self.up = True

    def outage(self, seconds: float) -> None:
        """Cut now; forward again after `seconds`, without the caller waiting."""
        self.cut()
        timer = threading.Timer(seconds, self.restore)
        timer.daemon = True
        timer.start()

    def close(self) -> None:
        self._closed = True
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()


@contextlib.contextmanager
def proxied(port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(port)
    try:
        yield proxy
    finally:
        proxy.close()
