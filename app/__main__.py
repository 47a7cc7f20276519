"""`python -m app`: the API (and the embedded ClickHouse server when CLICKHOUSE_URL is unset).
`python -m app clickhouse`: the embedded ClickHouse server alone, for data teams and their tools."""

import logging
import os
import signal
import sys
import threading

import uvicorn

from app.config import Settings
from app.warehouse.embedded import EmbeddedServer

log = logging.getLogger("app")


def embedded_server(settings: Settings) -> EmbeddedServer:
    return EmbeddedServer(settings.data_path, settings.clickhouse_http_port, settings.clickhouse_tcp_port)


def run_clickhouse(settings: Settings) -> int:
    server = embedded_server(settings)
    server.start()
    server.supervise()
    print(
        f"ClickHouse is up: HTTP http://127.0.0.1:{server.http_port}, native 127.0.0.1:{server.tcp_port}\n"
        f"  users: admin (password in {server.root / 'admin.password'}), "
        f"analyst, read-only (password in {server.root / 'analyst.password'})\n"
        f"  try: curl -u admin:$(cat {server.root / 'admin.password'}) "
        f"'http://127.0.0.1:{server.http_port}/?query=SHOW+TABLES'",
        flush=True,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


def run_api(settings: Settings) -> int:
    if settings.workers > 1 and not settings.redis_url:
        log.error("WORKERS=%s needs REDIS_URL: live events must reach every API process", settings.workers)
        return 2
    server = None
    if settings.workers > 1 and settings.clickhouse_url is None:
        # One embedded server for all workers, owned by this supervising process.
        server = embedded_server(settings)
        server.start()
        server.supervise()
        os.environ["CLICKHOUSE_URL"] = server.url
    print(f"API on http://{settings.host}:{settings.port}", flush=True)
    try:
        uvicorn.run(
            "app.main:create_app", factory=True, host=settings.host, port=settings.port,
            workers=settings.workers, log_level="info", access_log=False,
            # Live streams never end by themselves; without this a stop would wait on them forever.
            timeout_graceful_shutdown=5,
        )
    finally:
        if server is not None:
            server.stop()
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    if argv[1:2] == ["clickhouse"]:
        return run_clickhouse(settings)
    return run_api(settings)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
