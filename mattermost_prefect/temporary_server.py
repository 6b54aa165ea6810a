"""The temporary Prefect server of a command run without PREFECT_API_URL, started first.

Prefect starts its temporary server (uvicorn in a subprocess, on SQLite) only when the flow's
first API call needs it, so a command paid the connector's imports, its fail-fast checks and
then the server's start one after the other. Started here as the command begins, the server
boots while the connector imports and checks (two processes, two cores); this process then
sets PREFECT_API_URL to it before Prefect is imported, and never imports Prefect's server
package (FastAPI, the ORM) at all. Prefect's own start does the same otherwise: the same
uvicorn command, the same database under PREFECT_HOME, the UI off.

Services a server discarded at the command's end need not run are off, unless the user set
them: the event persister (it writes every event to SQLite, the writes that made the API
answer 503 under load; task runs are still recorded by the task-run recorder) and
triggers/actions (automations: none on a temporary server).
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import suppress
from pathlib import Path
from typing import IO

from mattermost_connector.errors import ConnectorError

QUIET_SERVICES = {
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
}
PORT_IN_USE = 3  # uvicorn's exit code when it cannot bind
BOOT_NICENESS = 19


class TemporaryServer:
    """One uvicorn process serving Prefect's API on a free local port, until this exits."""

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._errors: IO[bytes] | None = None
        self.ready = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> TemporaryServer:
        self.port = _free_port()
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 - the server's, while it runs
        env = {
            **os.environ,
            **{k: v for k, v in QUIET_SERVICES.items() if k not in os.environ},
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        env.pop("PREFECT_API_URL", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", *_app_args(), "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._errors,
            preexec_fn=_yield_cpu,
        )
        atexit.register(self.stop)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Return once the API answers its health check; raise, with the server's own last
        words, if it exits or does not answer within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        if self.process is not None:
            _full_priority(self.process.pid)
        while not self.ready:
            assert self.process is not None, "start() first"
            code = self.process.poll()
            if code == PORT_IN_USE:  # taken between choosing it and binding: another one
                self.stop()
                self.start()
                continue
            if code is not None:
                raise RuntimeError(
                    f"the temporary Prefect server exited ({code}): {self._last_words()}"
                )
            if time.monotonic() > deadline:
                raise ConnectorError(
                    f"the temporary Prefect server did not answer within {timeout:g} s "
                    "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"
                )
            self.ready = _healthy(self.api_url)
            if not self.ready:
                time.sleep(0.1)

    def _last_words(self) -> str:
        if self._errors is None:
            return ""
        self._errors.seek(0)
        lines = self._errors.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if not self.ready:  # still booting: nothing of it is worth a clean stop
            process.kill()
            process.wait()
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _yield_cpu() -> None:
    """In the server's process before it starts: the lowest priority while it boots, so that
    a command that fails its checks fails as fast on a busy machine as without it."""
    os.nice(BOOT_NICENESS)


def _full_priority(pid: int) -> None:
    """The command's own priority back once the run needs the server (allowed as root, or
    within RLIMIT_NICE; otherwise it keeps the lower one, which costs only on a busy machine)."""
    with suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0))


def _app_args() -> list[str]:
    """uvicorn's arguments for Prefect's API app, found without importing Prefect."""
    import importlib.util

    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin, "prefect is not installed"
    return [
        "--app-dir",
        str(Path(spec.origin).parent.parent),
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _healthy(api_url: str) -> bool:
    with suppress(OSError), urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
        return response.status == 200
    return False


_server: TemporaryServer | None = None


def start_early() -> None:
    """Start the temporary server now, unless a Prefect API is configured (PREFECT_API_URL)
    or Prefect is already imported (its settings would not see the URL)."""
    global _server
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules or _server is not None:
        return
    try:
        _server = TemporaryServer().start()
    except (ImportError, AssertionError):  # Prefect not importable: the command says so later
        _server = None


def use_when_ready() -> None:
    """Before Prefect is imported: wait for the server started early, and point Prefect at
    it (PREFECT_API_URL, for this process and those it starts)."""
    if _server is None or _server.ready:
        return
    if "prefect" in sys.modules:  # too late for its settings to see the URL: Prefect's own
        discard()
        return
    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"))
    _server.wait_ready(timeout)
    os.environ["PREFECT_API_URL"] = _server.api_url


def discard() -> None:
    """The command ended before needing Prefect (bad configuration, a refused token)."""
    global _server
    if _server is not None and not _server.ready:
        _server.stop()
        _server = None
