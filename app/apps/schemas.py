"""Bodies and answers of the apps routes. The stats answers follow the source document's camelCase."""

from typing import Annotated, Any
from uuid import UUID

import msgspec

GIB = 1024**3

AppName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
# The pattern itself is checked by the service (with fullmatch, and refusing UUID-shaped slugs).
SlugText = Annotated[str, msgspec.Meta(min_length=1, max_length=63)]


class AppCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: AppName
    slug: SlugText


class App(msgspec.Struct):
    id: UUID
    slug: str
    name: str


class DatabaseCreate(msgspec.Struct, forbid_unknown_fields=True):
    quota_bytes: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)] = GIB


class DatabaseCredentials(msgspec.Struct):
    """Shown once: the password is not kept."""

    database: str
    username: str
    password: str
    http_url: str
    quota_bytes: int


class DayCount(msgspec.Struct):
    day: str
    count: int


class ApiStats(msgspec.Struct, rename="camel"):
    total_invocations: int
    invocations_7d: int = msgspec.field(name="invocations7d")
    invocations_30d: int = msgspec.field(name="invocations30d")
    avg_duration_ms: int
    error_count_30d: int = msgspec.field(name="errorCount30d")
    error_rate_30d: float = msgspec.field(name="errorRate30d")
    peak_memory_bytes: int
    total_compute_ms: int


class StorageStats(msgspec.Struct, rename="camel"):
    has_workspace: bool
    schema_size: int
    table_count: int
    quota_bytes: int | None
    quota_percent: float | None


class AppStats(msgspec.Struct, rename="camel"):
    app_id: UUID
    total_views: int
    unique_viewers: int
    views_7d: int = msgspec.field(name="views7d")
    views_30d: int = msgspec.field(name="views30d")
    last_viewed_at: str | None
    views_by_day: list[DayCount]
    api: ApiStats
    storage: StorageStats


class Column(msgspec.Struct, rename="camel"):
    name: str
    type: str
    nullable: bool
    primary_key: bool
    indexed: bool


class Table(msgspec.Struct, rename="camel"):
    name: str
    row_count: int
    size_bytes: int
    columns: list[Column]


class PreviewRequest(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 25
    offset: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0


class Field(msgspec.Struct):
    name: str
    type: str


class Preview(msgspec.Struct, rename="camel"):
    rows: list[dict[str, Any]]
    row_count: int
    total_rows: int
    fields: list[Field]


class Invocation(msgspec.Struct, rename="camel"):
    method: str | None
    path: str | None
    username: str | None
    started_at: str
    duration_ms: int | float | None
    status_code: int | None
    memory_peak_bytes: int | None
    error: str | None


class InvocationDay(msgspec.Struct, rename="camel"):
    day: str
    count: int
    avg_duration_ms: int
    error_count: int


class ApiHistory(msgspec.Struct):
    recent: list[Invocation]
    daily: list[InvocationDay]
