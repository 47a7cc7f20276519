"""API processes under test: the real app under uvicorn, as `make run` and docker-compose run it."""

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import OPERATOR_TOKEN, free_port

REPO = Path(__file__).resolve().parents[1]


class ApiProcess:
    def __init__(self, clickhouse_url: str, redis_url: str | None, data_dir: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "CLICKHOUSE_URL"}}
        env.update(PORT=str(self.port), CLICKHOUSE_URL=clickhouse_url, ADMIN_TOKEN=OPERATOR_TOKEN,
                   DATA_DIR=str(data_dir), WORKERS=str(workers), **({"REDIS_URL": redis_url} if redis_url else {}))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app"], cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"API process exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        raise RuntimeError("API process never became healthy")

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown hook runs."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
