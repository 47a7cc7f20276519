"""`make run` is `python -m app` in the venv: from nothing to a healthy API with its own ClickHouse server."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from app.warehouse.embedded import _port_is_free
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_healthy(port: int, process: subprocess.Popen, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            status, body = get_json(f"http://127.0.0.1:{port}/api/health")
            if status == 200:
                return body
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.3)
    raise AssertionError("the API never became healthy")


def test_python_m_app_starts_everything_and_stops_cleanly(tmp_path: Path) -> None:
    port, http_port, tcp_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"CLICKHOUSE_URL", "REDIS_URL", "ADMIN_TOKEN"}}
    env.update(PORT=str(port), DATA_DIR=str(tmp_path), CLICKHOUSE_HTTP_PORT=str(http_port), CLICKHOUSE_TCP_PORT=str(tcp_port))
    process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_healthy(port, process) == {"status": "ok", "clickhouse": "ok", "redis": "absent"}
        token_file = tmp_path / "admin_token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/workspaces", data=b'{"name": "first"}', method="POST",
            headers={"Authorization": f"Bearer {token_file.read_text().strip()}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
        assert_survives_a_clickhouse_crash(port, tmp_path)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert str(token_file) in output
    assert _port_is_free(http_port) and _port_is_free(tcp_port) and _port_is_free(port)
    children = subprocess.run(["pgrep", "-f", f"app.warehouse.embedded {tmp_path}"], capture_output=True)
    assert children.stdout == b""


def assert_survives_a_clickhouse_crash(port: int, data_dir: Path) -> None:
    """The API says so while its ClickHouse server is down, and brings it back."""
    found = subprocess.run(["pgrep", "-f", f"app.warehouse.embedded {data_dir}"], capture_output=True, text=True)
    os.kill(int(found.stdout.split()[0]), signal.SIGKILL)
    statuses = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            status, body = get_json(f"http://127.0.0.1:{port}/api/health")
        except (urllib.error.URLError, ConnectionError):
            status, body = 0, {}
        statuses.append(status)
        if status == 503:
            assert body["clickhouse"] == "unavailable"
        if 503 in statuses and status == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"no 503 then recovery: {statuses[-10:]}")


def test_several_workers_without_redis_refuse_to_start(tmp_path: Path) -> None:
    env = {**os.environ, "WORKERS": "2", "DATA_DIR": str(tmp_path), "PORT": str(free_port())}
    env.pop("REDIS_URL", None)
    result = subprocess.run([sys.executable, "-m", "app"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "needs REDIS_URL" in result.stderr
