"""The embedded ClickHouse server: chDB's clickhouse-local with its HTTP and TCP listeners started.

It runs as its own child process because chDB allows one server per process and stops it only with
the process (ARCHITECTURE.md). `python -m app.warehouse.embedded ETC_DIR DATA_DIR` is that child.
"""

import ctypes
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from string import Template

from app.config import secret_file

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parents[2] / "clickhouse_config" / "embedded"
# The listeners live only while one query runs, so the server is a query that never ends.
SERVE_SQL = (
    "SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
    "SELECT sleepEachRow(1) FROM system.numbers SETTINGS max_block_size = 1 FORMAT Null"
)
PR_SET_PDEATHSIG = 1
# Users beyond users.xml: a file each, which clickhouse-local reads only when it starts (it has no
# writable user directory and does not reload users). So the server exits with USERS_CHANGED when the
# folder changes, and its supervisor starts it again at once.
USERS_FOLDER = "users.d"
USERS_CHANGED = 75
# The folder's files as the running server listed them before it read them.
USERS_READ = "users.read.json"
# A server alive but not answering (its listeners stopped, which its password-less `default` user may do; or
# hung) is killed and started again once it has not answered for this long: long enough for any load it
# carries to let a `SELECT 1` through.
PROBE_SECONDS = 2.0
SILENT_RESTART_SECONDS = 20.0


def users_folder(data_dir: Path) -> Path:
    """Where the embedded server of a DATA_DIR takes the users it is given after its start."""
    return Path(data_dir).resolve() / "clickhouse" / "etc" / USERS_FOLDER


def write_user(folder: Path, user: str, password: str, database: str, grants: list[str]) -> None:
    """A user with a password, reachable from 127.0.0.1 only; written whole, so the server never reads half."""
    root = ET.Element("clickhouse")
    entry = ET.SubElement(ET.SubElement(root, "users"), user)
    ET.SubElement(entry, "password_sha256_hex").text = hashlib.sha256(password.encode()).hexdigest()
    networks = ET.SubElement(entry, "networks")
    for address in ("127.0.0.1", "::1"):
        ET.SubElement(networks, "ip").text = address
    ET.SubElement(entry, "profile").text = "default"
    ET.SubElement(entry, "quota").text = "default"
    ET.SubElement(entry, "default_database").text = database
    statements = ET.SubElement(entry, "grants")
    for grant in grants:
        ET.SubElement(statements, "query").text = grant
    _replace_file(folder / f"{user}.xml", ET.tostring(root))


def _replace_file(path: Path, content: bytes) -> None:
    """Written beside under a dot name (no `*.xml` a reader lists), readable by its owner only, then renamed
    into place: a reader sees the old file or the new one, never half."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    os.replace(temporary, path)


def remove_user(folder: Path, user: str) -> None:
    (folder / f"{user}.xml").unlink(missing_ok=True)


def serves_users_as_written(folder: Path) -> bool:
    """Whether the running server read the folder as it is now; if not, it is about to restart."""
    try:
        read = json.loads((folder.parent / USERS_READ).read_text())
    except FileNotFoundError:
        return False
    return read == [list(entry) for entry in _user_files(folder)]


class EmbeddedServerError(RuntimeError):
    pass


class EmbeddedServer:
    """Starts, supervises and stops the embedded server; data and generated passwords under `root`."""

    def __init__(self, data_dir: Path, http_port: int = 8123, tcp_port: int = 9000) -> None:
        self.root = Path(data_dir).resolve() / "clickhouse"
        self.etc_dir = self.root / "etc"
        self.data_dir = self.root / "data"
        self.users_folder = users_folder(data_dir)
        self.http_port = http_port
        self.tcp_port = tcp_port
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def password(self, user: str) -> str:
        return secret_file(self.root / f"{user}.password")

    @property
    def url(self) -> str:
        return f"http://admin:{self.password('admin')}@127.0.0.1:{self.http_port}/default"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout: float = 60.0) -> None:
        self._stopping.clear()
        self._launch(timeout)

    def _launch(self, timeout: float) -> None:
        for port in (self.http_port, self.tcp_port):
            if not _port_is_free(port):
                raise EmbeddedServerError(
                    f"port {port} on 127.0.0.1 is taken; set CLICKHOUSE_HTTP_PORT / CLICKHOUSE_TCP_PORT"
                )
        self._write_config()
        with self._lock, open(self.log_path, "ab") as log_file:
            if self._stopping.is_set():
                raise EmbeddedServerError("stopped while starting")
            process = self._process = subprocess.Popen(
                [sys.executable, "-m", "app.warehouse.embedded", str(self.etc_dir), str(self.data_dir)],
                cwd=self.etc_dir,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(TEMPLATES.parents[1])},
            )
        self._wait_until_ready(process, timeout)
        log.info("embedded ClickHouse listening on 127.0.0.1:%s (HTTP) and :%s (TCP), data in %s",
                 self.http_port, self.tcp_port, self.data_dir)

    def supervise(self) -> None:
        """Restart the server whenever it dies on its own, until stop()."""
        self._stopping.clear()
        self._watchdog = threading.Thread(target=self._watch, name="clickhouse-watchdog", daemon=True)
        self._watchdog.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        with self._lock:
            process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _watch(self) -> None:
        next_probe, silent_since = time.monotonic(), None
        while not self._stopping.wait(0.5):
            process = self._process
            if process is not None and process.poll() is not None:
                if process.returncode == USERS_CHANGED:
                    log.info("embedded ClickHouse restarting to read its users")
                else:
                    log.error("embedded ClickHouse exited with %s; restarting", process.returncode)
                try:
                    self._wait_for_ports_released()
                    self._launch(timeout=60.0)
                except EmbeddedServerError:
                    log.exception("embedded ClickHouse did not restart; retrying")
                next_probe, silent_since = time.monotonic() + PROBE_SECONDS, None
            elif process is not None and time.monotonic() >= next_probe:
                next_probe = time.monotonic() + PROBE_SECONDS
                if self._answers():
                    silent_since = None
                elif silent_since is None:
                    silent_since = time.monotonic()
                elif time.monotonic() - silent_since >= SILENT_RESTART_SECONDS:
                    log.error("embedded ClickHouse has not answered for %.0f s; restarting it", SILENT_RESTART_SECONDS)
                    process.kill()  # the next look starts it again

    def _wait_for_ports_released(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (_port_is_free(self.http_port) and _port_is_free(self.tcp_port)):
            time.sleep(0.1)

    def _write_config(self) -> None:
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.users_folder.mkdir(mode=0o700, exist_ok=True)
        values = {
            "http_port": self.http_port,
            "tcp_port": self.tcp_port,
            "etc_dir": self.etc_dir,
            "data_dir": self.data_dir,
            "admin_sha256": hashlib.sha256(self.password("admin").encode()).hexdigest(),
            "analyst_sha256": hashlib.sha256(self.password("analyst").encode()).hexdigest(),
        }
        for name in ("config.xml", "users.xml"):
            text = Template((TEMPLATES / name).read_text()).substitute(values)
            (self.etc_dir / name).write_text(text)

    def _wait_until_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping.is_set():
            if process.poll() is not None:
                raise EmbeddedServerError(f"embedded ClickHouse failed to start: {self._log_tail()}")
            if self._answers():
                return
            time.sleep(0.1)
        self.stop()
        raise EmbeddedServerError(f"embedded ClickHouse did not answer within {timeout:.0f}s: {self._log_tail()}")

    def _answers(self) -> bool:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/?query=SELECT%201",
            headers={"X-ClickHouse-User": "admin", "X-ClickHouse-Key": self.password("admin")},
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        tail = " | ".join(lines[-3:])
        if "Cannot lock file" in tail:
            return f"its data directory {self.data_dir} is in use by another server ({tail})"
        return tail


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _user_files(folder: Path) -> list[tuple[str, int]]:
    files = []
    for path in folder.glob("*.xml"):
        try:
            files.append((path.name, path.stat().st_mtime_ns))
        except FileNotFoundError:  # removed while listed: the next look sees the change
            continue
    return sorted(files)


def _exit_when_users_change(folder: Path, read: list[tuple[str, int]]) -> None:
    while _user_files(folder) == read:
        time.sleep(0.5)
    print("embedded ClickHouse: its users changed; exiting to be started again", file=sys.stderr, flush=True)
    os._exit(USERS_CHANGED)


def serve(etc_dir: str, data_dir: str) -> int:
    # Die with the parent: an orphaned server would keep the data directory locked.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    # Listed before the server reads them, so no change can fall between its reading and the first look.
    folder = Path(etc_dir) / USERS_FOLDER
    read = _user_files(folder)
    _replace_file(folder.parent / USERS_READ, json.dumps(read).encode())
    threading.Thread(target=_exit_when_users_change, args=(folder, read), daemon=True).start()
    # chDB opens a session when imported; it must not read this server's config (its users need the
    # in-process address), so it is imported from a neutral directory.
    os.chdir(tempfile.gettempdir())
    import chdb._chdb as chdb  # noqa: PLC0415

    os.chdir(etc_dir)
    try:
        chdb.query(SERVE_SQL, "TabSeparated", path=data_dir)
    except Exception as error:  # noqa: BLE001 - the message is all the parent needs
        print(f"embedded ClickHouse stopped: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], sys.argv[2]))
