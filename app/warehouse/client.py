"""The one path to ClickHouse: clickhouse-connect's async HTTP client, for the embedded server and any other."""

from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.asyncclient import AsyncClient

# Server-side settings every session of the API uses.
SESSION_SETTINGS = {
    # 200 means the rows are in a part on disk, not in a buffer.
    "async_insert": 0,
    "wait_end_of_query": 1,
    "date_time_input_format": "best_effort",
}


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


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return parts._replace(path=f"/{database}").geturl()
