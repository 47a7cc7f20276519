"""Opaque keyset cursors: the position a page ended at, as a URL-safe string the client hands back."""

import base64
import binascii
import hashlib
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import msgspec
from litestar import Request

from app.errors import invalid
from app.warehouse.client import EPOCH

Position = TypeVar("Position")


def encode_cursor(position: object) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(position)).decode().rstrip("=")


def decode_cursor(text: str, position_type: type[Position]) -> Position:
    """The position a cursor holds; a 422 for anything this API could not have returned, its instants included:
    all of them are events' times or moments of a listing, with an offset, from 1970 to now."""
    try:
        position = msgspec.json.decode(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), type=position_type)
    except (binascii.Error, ValueError, msgspec.DecodeError) as error:
        raise invalid("cursor", "not a cursor this API returned") from error
    fields = position if isinstance(position, tuple) else msgspec.structs.astuple(position)  # type: ignore[arg-type]
    latest = datetime.now(UTC) + timedelta(days=1)
    for value in fields:
        if isinstance(value, datetime) and (value.tzinfo is None or not EPOCH <= value <= latest):
            raise invalid("cursor", "not a cursor this API returned")
    return position


def listing_of(request: Request, order: str) -> str:
    """What a cursor continues: the route, the order and every filter, not the page's own `cursor` and `take`."""
    query = sorted((name, value) for name, values in request.query_params.dict().items()
                   if name not in ("cursor", "take", "order") for value in values)
    return hashlib.blake2b(msgspec.json.encode([request.url.path, order, query]), digest_size=8).hexdigest()
