"""Numbered SQL migrations from schema/, applied once, in order, even when several API processes start at once."""

import asyncio
import logging
import re
import time
import uuid
from pathlib import Path

from clickhouse_connect.driver.asyncclient import AsyncClient
from clickhouse_connect.driver.exceptions import DatabaseError

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schema"
MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# ClickHouse has no transactions: creating a table is the one atomic claim it offers, so the lock is a table.
LOCK_TABLE = "_migrations_lock"
STALE_LOCK_SECONDS = 300


def migration_files(schema_dir: Path = SCHEMA_DIR) -> list[Path]:
    return sorted(path for path in schema_dir.iterdir() if MIGRATION_FILE.match(path.name))


def statements(sql: str) -> list[str]:
    """The statements of a migration file: separated by a `;` at the end of a line, comments dropped."""
    text = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in re.split(r";\s*$", text, flags=re.M) if statement.strip()]


async def migrate(client: AsyncClient, schema_dir: Path = SCHEMA_DIR, timeout: float = 120.0) -> list[str]:
    """Apply the migrations not yet recorded in `_migrations`; return the names applied by this call."""
    await client.command(
        "CREATE TABLE IF NOT EXISTS _migrations (name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        "ENGINE = MergeTree ORDER BY name"
    )
    async with _lock(client, timeout):
        done = {row[0] for row in (await client.query("SELECT name FROM _migrations")).result_rows}
        applied = []
        for path in migration_files(schema_dir):
            if path.name in done:
                continue
            for statement in statements(path.read_text()):
                await client.command(statement)
            await client.insert("_migrations", [[path.name]], column_names=["name"])
            log.info("applied migration %s", path.name)
            applied.append(path.name)
        return applied


class _lock:
    def __init__(self, client: AsyncClient, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self.holder = uuid.uuid4().hex

    async def __aenter__(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                await self.client.command(f"CREATE TABLE {LOCK_TABLE} (holder String) ENGINE = Memory")
                return
            except DatabaseError as error:
                if "TABLE_ALREADY_EXISTS" not in str(error) and "already exists" not in str(error):
                    raise
            await self._break_if_stale()
            if time.monotonic() > deadline:
                raise TimeoutError("another process holds the migration lock")
            await asyncio.sleep(0.2)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.command(f"DROP TABLE IF EXISTS {LOCK_TABLE}")

    async def _break_if_stale(self) -> None:
        """A starter that died while holding the lock must not block every later start."""
        age = await self.client.query(
            "SELECT dateDiff('second', metadata_modification_time, now()) FROM system.tables "
            "WHERE database = currentDatabase() AND name = {name:String}",
            parameters={"name": LOCK_TABLE},
        )
        if age.result_rows and age.result_rows[0][0] > STALE_LOCK_SECONDS:
            log.warning("breaking a stale migration lock")
            await self.client.command(f"DROP TABLE IF EXISTS {LOCK_TABLE}")
