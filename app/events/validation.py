"""An ingest body, decoded and checked against every field rule of the contract, all errors at once."""

import sys
import zlib
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import ClientException, HTTPException

from app.errors import error_response, field_in_message, without_location
from app.events.schemas import CostIn, EventIn, IngestEnvelope, IngestError, LlmIn, ReservedMetadata
from app.warehouse.client import EPOCH

MAX_EVENTS = 10_000
MAX_BODY_BYTES = 10 * 1024 * 1024
# Enough for a member per event; each member costs a decompressor.
MAX_GZIP_MEMBERS = 10_000
GZIP_CHUNK_BYTES = 64 * 1024
GZIP_MAGIC = b"\x1f\x8b"
MAX_FUTURE = timedelta(minutes=5)
# The rollups' buckets are DateTime (from 1970): an earlier event would count in 1970's first bucket.
EARLIEST_TIMESTAMP = EPOCH
MAX_METADATA_KEYS = 50
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 3
MAX_KEY_LENGTH = 40
# Numbers are stored as 64-bit floats: past this one, only as infinity.
MAX_NUMBER = sys.float_info.max
RESERVED_KEYS = {"_cost": CostIn, "_llm": LlmIn}
METADATA_DECODER = msgspec.json.Decoder(Any)
# Decimals, not floats: a cost keeps all 12 of its fraction digits. For metadata whose reserved part fails
# (or that holds a number past float range), so the walk reports exactly what is wrong.
EXACT_METADATA_DECODER = msgspec.json.Decoder(Any, float_hook=Decimal)
RESERVED_DECODER = msgspec.json.Decoder(ReservedMetadata)
NO_RESERVED = ReservedMetadata()
MAX_COST_FRACTION_DIGITS = 12
# cost_amount is a Decimal128(12): 38 digits, 12 of them after the point.
COST_AMOUNT_LIMIT = Decimal(10) ** (38 - MAX_COST_FRACTION_DIGITS)


class PayloadTooLarge(HTTPException):
    status_code = 413


class BatchInvalid(HTTPException):
    """A 422 listing every error of the batch, none of which is stored."""

    status_code = 422

    def __init__(self, errors: list[IngestError], detail: str | None = None) -> None:
        super().__init__(detail=detail or f"{len(errors)} invalid field(s); nothing of the batch was stored")
        self.errors = errors


def batch_invalid(_: Request, exc: BatchInvalid) -> Response:
    """The errors where CONTRACT.md section 2 puts them, `{"errors": [{"index", "field", "message"}]}`, and where
    producers written against earlier versions read them, `extra.errors`."""
    errors = msgspec.to_builtins(exc.errors)
    return error_response(exc.status_code, exc.detail, {"errors": errors}, errors=errors)


class ValidEvent(msgspec.Struct, gc=False):
    """An event that passed every rule, with its metadata leaves split by type as the `num`, `str` and `bool`
    columns store them. Untracked by the garbage collector: it holds no reference cycle, and thousands of
    them wait for each round."""

    index: int
    event: EventIn
    metadata_json: bytes
    cost: CostIn | None
    llm: LlmIn | None
    numbers: dict[str, float]
    strings: dict[str, str]
    booleans: dict[str, bool]


def read_body(body: bytes, content_encoding: str | None) -> bytes:
    """The body as sent, decompressed when gzip; 413 past 10 MiB after decompression, 400 when broken, 415 in
    an encoding other than gzip (read as it is, it would only be malformed JSON)."""
    encoding = (content_encoding or "").strip().lower()
    if encoding not in {"", "identity", "gzip", "x-gzip"}:
        raise HTTPException(status_code=415, detail="Send the body as it is or with Content-Encoding: gzip")
    if encoding not in {"gzip", "x-gzip"}:
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(detail="The body is over 10 MiB")
        return body
    return _gunzip(body)


def _gunzip(body: bytes) -> bytes:
    """Every member of a gzip body, one after another as RFC 1952 allows (what `gzip` writes when appending):
    a body of several is all of them, not the first; zero bytes after the last are padding, as `gzip` reads
    them. Fed in chunks, since each member's decompressor copies all the input left after it. An empty body
    is empty, as it is sent without gzip."""
    data, view, start = bytearray(), memoryview(body), 0
    for _ in range(MAX_GZIP_MEMBERS):
        if start == len(body) or body[start] == 0 and body.count(0, start) == len(body) - start:
            return bytes(data)
        if body[start:start + 2] != GZIP_MAGIC:
            raise ClientException(detail="The gzip body has data after its last member")
        inflater, at = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), start
        while not inflater.eof and at < len(body):
            chunk = view[at:at + GZIP_CHUNK_BYTES]
            at += len(chunk)
            try:
                data += inflater.decompress(chunk, MAX_BODY_BYTES + 1 - len(data))
            except zlib.error as error:
                raise ClientException(detail=f"The gzip body cannot be decompressed: {error}") from error
            if len(data) > MAX_BODY_BYTES or inflater.unconsumed_tail:
                raise PayloadTooLarge(detail="The body is over 10 MiB after decompression")
        if not inflater.eof:
            raise ClientException(detail="The gzip body is truncated")
        start = at - len(inflater.unused_data)
    raise ClientException(detail=f"A gzip body holds at most {MAX_GZIP_MEMBERS} members")


def split_events(body: bytes, content_type: str) -> list[msgspec.Raw]:
    """The raw events of a JSON (`{"events": [...]}`) or NDJSON (one event per line) body."""
    media_type = content_type.split(";")[0].strip().lower()
    try:
        if media_type == "application/json":
            events = msgspec.json.decode(body, type=IngestEnvelope).events
        elif media_type in {"application/x-ndjson", "application/ndjson", "application/jsonl"}:
            events = [msgspec.Raw(line) for line in body.splitlines() if line.strip()]
            for raw in events:  # malformed JSON is a 400 wherever it is
                _check_well_formed(raw)
        else:
            raise HTTPException(status_code=415, detail="Send application/json or application/x-ndjson")
    except msgspec.ValidationError as error:
        raise BatchInvalid([IngestError(-1, "events", str(error))],
                           "The body must be an object with an `events` array") from error
    except msgspec.DecodeError as error:
        raise ClientException(detail=f"Malformed JSON: {error}") from error
    if len(events) > MAX_EVENTS:
        raise PayloadTooLarge(detail=f"A batch holds at most {MAX_EVENTS} events")
    return events


def _check_well_formed(raw: msgspec.Raw) -> None:
    """A DecodeError for malformed JSON; JSON that is well formed but holds a value Python cannot (an integer
    of more digits than it reads) passes, for validate_events to say which field."""
    try:
        msgspec.json.decode(raw)
    except msgspec.ValidationError:
        pass


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
        try:
            metadata, reserved = _decode_metadata(metadata_json)
        except msgspec.ValidationError as error:  # an integer of more digits than Python reads (4,300)
            errors.append(IngestError(index, "metadata", without_location(str(error))))
            continue
        if metadata is None:
            metadata, metadata_json = {}, b"{}"
        checked = ValidEvent(index, event, metadata_json, None, None, {}, {}, {})
        event_errors = _event_errors(checked, metadata, reserved, received_at)
        if event_errors:
            errors.extend(event_errors)
            continue
        checked.cost, checked.llm = _reserved_values(metadata, reserved)
        valid.append(checked)
    if errors:
        raise BatchInvalid(errors)
    return valid


def _decode_metadata(metadata_json: bytes) -> tuple[Any, ReservedMetadata | None]:
    """The metadata with float numbers (the `num` map is Float64), and its `_cost` and `_llm` decoded exactly
    by one more pass over the JSON. When that fails, no reserved part and the metadata in Decimals: the walk
    then checks `_cost` and `_llm` itself, and says exactly what is wrong."""
    try:
        metadata = METADATA_DECODER.decode(metadata_json)
        if type(metadata) is not dict or ("_cost" not in metadata and "_llm" not in metadata):
            return metadata, NO_RESERVED
        reserved = RESERVED_DECODER.decode(metadata_json)
        if reserved.cost is msgspec.UNSET or _cost_amount_error(reserved.cost.amount) is None:
            return metadata, reserved
    except msgspec.ValidationError:  # a reserved part breaking a rule, or a number past float range
        pass
    return EXACT_METADATA_DECODER.decode(metadata_json), None


def _reserved_values(metadata: dict[str, Any], reserved: ReservedMetadata | None) -> tuple[CostIn | None, LlmIn | None]:
    """`_cost` and `_llm` of a valid event: decoded already, or else converted from its exact metadata."""
    if reserved is None:
        cost, llm = (msgspec.convert(metadata[key], kind) if key in metadata else None
                     for key, kind in RESERVED_KEYS.items())
        return cost, llm
    return (None if reserved.cost is msgspec.UNSET else reserved.cost,
            None if reserved.llm is msgspec.UNSET else reserved.llm)


def _decode_error(index: int, message: str) -> IngestError:
    return IngestError(index, field_in_message(message) or "event", without_location(message))


def _event_errors(checked: ValidEvent, metadata: Any, reserved: ReservedMetadata | None,
                  received_at: datetime) -> list[IngestError]:
    index, event = checked.index, checked.event
    errors = []
    if (event.customer_id is None) == (event.external_customer_id is None):
        errors.append(IngestError(index, "customer_id", "exactly one of customer_id and external_customer_id is required"))
    if event.timestamp is not None and event.timestamp - received_at > MAX_FUTURE:
        errors.append(IngestError(index, "timestamp", "more than 5 minutes in the future"))
    if event.timestamp is not None and event.timestamp < EARLIEST_TIMESTAMP:
        errors.append(IngestError(index, "timestamp", "before 1970-01-01T00:00:00Z"))
    if not isinstance(metadata, dict):
        errors.append(IngestError(index, "metadata", "must be an object"))
    elif len(checked.metadata_json) > MAX_METADATA_BYTES:
        errors.append(IngestError(index, "metadata", "over 16 KiB"))
    elif _check_object(checked, metadata, "", 1, reserved, errors) > MAX_METADATA_KEYS:
        errors.append(IngestError(index, "metadata", f"at most {MAX_METADATA_KEYS} keys"))
    return errors


def _check_object(checked: ValidEvent, obj: dict[str, Any], prefix: str, depth: int,
                  reserved: ReservedMetadata | None, errors: list[IngestError]) -> int:
    """Check the keys and values of one metadata object and those nested in it; store its leaves by dotted
    path on the way, so storing them needs no second walk; answer how many keys it holds.
    Plain recursion and type identity rather than generators and isinstance: this runs for every key of
    every event."""
    index, numbers, strings, booleans = checked.index, checked.numbers, checked.strings, checked.booleans
    keys = len(obj)
    for key, value in obj.items():
        path = prefix + key
        if not 0 < len(key) <= MAX_KEY_LENGTH or key[0] == "_":
            if depth == 1 and key in RESERVED_KEYS:
                # Checked already when decoded; its own keys do not count towards the limit.
                if reserved is None and (reserved_errors := list(_reserved_errors(index, key, value))):
                    errors.extend(reserved_errors)
                else:
                    _store_flat_leaves(checked, value, key + ".")
                continue
            errors.append(_key_error(index, key, path))
        kind = type(value)
        if kind is str:
            strings[path] = value
        elif kind is float:
            numbers[path] = value
        elif kind is int or kind is Decimal:
            if -MAX_NUMBER <= value <= MAX_NUMBER:
                numbers[path] = float(value)
            else:
                errors.append(IngestError(index, f"metadata.{path}", f"numbers are at most {MAX_NUMBER} in magnitude"))
        elif kind is bool:
            booleans[path] = value
        elif kind is dict:
            if depth < MAX_METADATA_DEPTH:
                keys += _check_object(checked, value, path + ".", depth + 1, reserved, errors)
            elif value:
                errors.append(IngestError(index, f"metadata.{path}", f"objects nest at most {MAX_METADATA_DEPTH} deep"))
        elif kind is list:
            errors.append(IngestError(index, f"metadata.{path}", "values are strings, numbers, booleans, null or objects"))
    return keys


def _key_error(index: int, key: str, path: str) -> IngestError:
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        return IngestError(index, f"metadata.{path}", f"keys are 1 to {MAX_KEY_LENGTH} characters")
    return IngestError(index, f"metadata.{path}", "keys starting with _ are reserved (_cost and _llm aside)")


def _store_flat_leaves(checked: ValidEvent, obj: dict[str, Any], prefix: str) -> None:
    """The leaves of an object of known scalar fields, which need no check: a valid `_cost` or `_llm`.
    The same dispatch as in _check_object, which keeps it inline: a call per key would cost a fifth of the walk."""
    numbers, strings, booleans = checked.numbers, checked.strings, checked.booleans
    for key, value in obj.items():
        kind = type(value)
        if kind is str:
            strings[prefix + key] = value
        elif kind is float:
            numbers[prefix + key] = value
        elif kind is int or kind is Decimal:
            numbers[prefix + key] = float(value)
        elif kind is bool:
            booleans[prefix + key] = value


def _reserved_errors(index: int, key: str, value: Any):
    try:
        reserved = msgspec.convert(value, RESERVED_KEYS[key])
    except msgspec.ValidationError as error:
        yield IngestError(index, f"metadata.{key}{_suffix(str(error))}", without_location(str(error)))
        return
    if isinstance(reserved, CostIn) and (message := _cost_amount_error(reserved.amount)) is not None:
        yield IngestError(index, "metadata._cost.amount", message)


def _cost_amount_error(amount: Decimal) -> str | None:
    if not amount.is_finite():
        return "must be a finite number"
    if -amount.as_tuple().exponent > MAX_COST_FRACTION_DIGITS:
        return f"at most {MAX_COST_FRACTION_DIGITS} fraction digits"
    if abs(amount) >= COST_AMOUNT_LIMIT:
        return f"must be less than 1e{38 - MAX_COST_FRACTION_DIGITS} in magnitude"
    return None


def _suffix(message: str) -> str:
    field = _decode_error(0, message).field
    return "" if field == "event" else f".{field}"
