from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID

import msgspec

EventName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
ExternalRef = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
# At most 2^53 - 1, the largest integer a float (the `num` map, and JavaScript clients) holds exactly; larger
# ones would also overflow the typed UInt64 column or its sums.
TokenCount = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
Source = Literal["user", "system"]

# gc=False on the structs there is one of per ingested event: their fields are scalars (no container), so they
# never take part in a reference cycle, and the thousands alive during an ingest round then neither trigger
# nor lengthen garbage collections.


class CostIn(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    amount: Decimal
    currency: Literal["usd"]


class LlmIn(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    vendor: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    input_tokens: TokenCount
    output_tokens: TokenCount
    total_tokens: TokenCount
    cached_input_tokens: TokenCount | None = None


class ReservedMetadata(msgspec.Struct, frozen=True):
    """`_cost` and `_llm` of an event's metadata, decoded from its JSON so that a cost keeps every digit sent;
    the other keys are skipped."""

    cost: CostIn | msgspec.UnsetType = msgspec.field(default=msgspec.UNSET, name="_cost")
    llm: LlmIn | msgspec.UnsetType = msgspec.field(default=msgspec.UNSET, name="_llm")


class EventIn(msgspec.Struct, gc=False):
    """One event of an ingest batch as the producer sends it; unknown fields are ignored."""

    name: EventName
    timestamp: AwareDatetime | None = None
    customer_id: UUID | None = None
    external_customer_id: ExternalRef | None = None
    external_id: ExternalRef | None = None
    parent_id: ExternalRef | None = None
    metadata: msgspec.Raw = msgspec.Raw(b"{}")


class IngestEnvelope(msgspec.Struct):
    events: list[msgspec.Raw]


class IngestResult(msgspec.Struct):
    inserted: int
    duplicates: int


class IngestError(msgspec.Struct):
    index: int
    field: str
    message: str


class StoredEvent(msgspec.Struct, gc=False):
    id: UUID
    name: str
    timestamp: datetime
    ingested_at: datetime
    source: Source
    customer_id: UUID | None
    external_customer_id: str | None
    external_id: str | None
    parent_id: UUID | None
    root_id: UUID
    depth: int
    metadata: msgspec.Raw
    child_count: int | msgspec.UnsetType = msgspec.UNSET


class EventPage(msgspec.Struct):
    items: list[StoredEvent]
    cursor: str | None


class EventType(msgspec.Struct):
    id: UUID
    name: str
    label: str
    source: Source
    occurrences: int
    first_seen: datetime
    last_seen: datetime


class EventTypePatch(msgspec.Struct, forbid_unknown_fields=True):
    label: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
