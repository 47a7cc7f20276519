import asyncio
import uuid
from pathlib import Path

import pytest

from app.warehouse import migrations
from app.warehouse.client import connect, with_database
from app.warehouse.migrations import LOCK_TABLE, migrate, migration_files, statements


def test_statements_split_on_line_ending_semicolons() -> None:
    sql = "-- a comment; with a semicolon\nCREATE TABLE a (x String DEFAULT ';') ENGINE = Memory;\n\nSELECT 1;\n"
    assert statements(sql) == ["CREATE TABLE a (x String DEFAULT ';') ENGINE = Memory", "SELECT 1"]


async def in_new_database(clickhouse_url: str, scenario):
    """`scenario(url)`, the URL of a database of its own, dropped afterwards."""
    database = f"migrations_{uuid.uuid4().hex[:8]}"
    admin = await connect(clickhouse_url)
    await admin.command(f"CREATE DATABASE {database}")
    try:
        return await scenario(with_database(clickhouse_url, database))
    finally:
        await admin.command(f"DROP DATABASE {database}")
        await admin.close()


def test_two_concurrent_starters_apply_each_migration_once(clickhouse_url: str) -> None:
    async def scenario(url: str) -> tuple[list[list[str]], list[tuple[str, int]]]:
        first, second = await connect(url), await connect(url)
        try:
            applied = await asyncio.gather(migrate(first), migrate(second))
            counts = (await first.query("SELECT name, count() FROM _migrations GROUP BY name ORDER BY name")).result_rows
            again = await migrate(first)
            return [*applied, again], counts
        finally:
            await first.close()
            await second.close()

    applied, counts = asyncio.run(in_new_database(clickhouse_url, scenario))
    names = [path.name for path in migration_files()]
    assert sorted(applied[0] + applied[1]) == names
    assert applied[2] == []
    assert counts == [(name, 1) for name in names]


def test_migration_files_are_numbered_uniquely() -> None:
    numbers = [path.name[:4] for path in migration_files()]
    assert len(numbers) == len(set(numbers)) and numbers == sorted(numbers)
    assert all(isinstance(path, Path) for path in migration_files())


def test_a_migration_outlasting_the_stale_time_keeps_its_lock(
    clickhouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three seconds of work against a lock called stale after one: only the heartbeat keeps it.
    monkeypatch.setattr(migrations, "STALE_LOCK_SECONDS", 1.0)
    monkeypatch.setattr(migrations, "HEARTBEAT_SECONDS", 0.2)
    (tmp_path / "0001_slow.sql").write_text(
        "CREATE TABLE slow (x UInt8) ENGINE = Memory;\n"
        "SELECT sleepEachRow(1) FROM numbers(3) SETTINGS max_block_size = 1 FORMAT Null;\n"
        "INSERT INTO slow VALUES (1);\n"
    )

    async def scenario(url: str):
        first, second = await connect(url), await connect(url)
        try:
            applied = await asyncio.gather(migrate(first, tmp_path), migrate(second, tmp_path))
            rows = (await first.query("SELECT count() FROM slow")).result_rows[0][0]
            return sorted(applied), rows
        finally:
            await first.close()
            await second.close()

    assert asyncio.run(in_new_database(clickhouse_url, scenario)) == ([[], ["0001_slow.sql"]], 1)


def test_a_lock_left_by_a_dead_starter_is_broken(
    clickhouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrations, "STALE_LOCK_SECONDS", 1.0)
    (tmp_path / "0001_one.sql").write_text("CREATE TABLE one (x UInt8) ENGINE = Memory;\n")

    async def scenario(url: str):
        client = await connect(url)
        try:
            # A lock with its heartbeat rows, and nobody beating any more.
            await client.command(f"CREATE TABLE {LOCK_TABLE} (beat DateTime64(3, 'UTC') DEFAULT now64(3)) "
                                 "ENGINE = Memory")
            await client.command(f"INSERT INTO {LOCK_TABLE} (beat) VALUES (now64(3))")
            return await migrate(client, tmp_path, timeout=30)
        finally:
            await client.close()

    assert asyncio.run(in_new_database(clickhouse_url, scenario)) == ["0001_one.sql"]
