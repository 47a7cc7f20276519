from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec

ExternalId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Email = Annotated[str, msgspec.Meta(max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]
Name = Annotated[str, msgspec.Meta(max_length=256)]


class CustomerCreate(msgspec.Struct, forbid_unknown_fields=True):
    external_id: ExternalId | None = None
    email: Email | None = None
    name: Name | None = None
    metadata: dict[str, Any] = {}


class CustomerPatch(msgspec.Struct, forbid_unknown_fields=True):
    external_id: ExternalId | None | msgspec.UnsetType = msgspec.UNSET
    email: Email | None | msgspec.UnsetType = msgspec.UNSET
    name: Name | None | msgspec.UnsetType = msgspec.UNSET
    metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class Customer(msgspec.Struct):
    id: UUID
    external_id: str | None
    email: str | None
    name: str | None
    metadata: dict[str, Any]
    created_at: datetime


class CustomerPage(msgspec.Struct):
    items: list[Customer]
    cursor: str | None
