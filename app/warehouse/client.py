"""The one path to ClickHouse: clickhouse-connect's async HTTP client, for the embedded server and any other."""

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import clickhouse_connect
import msgspec
from clickhouse_connect.driver.asyncclient import AsyncClient
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from clickhouse_connect.driver.external import ExternalData

# Server-side settings every session of the API uses.
SESSION_SETTINGS = {
    # 200 means the rows are in a part on disk, not in a buffer.
    "async_insert": 0,
    "wait_end_of_query": 1,
    "date_time_input_format": "best_effort",
}


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)


def to_millisecond(moment: datetime) -> datetime:
    """The moment in UTC at the precision ClickHouse keeps (DateTime64(3)), so what is answered equals what is
    stored. Arithmetic rather than astimezone() and replace(): this runs for every event."""
    return EPOCH + (moment - EPOCH) // MILLISECOND * MILLISECOND


def stored_now() -> datetime:
    """Now at the store's precision: an answer made at once and the same row read later agree, and a window's
    edge is the same instant in Python and in SQL."""
    return to_millisecond(datetime.now(UTC))


async def connect(url: str, **settings: object) -> AsyncClient:
    parts = urlsplit(url)
    return await clickhouse_connect.get_async_client(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or (8443 if parts.scheme == "https" else 8123),
        username=unquote(parts.username or "default"),
        password=unquote(parts.password or ""),
        database=parts.path.strip("/") or "default",
        secure=parts.scheme == "https",
        settings={**SESSION_SETTINGS, **settings},
        autogenerate_session_id=False,
        tz_mode="aware",
        connect_timeout=5,
        send_receive_timeout=60,
    )


async def logs_in(url: str, user: str, password: str, database: str) -> bool:
    """Whether the server at `url` (no credentials in it) takes these credentials now."""
    parts = urlsplit(url)
    with_credentials = parts._replace(netloc=f"{quote(user)}:{quote(password, safe='')}@{parts.netloc}").geturl()
    try:
        client = await connect(with_database(with_credentials, database))
    except (DatabaseError, OperationalError):
        return False
    await client.close()
    return True


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return parts._replace(path=f"/{database}").geturl()


def column_tables(structure: str, **tables: Sequence[Sequence[Any]]) -> ExternalData:
    """Tables sent with a query as temporary tables `name(structure)`, each given as its columns: a set of
    thousands of keys does not fit in a bound parameter (ClickHouse's HTTP form fields are limited in size)."""
    external = ExternalData()
    for name, columns in tables.items():
        # One JSON document for the whole table, encoded in one call: a round looks up thousands of keys.
        external.add_file(file_name=name, data=msgspec.json.encode(columns), fmt="JSONCompactColumns",
                          structure=structure)
    return external


def string_sets(**sets: Iterable[str]) -> ExternalData:
    """Sets of strings as temporary tables `name(value String)`."""
    return column_tables("value String", **{name: [list(values)] for name, values in sets.items()})
