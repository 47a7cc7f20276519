from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec


class UsageRecord(msgspec.Struct, rename="camel"):
    """An event seen as an immutable usage record; camelCase like the source document."""

    id: UUID
    type: str
    count: int | float
    conversation_id: str | None
    message_id: str | None
    task_id: str | None
    contact_id: str | None
    blueprint_id: str | None
    bot_id: str | None
    dataset_id: str | None
    skillset_id: str | None
    ability_id: str | None
    meta: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class UsageRecordPage(msgspec.Struct):
    items: list[UsageRecord]
    cursor: str | None


class UsageSeries(msgspec.Struct):
    """Three parallel daily series: [midnight UTC in Unix ms, value]."""

    tokens: list[tuple[int, int]]
    conversations: list[tuple[int, int]]
    messages: list[tuple[int, int]]


class UsageSnapshot(msgspec.Struct):
    """The current UTC calendar month, [start, end)."""

    start: datetime
    end: datetime
    tokens: int
    conversations: int
    messages: int
