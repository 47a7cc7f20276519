"""An ingest body, decoded and checked against every field rule of the contract, all errors at once."""

import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
from litestar.exceptions import ClientException, HTTPException

from app.errors import field_in_message, without_location
from app.events.schemas import CostIn, EventIn, IngestEnvelope, IngestError, LlmIn

MAX_EVENTS = 10_000
MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_FUTURE = timedelta(minutes=5)
MAX_METADATA_KEYS = 50
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 3
MAX_KEY_LENGTH = 40
RESERVED_KEYS = {"_cost": CostIn, "_llm": LlmIn}
METADATA_DECODER = msgspec.json.Decoder(Any, float_hook=Decimal)
MAX_COST_FRACTION_DIGITS = 12


class PayloadTooLarge(HTTPException):
    status_code = 413


class BatchInvalid(HTTPException):
    status_code = 422

    @classmethod
    def listing(cls, errors: list[IngestError]) -> "BatchInvalid":
        """A 422 listing every error of the batch, none of which is stored."""
        return cls(detail=f"{len(errors)} invalid field(s); nothing of the batch was stored",
                   extra={"errors": [msgspec.to_builtins(error) for error in errors]})


@dataclass(slots=True)
class ValidEvent:
    index: int
    event: EventIn
    metadata: dict[str, Any]
    metadata_json: bytes
    cost: CostIn | None
    llm: LlmIn | None
    leaves: list[tuple[str, Any]] = field(default_factory=list)


def read_body(body: bytes, content_encoding: str | None) -> bytes:
    """The body as sent, decompressed when gzip; 413 past 10 MiB after decompression, 400 when broken."""
    if (content_encoding or "").strip().lower() not in {"gzip", "x-gzip"}:
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(detail="The body is over 10 MiB")
        return body
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, MAX_BODY_BYTES + 1)
    except zlib.error as error:
        raise ClientException(detail=f"The gzip body cannot be decompressed: {error}") from error
    if len(data) > MAX_BODY_BYTES or inflater.unconsumed_tail:
        raise PayloadTooLarge(detail="The body is over 10 MiB after decompression")
    if not inflater.eof:
        raise ClientException(detail="The gzip body is truncated")
    return data


def split_events(body: bytes, content_type: str) -> list[msgspec.Raw]:
    """The raw events of a JSON (`{"events": [...]}`) or NDJSON (one event per line) body."""
    media_type = content_type.split(";")[0].strip().lower()
    try:
        if media_type == "application/json":
            events = msgspec.json.decode(body, type=IngestEnvelope).events
        elif media_type in {"application/x-ndjson", "application/ndjson", "application/jsonl"}:
            events = [msgspec.Raw(line) for line in body.splitlines() if line.strip()]
            for raw in events:  # malformed JSON is a 400 wherever it is
                msgspec.json.decode(raw)
        else:
            raise HTTPException(status_code=415, detail="Send application/json or application/x-ndjson")
    except msgspec.ValidationError as error:
        raise BatchInvalid(detail="The body must be an object with an `events` array", extra={"errors": [
            {"index": -1, "field": "events", "message": str(error)}]}) from error
    except msgspec.DecodeError as error:
        raise ClientException(detail=f"Malformed JSON: {error}") from error
    if len(events) > MAX_EVENTS:
        raise PayloadTooLarge(detail=f"A batch holds at most {MAX_EVENTS} events")
    return events


def validate_events(raws: list[msgspec.Raw], received_at: datetime) -> list[ValidEvent]:
    """Every event checked; a 422 listing every error (index, field, message) when any is invalid."""
    errors: list[IngestError] = []
    valid: list[ValidEvent] = []
    decoder = msgspec.json.Decoder(EventIn)
    for index, raw in enumerate(raws):
        try:
            event = decoder.decode(raw)
        except msgspec.ValidationError as error:
            errors.append(_decode_error(index, str(error)))
            continue
        except msgspec.DecodeError as error:
            raise ClientException(detail=f"Malformed JSON in event {index}: {error}") from error
        metadata_json = bytes(event.metadata)
        # Decimals, not floats: a cost keeps all 12 of its fraction digits.
        metadata = METADATA_DECODER.decode(metadata_json)
        if metadata is None:
            metadata, metadata_json = {}, b"{}"
        leaves: list[tuple[str, Any]] = []
        event_errors = _event_errors(index, event, metadata, len(metadata_json), received_at, leaves)
        if event_errors:
            errors.extend(event_errors)
            continue
        valid.append(ValidEvent(
            index, event, metadata, metadata_json,
            msgspec.convert(metadata["_cost"], CostIn) if "_cost" in metadata else None,
            msgspec.convert(metadata["_llm"], LlmIn) if "_llm" in metadata else None,
            leaves,
        ))
    if errors:
        raise BatchInvalid.listing(errors)
    return valid


def _decode_error(index: int, message: str) -> IngestError:
    return IngestError(index, field_in_message(message) or "event", without_location(message))


def _event_errors(index: int, event: EventIn, metadata: Any, metadata_size: int, received_at: datetime,
                  leaves: list[tuple[str, Any]]) -> list[IngestError]:
    errors = []
    if (event.customer_id is None) == (event.external_customer_id is None):
        errors.append(IngestError(index, "customer_id", "exactly one of customer_id and external_customer_id is required"))
    if event.timestamp is not None and event.timestamp - received_at > MAX_FUTURE:
        errors.append(IngestError(index, "timestamp", "more than 5 minutes in the future"))
    if not isinstance(metadata, dict):
        errors.append(IngestError(index, "metadata", "must be an object"))
    elif metadata_size > MAX_METADATA_BYTES:
        errors.append(IngestError(index, "metadata", "over 16 KiB"))
    elif _check_object(index, metadata, "", 1, errors, leaves) > MAX_METADATA_KEYS:
        errors.append(IngestError(index, "metadata", f"at most {MAX_METADATA_KEYS} keys"))
    return errors


def _check_object(index: int, obj: dict[str, Any], prefix: str, depth: int, errors: list[IngestError],
                  leaves: list[tuple[str, Any]]) -> int:
    """Check the keys and values of one metadata object and those nested in it; collect its leaves (dotted
    path, value) on the way, so storing them needs no second walk; answer how many keys it holds.
    Plain recursion rather than generators: this runs for every key of every event."""
    keys = 0
    for key, value in obj.items():
        keys += 1
        path = prefix + key
        if depth == 1 and key in RESERVED_KEYS:
            errors.extend(_reserved_errors(index, key, value))
            if isinstance(value, dict):
                leaves.extend((f"{path}.{inner}", leaf) for inner, leaf in value.items() if not isinstance(leaf, dict))
            continue
        if not 1 <= len(key) <= MAX_KEY_LENGTH:
            errors.append(IngestError(index, f"metadata.{path}", f"keys are 1 to {MAX_KEY_LENGTH} characters"))
        elif key[0] == "_":
            errors.append(IngestError(index, f"metadata.{path}", "keys starting with _ are reserved (_cost and _llm aside)"))
        if isinstance(value, dict):
            if depth < MAX_METADATA_DEPTH:
                keys += _check_object(index, value, path + ".", depth + 1, errors, leaves)
            elif value:
                errors.append(IngestError(index, f"metadata.{path}", f"objects nest at most {MAX_METADATA_DEPTH} deep"))
        elif isinstance(value, list):
            errors.append(IngestError(index, f"metadata.{path}", "values are strings, numbers, booleans, null or objects"))
        else:
            leaves.append((path, value))
    return keys


def _reserved_errors(index: int, key: str, value: Any):
    try:
        reserved = msgspec.convert(value, RESERVED_KEYS[key])
    except msgspec.ValidationError as error:
        yield IngestError(index, f"metadata.{key}{_suffix(str(error))}", without_location(str(error)))
        return
    if isinstance(reserved, CostIn) and -reserved.amount.as_tuple().exponent > MAX_COST_FRACTION_DIGITS:
        yield IngestError(index, "metadata._cost.amount", "at most 12 fraction digits")


def _suffix(message: str) -> str:
    field = _decode_error(0, message).field
    return "" if field == "event" else f".{field}"
