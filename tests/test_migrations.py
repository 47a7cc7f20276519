import asyncio
import uuid
from pathlib import Path

from app.warehouse.client import connect, with_database
from app.warehouse.migrations import migrate, migration_files, statements


def test_statements_split_on_line_ending_semicolons() -> None:
    sql = "-- a comment; with a semicolon\nCREATE TABLE a (x String DEFAULT ';') ENGINE = Memory;\n\nSELECT 1;\n"
    assert statements(sql) == ["CREATE TABLE a (x String DEFAULT ';') ENGINE = Memory", "SELECT 1"]


def test_two_concurrent_starters_apply_each_migration_once(clickhouse_url: str) -> None:
    database = f"migrations_{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[list[list[str]], list[tuple[str, int]]]:
        admin = await connect(clickhouse_url)
        await admin.command(f"CREATE DATABASE {database}")
        first = await connect(with_database(clickhouse_url, database))
        second = await connect(with_database(clickhouse_url, database))
        applied = await asyncio.gather(migrate(first), migrate(second))
        counts = (await first.query("SELECT name, count() FROM _migrations GROUP BY name ORDER BY name")).result_rows
        again = await migrate(first)
        await admin.command(f"DROP DATABASE {database}")
        for client in (admin, first, second):
            await client.close()
        return [*applied, again], counts

    applied, counts = asyncio.run(scenario())
    names = [path.name for path in migration_files()]
    assert sorted(applied[0] + applied[1]) == names
    assert applied[2] == []
    assert counts == [(name, 1) for name in names]


def test_migration_files_are_numbered_uniquely() -> None:
    numbers = [path.name[:4] for path in migration_files()]
    assert len(numbers) == len(set(numbers)) and numbers == sorted(numbers)
    assert all(isinstance(path, Path) for path in migration_files())
