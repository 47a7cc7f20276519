"""Storing events exactly once, and reading them back."""

import asyncio
import logging
import os
import re
import uuid
from dataclasses import dataclass
from itertools import chain
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
from clickhouse_connect.driver.asyncclient import AsyncClient
from clickhouse_connect.driver.exceptions import OperationalError

from app.customers.numbers import CustomerNumbers
from app.customers.queries import customers_by_reference
from app.customers.service import customer_key
from app.errors import StoreUnavailable, invalid
from app.events import queries
from app.events.claims import LocalClaims, RedisClaims
from app.events.numbers import SHARE_KEY, SHARE_NUMBERING, DenseNumbers
from app.events.queries import EVENT_COLUMNS, EVENT_INSERT_TYPES, EventFilter
from app.events.schemas import EventIn, IngestError, IngestResult, StoredEvent
from app.events.validation import EARLIEST_TIMESTAMP, BatchInvalid, ValidEvent
from app.events.writes import LocalWrites, RedisWrites
from app.events.coalescer import Coalescer
from app.pagination import decode_cursor
from app.stream.broker import Broker
from app.warehouse.client import EPOCH, MILLISECOND, to_millisecond

log = logging.getLogger(__name__)

METADATA_PARAMETER = re.compile(r"meta(\[[^\[\]]+\])+")
METADATA_SEGMENT = re.compile(r"\[([^\[\]]+)\]")
MAX_EVENTS_PER_ROUND = 100_000
# events.depth is a UInt16.
MAX_DEPTH = 65_535
# Each binds a few query parameters, and ClickHouse's HTTP interface takes at most 1,000 form fields.
MAX_METADATA_FILTERS = 50
# Under load, at most about four inserts a second (bench/ingest.py, 10-event batches from 64 producers: 0.7k
# events/s with no pause, 1.3k with this one; 1,000-event batches are unchanged).
MIN_ROUND_SECONDS = 0.25
EVENT_TYPE_NAMESPACE = uuid.UUID("8f2d7f0e-5d0c-4c57-9a3e-0b5c2b1f7a11")
# Byte maps that set the version (4) and variant (RFC 4122) bits of random UUID bytes.
UUID_VERSION_4 = bytes(byte & 0x0F | 0x40 for byte in range(256))
UUID_VARIANT = bytes(byte & 0x3F | 0x80 for byte in range(256))
# The insert sends columns as EVENT_INSERT_TYPES says, for ClickHouse to convert (its default, made explicit);
# views check their own blocks against the insert's token, so a retry fills in what a failure left out.
INSERT_SETTINGS = {"input_format_native_allow_types_conversion": 1,
                   "deduplicate_blocks_in_dependent_materialized_views": 1}
# How long a round sends its rows again after ClickHouse answered with an error, and after it could not be
# reached (or the connection broke). An insert cut off by a crash may have reached some tables and not others,
# and only the same rows sent again under the same token complete it: once a round gives up, the producer's
# retry finds its keys stored and skips them, so a table that missed them misses them for good. The embedded
# server is back within 2 s of a crash and restarted after 20 s of silence; a server restarted by its
# supervisor (docker-compose's restart policy) takes longer.
INSERT_RETRY_SECONDS = 10.0
UNREACHABLE_RETRY_SECONDS = 60.0
INSERT_RETRY_PAUSE_SECONDS = 0.5


def event_type_id(workspace_id: UUID, name: str) -> UUID:
    return uuid.uuid5(EVENT_TYPE_NAMESPACE, f"{workspace_id}:{name}")


def random_ids(count: int) -> list[UUID]:
    """Random (version 4) UUIDs from one read of the OS's random source, built by msgspec: uuid4() reads it
    once per id and builds each UUID in Python, a sizeable share of the cost of an event."""
    data = bytearray(os.urandom(16 * count))
    data[6::16] = data[6::16].translate(UUID_VERSION_4)
    data[8::16] = data[8::16].translate(UUID_VARIANT)
    raw = bytes(data)
    return msgspec.convert([raw[start:start + 16] for start in range(0, len(raw), 16)], list[UUID])


class Placed(msgspec.Struct, gc=False):
    """Where an event sits in its tree (untracked by the garbage collector, like StoredEvent)."""

    id: UUID
    root_id: UUID
    depth: int
    parent_id: UUID | None


@dataclass(slots=True)
class IngestJob:
    """One request's events, waiting for the next round of the pipeline; its claims are held meanwhile."""

    workspace_id: UUID
    events: list[ValidEvent]
    received_at: datetime
    source: str
    # Known up front for system events; resolved in the round for producers' events.
    identities: dict[int, tuple] | None = None


@dataclass(slots=True)
class Prepared:
    job: IngestJob
    stored: list[StoredEvent]
    columns: list[list[Any]]  # the events table's, in EVENT_COLUMNS order
    duplicates: int


class EventStore:
    """The ingest pipeline of one API process: claims, coalesced lookups and inserts, and publishing."""

    def __init__(self, client: AsyncClient, claims: LocalClaims | RedisClaims, writes: LocalWrites | RedisWrites,
                 broker: Broker) -> None:
        self.client = client
        self.claims = claims
        self.writes = writes
        self.numbers = CustomerNumbers(client, claims)
        self.share_numbers = DenseNumbers(client, claims, SHARE_NUMBERING)
        self.broker = broker
        self.pipeline: Coalescer[IngestJob, IngestResult] = Coalescer(
            self._process, lambda job: len(job.events), MAX_EVENTS_PER_ROUND, "ingest-pipeline", MIN_ROUND_SECONDS
        )

    async def start(self) -> None:
        self.pipeline.start()

    async def stop(self) -> None:
        await self.pipeline.stop()

    async def ingest(self, workspace_id: UUID, events: list[ValidEvent], received_at: datetime) -> IngestResult:
        return await self._submit(IngestJob(workspace_id, events, received_at, "user"))

    async def record_customer_event(self, workspace_id: UUID, name: str, customer: Any) -> None:
        """A `customer.*` system event about this customer."""
        metadata = {"customer_id": str(customer.id), "email": customer.email, "name": customer.name}
        strings = {key: value for key, value in metadata.items() if value is not None}
        item = ValidEvent(0, EventIn(name=name, customer_id=customer.id), msgspec.json.encode(metadata),
                          None, None, {}, strings, {})
        identity = (customer_key(customer.id, customer.external_id), customer.id, customer.external_id)
        await self._submit(IngestJob(workspace_id, [item], datetime.now(UTC), "system", {0: identity}))

    async def _submit(self, job: IngestJob) -> IngestResult:
        keys = [f"x:{item.event.external_id}" for item in job.events if item.event.external_id is not None]
        # Shielded: a client that disconnects mid-write must not release its claims before its rows land.
        return await asyncio.shield(self._claim_and_run(job, keys))

    async def _claim_and_run(self, job: IngestJob, keys: list[str]) -> IngestResult:
        async with self.claims.claim(job.workspace_id, keys):
            return await self.pipeline.submit(job)

    async def _process(self, jobs: list[IngestJob]) -> list[IngestResult | Exception]:
        """One round: lookups per workspace, each job checked on its own, one insert, then publishing."""
        workspaces = {job.workspace_id for job in jobs}
        # Shares are numbered from the events alone, so alongside the lookups (a share of a batch found invalid
        # or duplicate keeps an unused number: numbers need to be dense, not gapless).
        found, shares = await asyncio.gather(
            asyncio.gather(*(self._lookup(workspace, [job for job in jobs if job.workspace_id == workspace])
                             for workspace in workspaces)),
            self._share_numbers(jobs), return_exceptions=True,
        )
        if isinstance(found, BaseException):
            raise found
        lookups = dict(zip(workspaces, found, strict=True))
        identified = [_identified(job, lookups[job.workspace_id][0]) for job in jobs]
        try:
            if isinstance(shares, BaseException):
                raise shares
            numbers = await self._customer_numbers(identified)
        except Exception as error:  # noqa: BLE001
            log.warning("customer or share numbers unavailable: %s", error)
            return [outcome if isinstance(outcome, Exception) else StoreUnavailable() for outcome in identified]
        # Registered before its rows are stamped, until they are stored: see app/events/writes.py.
        async with self.writes.writing(workspaces) as ingested_at:
            outcomes = _prepared(identified, lookups, numbers, shares, ingested_at)
            prepared = [outcome for outcome in outcomes if isinstance(outcome, Prepared)]
            count = sum(len(outcome.stored) for outcome in prepared)
            if count:
                try:
                    await self._insert(insert_columns(prepared))
                except Exception as error:  # noqa: BLE001
                    # Nothing is acknowledged; the claims are released on the way out so retries are stored.
                    log.warning("insert of %d events failed: %s", count, error)
                    return [outcome if isinstance(outcome, Exception) else StoreUnavailable() for outcome in outcomes]
        published = [(str(outcome.job.workspace_id), outcome.stored) for outcome in prepared if outcome.stored]
        await asyncio.gather(*(self.broker.publish(workspace, stream_items(stored))
                               for workspace, stored in published if self.broker.listened(workspace)))
        return [outcome if isinstance(outcome, Exception) else
                IngestResult(inserted=len(outcome.stored), duplicates=outcome.duplicates) for outcome in outcomes]

    async def _insert(self, columns: list[list[Any]]) -> None:
        """The rows sent until ClickHouse has them all, for INSERT_RETRY_SECONDS at most, UNREACHABLE_RETRY_SECONDS
        while it cannot be reached. An insert that fails may have reached `events` and some of its views and not
        others (schema/0018); sent again with the same token, each table skips the block it has and takes the one
        it lacks, so nothing is stored twice."""
        settings = {**INSERT_SETTINGS, "insert_deduplication_token": uuid.uuid4().hex}
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            try:
                await self.client.insert("events", columns, column_names=EVENT_COLUMNS,
                                         column_type_names=list(EVENT_INSERT_TYPES.values()),
                                         column_oriented=True, settings=settings)
                return
            except Exception as error:
                patience = UNREACHABLE_RETRY_SECONDS if isinstance(error, OperationalError) else INSERT_RETRY_SECONDS
                if loop.time() + INSERT_RETRY_PAUSE_SECONDS > started + patience:
                    raise
                log.warning("insert failed, sending it again: %s", error)
                await asyncio.sleep(INSERT_RETRY_PAUSE_SECONDS)

    async def _customer_numbers(self, identified: list[tuple[IngestJob, dict[int, tuple]] | Exception]
                                ) -> dict[UUID, dict[str, int]]:
        """Per workspace, the number of every customer the valid jobs name (app/customers/numbers.py)."""
        keys: dict[UUID, set[str]] = {}
        for outcome in identified:
            if not isinstance(outcome, Exception):
                job, identities = outcome
                keys.setdefault(job.workspace_id, set()).update(identity[0] for identity in identities.values())
        return await self.numbers.per_workspace(keys)

    async def _share_numbers(self, jobs: list[IngestJob]) -> dict[UUID, dict[str, int]]:
        """Per workspace, the number of every file share the jobs' events name (their string share_id)."""
        shares: dict[UUID, set[str]] = {}
        for job in jobs:
            named = {item.strings[SHARE_KEY] for item in job.events if SHARE_KEY in item.strings}
            if named:
                shares.setdefault(job.workspace_id, set()).update(named)
        return await self.share_numbers.per_workspace(shares)

    async def _lookup(self, workspace_id: UUID, jobs: list[IngestJob]) -> tuple[list[tuple], dict[str, tuple]]:
        """The customers the jobs name and the stored events their external ids and parents name."""
        events = [item for job in jobs if job.identities is None for item in job.events]
        ids = list({item.event.customer_id for item in events if item.event.customer_id is not None})
        external = list({item.event.external_customer_id for item in events if item.event.external_customer_id})
        keys = [f"x:{item.event.external_id}" for job in jobs for item in job.events if item.event.external_id]
        keys += [key for job in jobs for key in _parent_keys(job.events)]
        customers, known = await asyncio.gather(
            customers_by_reference(self.client, workspace_id, ids, external) if ids or external else _nothing(),
            queries.stored_keys(self.client, workspace_id, keys),
        )
        return customers, known


async def _nothing() -> list[tuple]:
    return []


def insert_columns(prepared: list["Prepared"]) -> list[list[Any]]:
    """The columns of the round's insert: those of its jobs, end to end."""
    if len(prepared) == 1:
        return prepared[0].columns
    return [list(chain.from_iterable(outcome.columns[column] for outcome in prepared))
            for column in range(len(EVENT_COLUMNS))]


def stream_items(stored: list[StoredEvent]) -> list[tuple[str, str, bytes]]:
    """(id, name, JSON) of each stored event, as the live streams take them; msgspec makes the id strings in
    one call (str() of a UUID is Python code)."""
    ids = msgspec.to_builtins([event.id for event in stored])
    return [(event_id, event.name, msgspec.json.encode(event)) for event_id, event in zip(ids, stored, strict=True)]


def _prepared(identified: list[tuple[IngestJob, dict[int, tuple]] | Exception],
              lookups: dict[UUID, tuple[list[tuple], dict[str, tuple]]], numbers: dict[UUID, dict[str, int]],
              shares: dict[UUID, dict[str, int]], ingested_at: datetime) -> list["Prepared | Exception"]:
    """Each job's rows, or why it cannot be stored."""
    outcomes: list[Prepared | Exception] = []
    for outcome in identified:
        if isinstance(outcome, Exception):
            outcomes.append(outcome)
            continue
        job, identities = outcome
        try:
            outcomes.append(_prepare(job, identities, lookups[job.workspace_id][1], numbers[job.workspace_id],
                                     shares.get(job.workspace_id, {}), ingested_at))
        except BatchInvalid as error:
            outcomes.append(error)
        except Exception as error:  # noqa: BLE001 - a fault with one job's events fails that job, not its round
            log.exception("events of a job could not be prepared")
            outcomes.append(error)
    return outcomes


def _identified(job: IngestJob, customers: list[tuple]) -> tuple[IngestJob, dict[int, tuple]] | BatchInvalid:
    try:
        return job, job.identities if job.identities is not None else _identities(job.events, customers)
    except BatchInvalid as error:
        return error


def _prepare(job: IngestJob, identities: dict[int, tuple], known: dict[str, tuple], numbers: dict[str, int],
             shares: dict[str, int], ingested_at: datetime) -> Prepared:
    fresh, duplicates = _split_duplicates(job.events, known)
    placed = _place_in_trees(fresh, known)
    received_at = to_millisecond(job.received_at)
    stored = [_stored_event(item, placed[item.index], identities[item.index], received_at, ingested_at, job.source)
              for item in fresh]
    return Prepared(job, stored, _columns(job.workspace_id, stored, fresh, identities, numbers, shares, ingested_at),
                    duplicates)


def _identities(events: list[ValidEvent], customers: list[tuple]) -> dict[int, tuple]:
    """(customer_key, customer_id, external_customer_id) per event; 422 for an unknown customer_id."""
    by_id = {customer_id: external_id for customer_id, external_id in customers}
    by_external = {external_id: customer_id for customer_id, external_id in customers if external_id is not None}
    identities: dict[int, tuple] = {}
    errors = []
    for item in events:
        event = item.event
        if event.customer_id is not None:
            if event.customer_id not in by_id:
                errors.append(IngestError(item.index, "customer_id", "no such customer in this workspace"))
                continue
            external_id = by_id[event.customer_id]
            identities[item.index] = (customer_key(event.customer_id, external_id), event.customer_id, external_id)
        else:
            external_id = event.external_customer_id
            identities[item.index] = (customer_key(None, external_id), by_external.get(external_id), external_id)
    if errors:
        raise BatchInvalid(errors)
    return identities


def reference_keys(reference: str) -> list[str]:
    """The event_keys_kv entries an event reference (its id or its external id) may stand for, the id first."""
    as_id = as_uuid(reference)
    return ([f"i:{as_id}"] if as_id is not None else []) + [f"x:{reference}"]


def stored_reference(reference: str, known: dict[str, tuple]) -> tuple | None:
    """(id, root_id, depth) of the stored event a reference names, by id before external id."""
    return next((known[key] for key in reference_keys(reference) if key in known), None)


def _parent_keys(events: list[ValidEvent]) -> list[str]:
    return [key for item in events if item.event.parent_id is not None for key in reference_keys(item.event.parent_id)]


def _split_duplicates(events: list[ValidEvent], known: dict[str, tuple]) -> tuple[list[ValidEvent], int]:
    """The events whose external id is new (first occurrence in the batch wins) and the count of the others."""
    fresh, seen = [], set()
    for item in events:
        external_id = item.event.external_id
        if external_id is not None:
            if f"x:{external_id}" in known or external_id in seen:
                continue
            seen.add(external_id)
        fresh.append(item)
    return fresh, len(events) - len(fresh)


def _place_in_trees(fresh: list[ValidEvent], known: dict[str, tuple]) -> dict[int, Placed]:
    """id, root and depth of every new event; a parent is a stored event (by id or external id) or another
    new event of the batch (by external id), in any order; 422 for an unknown parent, a cycle or a tree deeper
    than `depth` holds. Each event's chain of parents in the batch is walked up to where it hangs (a root, a
    stored event or one placed already), then placed from there down: a loop, as chains may be 10,000 long."""
    ids = dict(zip([item.index for item in fresh], random_ids(len(fresh)), strict=True))
    by_external = {item.event.external_id: item for item in fresh if item.event.external_id is not None}
    placed: dict[int, Placed] = {}
    failed: set[int] = set()
    errors: list[IngestError] = []
    for item in fresh:
        chain: list[ValidEvent] = []
        on_chain: set[int] = set()
        current: ValidEvent | None = item
        above: tuple | None = None  # (id, root_id, depth) of where the chain hangs; None: its top is a root
        while current is not None:
            if current.index in placed:
                spot = placed[current.index]
                above = (spot.id, spot.root_id, spot.depth)
                break
            if current.index in failed:
                current = None
                break
            chain.append(current)
            on_chain.add(current.index)
            parent = current.event.parent_id
            if parent is None:
                break
            if (stored := stored_reference(parent, known)) is not None:
                above = stored
                break
            following = by_external.get(parent)
            if following is None:
                errors.append(IngestError(current.index, "parent_id",
                                          "no event of this workspace has this id or external_id"))
                current = None
            elif following.index in on_chain:
                cycle = chain[next(at for at, member in enumerate(chain) if member is following):]
                errors.extend(IngestError(member.index, "parent_id", "parents form a cycle") for member in cycle)
                current = None
            else:
                current = following
        if current is None:
            failed.update(on_chain)
            continue
        for member in reversed(chain):
            own = ids[member.index]
            spot = Placed(own, own, 0, None) if above is None else Placed(own, above[1], above[2] + 1, above[0])
            if spot.depth > MAX_DEPTH:
                errors.append(IngestError(member.index, "parent_id", f"trees are at most {MAX_DEPTH} deep"))
                failed.update(on_chain)
                break
            placed[member.index] = spot
            above = (spot.id, spot.root_id, spot.depth)
    if errors:
        raise BatchInvalid(sorted(errors, key=lambda error: error.index))
    return placed


def _stored_event(item: ValidEvent, spot: Placed, identity: tuple, received_at: datetime, ingested_at: datetime,
                  source: str) -> StoredEvent:
    """`received_at` in UTC to the millisecond already: most events have no timestamp of their own."""
    event = item.event
    timestamp = received_at if event.timestamp is None else to_millisecond(event.timestamp)
    return StoredEvent(spot.id, event.name, timestamp, ingested_at, source,  # type: ignore[arg-type]
                       identity[1], identity[2], event.external_id, spot.parent_id, spot.root_id, spot.depth,
                       msgspec.Raw(item.metadata_json))


def _columns(workspace_id: UUID, stored: list[StoredEvent], fresh: list[ValidEvent], identities: dict[int, tuple],
             numbers: dict[str, int], shares: dict[str, int], ingested_at: datetime) -> list[list[Any]]:
    """The events table's rows, column by column and typed as EVENT_INSERT_TYPES says: clickhouse-connect
    takes columns without pivoting rows, and no list per row waits for the insert."""
    count = len(stored)
    ids = msgspec.to_builtins([event.id for event in stored])
    keys = [identities[item.index][0] for item in fresh]
    return [
        [str(workspace_id)] * count,
        ids,
        [event.name for event in stored],
        [(event.timestamp - EPOCH) // MILLISECOND for event in stored],
        [(ingested_at - EPOCH) // MILLISECOND] * count,
        [event.source for event in stored],
        keys,
        [numbers[key] for key in keys],
        msgspec.to_builtins([event.customer_id for event in stored]),
        [event.external_customer_id for event in stored],
        [event.external_id for event in stored],
        [event.external_id if event.external_id is not None else f"i:{event_id}"
         for event, event_id in zip(stored, ids, strict=True)],
        msgspec.to_builtins([event.parent_id for event in stored]),
        msgspec.to_builtins([event.root_id for event in stored]),
        [event.depth for event in stored],
        [item.metadata_json for item in fresh],
        [item.numbers for item in fresh],
        [item.strings for item in fresh],
        [item.booleans for item in fresh],
        # Exact: ClickHouse reads every digit of the Decimal's text, exponent included.
        [str(item.cost.amount) if item.cost else "0" for item in fresh],
        [item.llm.total_tokens if item.llm else 0 for item in fresh],
        [shares[item.strings[SHARE_KEY]] if SHARE_KEY in item.strings else 0 for item in fresh],
    ]


def as_uuid(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


# Listing -------------------------------------------------------------------------------------------------

class Cursor(msgspec.Struct, array_like=True):
    timestamp: datetime
    id: UUID
    as_of: datetime
    listing: str = ""  # pagination.listing_of; cursors made before it was kept carry none


def continued_position(cursor: str | None, listing: str) -> Cursor | None:
    """The position a listing's cursor holds; a 422 for a cursor of another listing (other filters, another
    order, the other route), which would page through the wrong events."""
    if not cursor:  # `cursor=` is the first page, as on the customer list
        return None
    position = decode_cursor(cursor, Cursor)
    if position.listing and position.listing != listing:
        raise invalid("cursor", "belongs to a listing with other filters or another order")
    return position


def stored_event_from_row(row: tuple, with_children: bool = False) -> StoredEvent:
    return StoredEvent(
        id=row[0], name=row[1], timestamp=row[2], ingested_at=row[3], source=row[4], customer_id=row[5],
        external_customer_id=row[6], external_id=row[7], parent_id=row[8], root_id=row[9], depth=row[10],
        metadata=msgspec.Raw(row[11].encode() if row[11] else b"{}"),
        child_count=row[12] if with_children else msgspec.UNSET,
    )


def metadata_filters(query: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(dotted path, value) of every `meta[a][b]=value` query parameter."""
    filters = []
    for name, values in query.items():
        if not name.startswith("meta["):
            continue
        if not METADATA_PARAMETER.fullmatch(name):
            raise invalid(name, "use meta[key]=value or meta[key][nested]=value")
        path = ".".join(METADATA_SEGMENT.findall(name))
        filters.extend((path, value) for value in values)
    if len(filters) > MAX_METADATA_FILTERS:
        raise invalid("meta", f"at most {MAX_METADATA_FILTERS} meta[...] filters")
    return filters


def storable(instant: datetime) -> datetime:
    """A bound of a time range, moved into the range events can have (from 1970 to a day from now: no event is
    more than 5 minutes ahead), well inside ClickHouse's DateTime64 years 1900-2299: the same events match, and
    ClickHouse can read it."""
    return min(max(instant, EARLIEST_TIMESTAMP), datetime.now(UTC) + timedelta(days=1))


def listing_filter(
    names: list[str] | None, customer_keys: list[str] | None, source: str | None,
    start: datetime | None, end: datetime | None, parent_id: UUID | None, depth: int | None,
    metadata: list[tuple[str, str]],
) -> EventFilter:
    for field, bound in (("start_timestamp", start), ("end_timestamp", end)):
        if bound is not None and bound.utcoffset() is None:
            raise invalid(field, "needs a UTC offset, as RFC 3339 has it")
    if start and end and end < start:
        raise invalid("end_timestamp", "is before start_timestamp")
    where = EventFilter()
    if names:
        where.add("name IN {names:Array(String)}", names=names)
    if customer_keys is not None:
        where.add("customer_key IN {customers:Array(String)}", customers=customer_keys)
    if source:
        where.add("source = {source:String}", source=source)
    if start:
        where.add("timestamp >= {start:DateTime64(3, 'UTC')}", start=storable(start))
    if end:
        where.until = storable(end)
        where.add("timestamp < {end:DateTime64(3, 'UTC')}", end=where.until)
    if parent_id:
        where.add("parent_id = {parent:UUID}", parent=parent_id)
    if depth is not None:
        where.add("depth = {depth:UInt16}", depth=depth)
    for path, value in metadata:
        where.add_metadata_match(path, value)
    return where
