"""Numbered SQL migrations from schema/, applied once, in order, even when several API processes start at once."""

import asyncio
import logging
import re
import time
from pathlib import Path

from clickhouse_connect.driver.asyncclient import AsyncClient
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schema"
MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# ClickHouse has no transactions: creating a table is the one atomic claim it offers, so the lock is a table.
# Its holder adds a row every HEARTBEAT_SECONDS while it migrates (a backfill of millions of events takes
# minutes); a lock without one for STALE_LOCK_SECONDS was left by a starter that died, and is broken.
LOCK_TABLE = "_migrations_lock"
HEARTBEAT_SECONDS = 5.0
STALE_LOCK_SECONDS = 60.0
DATABASE_PARAMETER = "{database:String}"


def migration_files(schema_dir: Path = SCHEMA_DIR) -> list[Path]:
    return sorted(path for path in schema_dir.iterdir() if MIGRATION_FILE.match(path.name))


def statements(sql: str) -> list[str]:
    """The statements of a migration file: separated by a `;` at the end of a line, comments dropped."""
    text = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in re.split(r";\s*$", text, flags=re.M) if statement.strip()]


async def migrate(client: AsyncClient, schema_dir: Path = SCHEMA_DIR, timeout: float | None = None) -> list[str]:
    """Apply the migrations not yet recorded in `_migrations`; return the names applied by this call. Another
    starter's migrations are waited for as long as they run, or `timeout` seconds."""
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
                await client.command(statement, parameters=_bound(statement, client.database))
            await client.insert("_migrations", [[path.name]], column_names=["name"])
            log.info("applied migration %s", path.name)
            applied.append(path.name)
        return applied


def _bound(statement: str, database: str) -> dict[str, str] | None:
    """A statement may name the migrated database as {database:String}: inside a mutation ClickHouse resolves
    no default database, so a table it reads there must be named in full."""
    return {"database": database} if DATABASE_PARAMETER in statement else None


class _lock:
    def __init__(self, client: AsyncClient, timeout: float | None) -> None:
        self.client = client
        self.timeout = timeout
        self.heartbeat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                # Created with its first beat: the table's own creation time is kept to the second only, so
                # without it a lock could look up to a second older than it is.
                await self.client.command(
                    f"CREATE TABLE {LOCK_TABLE} (beat DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = Memory "
                    "AS SELECT now64(3, 'UTC')")
                break
            except DatabaseError as error:
                if "TABLE_ALREADY_EXISTS" not in str(error) and "already exists" not in str(error):
                    raise
            await self._break_if_stale()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("another process holds the migration lock")
            await asyncio.sleep(0.2)
        self.heartbeat = asyncio.create_task(self._beat())

    async def __aexit__(self, *exc_info: object) -> None:
        if self.heartbeat is not None:
            self.heartbeat.cancel()
            await asyncio.gather(self.heartbeat, return_exceptions=True)
        await self.client.command(f"DROP TABLE IF EXISTS {LOCK_TABLE}")

    async def _beat(self) -> None:
        while True:
            try:
                await self.client.command(f"INSERT INTO {LOCK_TABLE} (beat) VALUES (now64(3))")
            except (DatabaseError, OperationalError):  # one missed beat; the next may land
                log.warning("the migration lock's heartbeat failed", exc_info=True)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _break_if_stale(self) -> None:
        """A starter that died while holding the lock must not block every later start."""
        try:
            silence = await self.client.query(
                f"SELECT dateDiff('millisecond', greatest(toDateTime64(metadata_modification_time, 3, 'UTC'), "
                f"(SELECT max(beat) FROM {LOCK_TABLE})), now64(3, 'UTC')) / 1000 "
                "FROM system.tables WHERE database = currentDatabase() AND name = {name:String}",
                parameters={"name": LOCK_TABLE},
            )
        except DatabaseError as error:
            if "UNKNOWN_TABLE" in str(error):  # released meanwhile
                return
            raise
        if silence.result_rows and silence.result_rows[0][0] > STALE_LOCK_SECONDS:
            log.warning("breaking a stale migration lock")
            await self.client.command(f"DROP TABLE IF EXISTS {LOCK_TABLE}")
