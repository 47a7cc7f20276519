"""Live-stream benchmark (issue 8). Prints figures measured in one run; asserts nothing.

  .venv/bin/python bench/stream.py [--subscribers 1000] [--workspaces 100] [--rate 5000] [--duration 20]
                                   [--batch 100] [--api-processes 2] [--client-processes 2]

Starts its own embedded ClickHouse and redis-server on free ports and N API processes under uvicorn (as
WORKERS=N does), then runs the same paced load twice, `--rate` events/s in `--batch`-event requests spread over
`--workspaces` workspaces and over the API processes:
- without subscribers: the ingest throughput and request latency alone;
- with `--subscribers` SSE connections (workspace tokens, spread evenly over workspaces and API processes, read
  by `--client-processes` processes): the latency from an ingest's 200 to the receipt of its events, p50/p99,
  events delivered per second, what was lost or cut off, and the ingest throughput again (the ratio).
Each event reaches subscribers/workspaces connections: `--workspaces 1` sends everything to everyone.
"""

import argparse
import asyncio
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
import msgspec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.warehouse.embedded import EmbeddedServer  # noqa: E402

OPERATOR = "bench-operator-token"
# The batch number is in each event's external_id ("b<batch>-<i>"): the key to its ingest's 200.
BATCH_OF = re.compile(rb'"external_id":"b(\d+)-')
DRAIN_SECONDS = 3.0
# A request still unanswered after this counts as failed, so one stuck request cannot stretch a phase.
REQUEST_TIMEOUT = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_for(url: str, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not start")


class Redis:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Api:
    """One API process, as each of WORKERS runs: uvicorn with the app factory."""

    def __init__(self, root: Path, clickhouse_url: str, redis_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DATA_DIR": str(root), "ADMIN_TOKEN": OPERATOR, "CLICKHOUSE_URL": clickhouse_url,
               "REDIS_URL": redis_url}
        self.log = open(root / f"api-{self.port}.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning", "--no-access-log",
             # Open streams never end by themselves; uvicorn would wait for them forever on SIGTERM.
             "--timeout-graceful-shutdown", "5"],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


# Subscribers (in client processes) ----------------------------------------------------------------------


@dataclass
class Subscriber:
    port: int
    path: str
    token: str


class Received(msgspec.Struct):
    """What one client process saw: receipts as (batch, count, monotonic time), and how streams ended."""

    receipts: list[tuple[int, int, float]] = []
    per_subscriber: list[int] = []
    endings: dict[str, int] = {}


async def read_stream(sub: Subscriber, ready: asyncio.Event, started: list[int], wanted: int, into: Received,
                      index: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", sub.port, limit=1 << 22)
    writer.write(f"GET {sub.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {sub.token}\r\n"
                 f"Accept: text/event-stream\r\n\r\n".encode())
    ending = "disconnected"
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            ending = head.split(b"\r\n")[0].decode()
            return
        buffer = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                ending = "closed by server"
                return
            buffer += (await reader.readexactly(size + 2))[:-2]
            at = time.monotonic()
            complete, _, buffer = buffer.rpartition(b"\r\n\r\n")
            if not complete:
                continue
            if b": ready" in complete and len(started) < wanted and index not in started:
                started.append(index)
                if len(started) == wanted:
                    ready.set()
            batches = Counter(BATCH_OF.findall(complete))
            into.receipts.extend((int(batch), count, at) for batch, count in batches.items())
            into.per_subscriber[index] += sum(batches.values())
            for final in (b"overflow", b"unavailable"):
                if b"event: " + final + b"\r\n" in complete:
                    ending = final.decode()
                    return
    except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
        ending = "open" if ending == "disconnected" else ending
    finally:
        into.endings[ending] = into.endings.get(ending, 0) + 1
        writer.close()


async def subscribe_all(subscribers: list[Subscriber], control: Connection) -> None:
    into = Received(per_subscriber=[0] * len(subscribers))
    ready, started = asyncio.Event(), []
    tasks = [asyncio.create_task(read_stream(sub, ready, started, len(subscribers), into, index))
             for index, sub in enumerate(subscribers)]
    await asyncio.wait_for(ready.wait(), 120)
    control.send("ready")
    await asyncio.to_thread(control.recv)  # the producers are done and deliveries drained
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    control.send_bytes(msgspec.msgpack.encode(into))


def client_process(subscribers: list[Subscriber], control: Connection) -> None:
    asyncio.run(subscribe_all(subscribers, control))


# Producers (in this process) ----------------------------------------------------------------------------


@dataclass
class Load:
    rate: float
    duration: float
    batch: int
    in_flight: int
    tokens: list[str]  # one per workspace
    urls: list[str]  # one per API process


@dataclass
class Ingested:
    sent: dict[int, float] = field(default_factory=dict)  # batch -> monotonic time its request started
    acked: dict[int, float] = field(default_factory=dict)  # batch -> monotonic time of its 200
    workspace_of: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def events(self) -> int:
        return len(self.acked)


def batch_body(number: int, size: int) -> bytes:
    return msgspec.json.encode({"events": [
        {"name": f"bench.{i % 5}", "external_customer_id": f"c{i % 100}", "external_id": f"b{number}-{i}",
         "metadata": {"i": i, "route": "/api/items", "status": 200}}
        for i in range(size)
    ]})


async def produce(load: Load, first_batch: int) -> Ingested:
    """`load.rate` events/s for `load.duration` s, paced: one request every batch/rate seconds. At most
    `load.in_flight` requests wait at once; past that the producers fall behind the pace (the achieved rate shows
    it) rather than queue without bound and measure the queue."""
    result = Ingested()
    interval = load.batch / load.rate
    count = int(load.duration * load.rate / load.batch)
    slots = asyncio.Semaphore(load.in_flight)
    limits = httpx.Limits(max_connections=load.in_flight, max_keepalive_connections=load.in_flight)
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT, verify=False) as client:
        async def send(number: int, workspace: int, url: str, body: bytes) -> None:
            started = time.monotonic()
            result.sent[number] = started
            try:
                response = await client.post(f"{url}/api/events/ingest", content=body, headers={
                    "Authorization": f"Bearer {load.tokens[workspace]}", "Content-Type": "application/json"})
            except httpx.HTTPError as error:
                result.failures[f"{type(error).__name__} after {time.monotonic() - started:.0f}s"] += 1
                return
            done = time.monotonic()
            if response.status_code != 200:
                result.failures[f"{response.status_code} {response.text[:80]}"] += 1
                return
            result.acked[number] = done
            result.workspace_of[number] = workspace
            result.latencies.append((done - started) * 1000)
            result.elapsed = max(result.elapsed, done - began)

        async def paced(number: int, workspace: int, url: str, body: bytes) -> None:
            try:
                await send(number, workspace, url, body)
            finally:
                slots.release()

        began = time.monotonic()
        tasks = []
        for k in range(count):
            await asyncio.sleep(max(0.0, began + k * interval - time.monotonic()))
            await slots.acquire()
            if time.monotonic() - began > load.duration:
                slots.release()
                break
            body = batch_body(first_batch + k, load.batch)
            url = load.urls[k % len(load.urls)]
            tasks.append(asyncio.create_task(paced(first_batch + k, k % len(load.tokens), url, body)))
        await asyncio.gather(*tasks)
    return result


# The run ------------------------------------------------------------------------------------------------


def create_workspaces(url: str, count: int) -> tuple[list[str], list[str]]:
    headers = {"Authorization": f"Bearer {OPERATOR}"}
    ids, tokens = [], []
    with httpx.Client(base_url=url, headers=headers, timeout=30, verify=False) as client:
        for index in range(count):
            workspace = client.post("/api/workspaces", json={"name": f"bench-{index}"}).json()["id"]
            ids.append(workspace)
            tokens.append(client.post(f"/api/workspaces/{workspace}/tokens", json={}).json()["token"])
    return ids, tokens


def plan_subscribers(count: int, apis: list[Api], ids: list[str], tokens: list[str]) -> list[Subscriber]:
    return [Subscriber(apis[i % len(apis)].port, f"/api/stream/workspaces/{ids[i % len(ids)]}", tokens[i % len(ids)])
            for i in range(count)]


def report_ingest(label: str, ingested: Ingested, batch: int, cpu: dict[str, float]) -> float:
    throughput = ingested.events * batch / ingested.elapsed if ingested.elapsed else 0.0
    print(f"  {label}: {throughput:,.0f} events/s acknowledged ({ingested.events * batch:,} events, "
          f"failed requests: {dict(ingested.failures) or 'none'}), "
          f"request p50 {percentile(ingested.latencies, 0.5):.0f} ms, p99 {percentile(ingested.latencies, 0.99):.0f} ms")
    print("    cpu seconds: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in cpu.items()))
    return throughput


def measure(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def run_phase(load: Load, first_batch: int, pids: dict[str, int]) -> tuple[Ingested, dict[str, float]]:
    before = measure(pids)
    ingested = asyncio.run(produce(load, first_batch))
    after = measure(pids)
    return ingested, {name: after[name] - before[name] for name in pids}


def report_delivery(received: list[Received], subscribers: list[Subscriber], ids: list[str], ingested: Ingested,
                    batch: int) -> None:
    latencies: list[float] = []
    since_sent: list[float] = []
    delivered = 0
    last = 0.0
    for part in received:
        for number, count, at in part.receipts:
            acked = ingested.acked.get(number)
            if acked is None:
                continue
            latencies.extend([(at - acked) * 1000] * count)
            since_sent.extend([(at - ingested.sent[number]) * 1000] * count)
            delivered += count
            last = max(last, at)
    per_workspace = Counter(ingested.workspace_of.values())
    expected = sum(per_workspace[ids.index(sub.path.rsplit("/", 1)[1])] * batch for sub in subscribers)
    counts = [count for part in received for count in part.per_subscriber]
    endings: Counter[str] = Counter()
    for part in received:
        endings.update(part.endings)
    first = min(ingested.acked.values(), default=0.0)
    span = max(last - first, 1e-9)
    early = sum(1 for value in latencies if value < 0)
    print(f"  delivered {delivered:,} of {expected:,} expected events ({expected - delivered:,} missing), "
          f"{delivered / span:,.0f} events/s to subscribers")
    print(f"  latency from the ingest's 200 to receipt: p50 {percentile(latencies, 0.5):.0f} ms, "
          f"p99 {percentile(latencies, 0.99):.0f} ms, max {max(latencies, default=float('nan')):.0f} ms "
          f"({early / max(len(latencies), 1):.0%} arrived before the producer saw its 200)")
    print(f"  latency from the ingest request's start to receipt: p50 {percentile(since_sent, 0.5):.0f} ms, "
          f"p99 {percentile(since_sent, 0.99):.0f} ms")
    print(f"  per subscriber: min {min(counts, default=0):,} max {max(counts, default=0):,} events; "
          f"streams at the end: {dict(endings)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--workspaces", type=int, default=100)
    parser.add_argument("--rate", type=float, default=5000, help="events/s ingested")
    parser.add_argument("--duration", type=float, default=20, help="seconds of ingestion per phase")
    parser.add_argument("--batch", type=int, default=100, help="events per ingest request")
    parser.add_argument("--in-flight", type=int, default=32, help="ingest requests waiting at most at once")
    parser.add_argument("--api-processes", type=int, default=2)
    parser.add_argument("--client-processes", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server not found: make redis-server installs it")

    root = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    clickhouse = EmbeddedServer(root / "ch", free_port(), free_port())
    redis = Redis(root)
    apis: list[Api] = []
    try:
        clickhouse.start()
        apis = [Api(root, clickhouse.url, redis.url) for _ in range(args.api_processes)]
        for api in apis:
            wait_for(f"{api.url}/api/health", "the API")
        ids, tokens = create_workspaces(apis[0].url, args.workspaces)
        load = Load(args.rate, args.duration, args.batch, args.in_flight, tokens, [api.url for api in apis])
        pids = {f"api{i}": api.process.pid for i, api in enumerate(apis)}
        pids.update(clickhouse=clickhouse.pid or 0, redis=redis.process.pid)
        fanout = args.subscribers / args.workspaces
        print(f"{args.api_processes} API processes, {args.workspaces} workspaces, {args.rate:,.0f} events/s "
              f"for {args.duration:.0f}s in {args.batch}-event requests; {os.cpu_count()} cores")

        print("without subscribers")
        alone, cpu = run_phase(load, 0, pids)
        baseline = report_ingest("ingest", alone, args.batch, cpu)

        print(f"with {args.subscribers} subscribers ({fanout:.0f} per workspace, so "
              f"{args.rate * fanout:,.0f} deliveries/s asked)")
        subscribers = plan_subscribers(args.subscribers, apis, ids, tokens)
        context = multiprocessing.get_context("spawn")
        controls, workers = [], []
        for part in range(args.client_processes):
            ours, theirs = context.Pipe()
            worker = context.Process(target=client_process, args=(subscribers[part::args.client_processes], theirs))
            worker.start()
            controls.append(ours)
            workers.append(worker)
        for control in controls:
            if not control.poll(180):
                raise RuntimeError("subscribers did not connect")
            control.recv()
        pids.update({f"clients{i}": worker.pid or 0 for i, worker in enumerate(workers)})
        ingested, cpu = run_phase(load, 10_000_000, pids)
        time.sleep(DRAIN_SECONDS)
        for control in controls:
            control.send("stop")
        received = [msgspec.msgpack.decode(control.recv_bytes(), type=Received) for control in controls]
        for worker in workers:
            worker.join(30)
        loaded = report_ingest("ingest", ingested, args.batch, cpu)
        report_delivery(received, subscribers, ids, ingested, args.batch)
        print(f"  ingest throughput with / without subscribers: {loaded / baseline if baseline else float('nan'):.2f}")
    finally:
        for api in apis:
            api.stop()
            problems = [line for line in Path(api.log.name).read_text(errors="replace").splitlines()
                        if not line.startswith("INFO")]
            if problems:
                print(f"  api {api.port} logged {len(problems)} lines besides INFO, the last ones:")
                print("\n".join(f"    {line}" for line in problems[-15:]))
        redis.stop()
        clickhouse.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
