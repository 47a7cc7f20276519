"""Opaque keyset cursors: the position a page ended at, as a URL-safe string the client hands back."""

import base64
import binascii
from typing import TypeVar

import msgspec

from app.errors import invalid

Position = TypeVar("Position")


def encode_cursor(position: object) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(position)).decode().rstrip("=")


def decode_cursor(text: str, position_type: type[Position]) -> Position:
    try:
        return msgspec.json.decode(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), type=position_type)
    except (binascii.Error, ValueError, msgspec.DecodeError) as error:
        raise invalid("cursor", "not a cursor this API returned") from error
