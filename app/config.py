import os
import secrets
from pathlib import Path

import msgspec


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting of the service, read once from the environment (names upper-cased)."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str = "./var"
    admin_token: str | None = None
    clickhouse_url: str | None = None
    clickhouse_http_port: int = 8123
    clickhouse_tcp_port: int = 9000
    redis_url: str | None = None
    workers: int = 1
    # Per-connection queue of a live stream; a subscriber further behind than this is cut off.
    stream_queue_size: int = 1000

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        raw = {
            name: environ[name.upper()]
            for name in cls.__struct_fields__
            if environ.get(name.upper(), "") != ""
        }
        return msgspec.convert(raw, cls, strict=False)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()


def secret_file(path: Path) -> str:
    """A generated secret kept in a file only its owner can read; created on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first
            return path.read_text().strip()
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()
