"""Every error as JSON {"status_code", "detail", "extra"} (an ingest 422 adds the contract's "errors"); nothing
internal (trace, SQL, names) reaches a client."""

import logging
import re
import uuid

import aiohttp
from clickhouse_connect.driver.exceptions import OperationalError
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_422_UNPROCESSABLE_ENTITY, HTTP_500_INTERNAL_SERVER_ERROR

log = logging.getLogger("app.errors")

RETRY_AFTER_SECONDS = "1"
FIELD_IN_MESSAGE = re.compile(r" - at `\$\.?([^`]*)`$")
# A message about one field of an object: missing, or not one the object has.
NAMED_FIELD = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")


class StoreUnavailable(HTTPException):
    """ClickHouse (or what stands for it) cannot be reached: the client may retry."""

    status_code = 503
    detail = "The event store is unavailable; retry shortly"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail=detail or self.detail, headers={"Retry-After": RETRY_AFTER_SECONDS})


def invalid(field: str, message: str) -> ValidationException:
    """A 422 naming the field and the reason."""
    return ValidationException(detail=f"Invalid {field}: {message}", extra=[{"field": field, "message": message}])


def error_response(
    status_code: int, detail: str, extra: object = None, headers: dict[str, str] | None = None, **fields: object
) -> Response:
    """The error body every route shares; `fields` are what a route's contract adds to it."""
    return Response(
        {"status_code": status_code, "detail": detail, "extra": extra, **fields},
        status_code=status_code,
        media_type=MediaType.JSON,
        headers=headers,
    )


def http_exception(_: Request, exc: HTTPException) -> Response:
    return error_response(exc.status_code, exc.detail, exc.extra or None, exc.headers)


def validation_exception(_: Request, exc: ValidationException) -> Response:
    # Litestar reports an undecodable body as a ValidationException; that is a malformed request (400),
    # while a value that decodes but breaks a rule is unprocessable (422).
    if exc.status_code == 400 and not exc.extra and "decod" in exc.detail.lower():
        return error_response(400, "Malformed JSON body")
    # No body where one is required: Litestar reports its missing `data` argument, as a KeyError's text.
    if isinstance(exc.extra, list) and {"key": "data", "message": "'data'", "source": "body"} in exc.extra:
        return error_response(400, "A JSON body is required")
    return error_response(HTTP_422_UNPROCESSABLE_ENTITY, exc.detail, _plain_extra(exc.extra))


def store_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("store unavailable on %s %s: %s", request.method, request.url.path, exc)
    return http_exception(request, StoreUnavailable())


def unexpected_exception(request: Request, exc: Exception) -> Response:
    request_id = uuid.uuid4().hex
    log.exception("request %s failed: %s %s", request_id, request.method, request.url.path, exc_info=exc)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, "Internal Server Error", {"request_id": request_id})


def nested_too_deeply(request: Request, exc: RecursionError) -> Response:
    # msgspec decodes nested JSON by recursion: a body nested past Python's limit is malformed; any other
    # RecursionError is a fault of ours.
    if "deserializing" in str(exc):
        return error_response(400, "Malformed JSON body: nested too deeply")
    return unexpected_exception(request, exc)


def field_in_message(message: str) -> str | None:
    """The field a msgspec validation message is about (`... - at `$.a.b``, `missing required field `x``)."""
    located = FIELD_IN_MESSAGE.search(message)
    return field_at(located.group(1) if located else "", message)


def field_at(location: str, message: str) -> str | None:
    """The field at `location` (a dotted path, "" for the top) a message is about, or the one inside it that it
    names (a missing or an unknown field)."""
    named = NAMED_FIELD.search(message)
    if named:
        return f"{location}.{named.group(1)}" if location else named.group(1)
    return location or None


def without_location(message: str) -> str:
    return FIELD_IN_MESSAGE.sub("", message)


def _plain_extra(extra: object) -> object:
    """Litestar's validation details as {field, message}: the body field named, not just `data`."""
    if not isinstance(extra, list):
        return extra
    plain = []
    for item in extra:
        if not isinstance(item, dict):
            plain.append(item)
            continue
        message = str(item.get("message", ""))
        field = item.get("field", item.get("key"))
        if item.get("source") == "body":
            # Litestar moves the message's location into `key`, "data" when it is the body itself.
            field = field_at("" if field == "data" else str(field), message) or "body"
        plain.append({"field": field, "message": without_location(message)})
    return plain


EXCEPTION_HANDLERS = {
    ValidationException: validation_exception,
    HTTPException: http_exception,
    OperationalError: store_unavailable,
    aiohttp.ClientConnectionError: store_unavailable,
    TimeoutError: store_unavailable,
    RecursionError: nested_too_deeply,
    Exception: unexpected_exception,
}
