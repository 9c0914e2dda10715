"""Load generator for the transport benchmark: one closed-loop streaming workload, three transports.

Each client does generate requests of `max_tokens` tokens back to back until the deadline, over
HTTP polling (POST /v1/jobs + long-poll GET), SSE (POST /v1/completions stream=true) or WebSocket
(/v1/stream, one connection per client). A load process (`run_worker`, started by multiprocessing)
runs many clients on uvloop and returns raw samples: TTFT and inter-chunk gaps in seconds,
completed requests, delivered chunks, errors and timeouts, and when each client first got connected (a
WebSocket handshake done, or an HTTP response's status line), so a client still waiting when the level ends
is counted as never connected, a failure, rather than vanishing from the figures.

Loopback only by design: the orchestrator passes a 127.0.0.1 URL, and every request has a timeout,
so a run always ends by itself.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import aiohttp
import msgspec

TRANSPORTS = ("polling", "sse", "websocket")
_encode = msgspec.json.Encoder().encode  # the generator spends the same cores as the server: keep it lean
_decode = msgspec.json.Decoder().decode
PROMPT = "And God said, Let there be light: and there was light. And God saw the light, that it was good:"


@dataclass
class WorkerSpec:
    transport: str
    base_url: str  # http://127.0.0.1:PORT
    clients: int
    max_tokens: int
    duration_s: float
    start_at: float  # time.time() at which every process's clients start together
    request_timeout_s: float = 30.0
    worker_index: int = 0
    ramp_s: float = 0.0  # clients start spread over this many seconds; requests sent during it are not measured
    # Clients connect from this many loopback addresses (127.0.0.1, .2, ...), round robin: a server that routes
    # by client address (`--workers N`) sees a spread of clients, not one address.
    source_addresses: int = 1


@dataclass
class WorkerResult:
    completed: int = 0
    chunks: int = 0
    tokens: int = 0  # token ids in the chunks counted (WebSocket, polling; SSE: max_tokens per completion)
    errors: int = 0
    timeouts: int = 0
    connect_timeouts: int = 0  # of which: WebSocket handshakes with no answer in time
    never_connected: int = 0  # clients with no connection (handshake / first response) by the level's end
    connected_at_s: list[float] = field(default_factory=list)  # each connected client's first connection, s from start
    handshake_s: list[float] = field(default_factory=list)  # how long each successful WebSocket handshake took
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what[:300])


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (each client holds one or more sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class _Request:
    """Timing of one request. Throughput counts the chunks and completions that happen inside the measured
    window (after the ramp, before the deadline), so requests straddling its edges neither inflate nor
    deflate it; latencies come from the requests sent inside it."""

    window = (0.0, float("inf"))  # perf_counter() bounds of the measured window, set per load process

    def __init__(self, result: WorkerResult) -> None:
        self.result = result
        self.sent = time.perf_counter()
        self.timed = self.window[0] <= self.sent
        self.last: float | None = None

    def chunks(self, n: int) -> None:
        """n chunks arrived now (several at once when a poll or a read carries several)."""
        if n <= 0:
            return
        now = time.perf_counter()
        if self.window[0] <= now <= self.window[1]:
            self.result.chunks += n
        if self.timed:
            if self.last is None:
                self.result.ttft_s.append(now - self.sent)
            else:
                self.result.itl_s.append(now - self.last)
            self.result.itl_s.extend([0.0] * (n - 1))
        self.last = now

    def tokens(self, n: int) -> None:
        if self.window[0] <= time.perf_counter() <= self.window[1]:
            self.result.tokens += n

    def done(self) -> None:
        if self.window[0] <= time.perf_counter() <= self.window[1]:
            self.result.completed += 1


def request_body(max_tokens: int) -> dict:
    """The one generation every transport and load tool sends: fixed prompt, exactly max_tokens tokens."""
    return {"prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0}


def _body(spec: WorkerSpec) -> dict:
    return request_body(spec.max_tokens)


async def _polling_one(session: aiohttp.ClientSession, spec: WorkerSpec, result: WorkerResult,
                       connected: Callable[[], None]) -> None:
    req = _Request(result)
    async with session.post(f"{spec.base_url}/v1/jobs", json=_body(spec)) as resp:
        connected()
        if resp.status != 202:
            result.error(f"POST /v1/jobs {resp.status}: {await resp.text()}")
            return
        job_id = (await resp.json())["id"]
    after = -1
    while True:
        url = f"{spec.base_url}/v1/jobs/{job_id}?after={after}&wait_ms=5000"
        async with session.get(url) as resp:
            if resp.status != 200:
                result.error(f"GET job {resp.status}: {await resp.text()}")
                return
            view = await resp.json()
        req.chunks(len(view["chunks"]))
        req.tokens(sum(len(c.get("token_ids") or ()) for c in view["chunks"]))
        after = view["last_seq"]
        if view["status"] != "running":
            if view["finish_reason"] not in ("length", "stop"):
                result.error(f"job finished with {view['finish_reason']}")
                return
            req.done()
            return


async def _sse_one(session: aiohttp.ClientSession, spec: WorkerSpec, result: WorkerResult,
                   connected: Callable[[], None]) -> None:
    req = _Request(result)
    body = {"model": "seedance-tiny", "stream": True, **_body(spec)}
    async with session.post(f"{spec.base_url}/v1/completions", json=body) as resp:
        connected()
        if resp.status != 200:
            result.error(f"POST /v1/completions {resp.status}: {await resp.text()}")
            return
        buf = b""
        async for data in resp.content.iter_any():
            buf += data
            events = buf.split(b"\n\n")
            buf = events.pop()
            n = 0
            for event in events:
                for line in event.split(b"\n"):
                    if line == b"data: [DONE]":
                        req.chunks(n)
                        req.tokens(spec.max_tokens)  # SSE chunks carry text only; ignore_eos makes it exact
                        req.done()
                        return
                    if line.startswith(b"data: "):
                        if b'"error"' in line[:20]:
                            result.error(line.decode(errors="replace"))
                            return
                        n += 1
            req.chunks(n)
    result.error("SSE stream ended without [DONE]")


async def _ws_client(session: aiohttp.ClientSession, spec: WorkerSpec, result: WorkerResult, cid: str,
                     deadline: float, connected: Callable[[], None]) -> None:
    # The handshake is bounded too: when the server's accept queue overflows under a connection burst, a
    # client can hold an "established" socket the server never accepted and wait for an answer forever.
    t0 = time.perf_counter()
    try:
        ws = await asyncio.wait_for(session.ws_connect(f"{spec.base_url.replace('http', 'ws', 1)}/v1/stream",
                                                       max_msg_size=0, heartbeat=None), spec.request_timeout_s)
    except TimeoutError:
        result.connect_timeouts += 1
        raise
    result.handshake_s.append(time.perf_counter() - t0)
    connected()
    async with ws:
        k = 0
        while time.time() < deadline:
            rid = f"{cid}-{k}"
            k += 1
            req = _Request(result)
            why = None
            await ws.send_str(_encode({"type": "generate", "id": rid, **_body(spec)}).decode())
            finished = False
            while not finished:
                msg = await asyncio.wait_for(ws.receive(), spec.request_timeout_s)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise ConnectionError(f"websocket closed: {msg.type.name} {msg.data!r} {msg.extra!r}")
                payload = _decode(msg.data)
                items = payload if isinstance(payload, list) else [payload]
                n = 0
                for item in items:
                    kind = item.get("type")
                    if kind == "chunk":
                        n += 1
                        req.tokens(len(item.get("token_ids") or ()))
                    elif kind == "done":
                        req.chunks(n)
                        n = 0
                        finished = True
                        if item["finish_reason"] in ("length", "stop"):
                            req.done()
                        else:
                            result.error(f"done with {item['finish_reason']}" + (f" after {why}" if why else ""))
                    elif kind == "error" and item.get("id") == rid:  # an error about this request ends in done
                        why = f"{item.get('code')}: {item.get('message')}"
                    elif kind == "error":
                        result.error(f"error message: {item}")
                req.chunks(n)


async def _http_client(session: aiohttp.ClientSession, spec: WorkerSpec, result: WorkerResult,
                       deadline: float, connected: Callable[[], None]) -> None:
    one = _polling_one if spec.transport == "polling" else _sse_one
    while time.time() < deadline:
        try:
            await asyncio.wait_for(one(session, spec, result, connected), spec.request_timeout_s)
        except TimeoutError:
            result.timeouts += 1
        except aiohttp.ClientError as err:
            result.error(f"{type(err).__name__}: {err}")
            await asyncio.sleep(0.1)


def source_address(index: int) -> str:
    """The index-th loopback source address: 127.0.0.1, 127.0.0.2, ... (all of 127/8 is loopback)."""
    return f"127.0.{(index + 1) // 256}.{(index + 1) % 256}"


async def _run(spec: WorkerSpec) -> WorkerResult:
    result = WorkerResult()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(
        limit=0, force_close=False, local_addr=(source_address(k), 0) if spec.source_addresses > 1 else None),
        timeout=timeout) for k in range(max(1, spec.source_addresses))]
    try:
        return await _run_clients(spec, result, sessions)
    finally:
        for session in sessions:
            await session.close()


async def _run_clients(spec: WorkerSpec, result: WorkerResult,
                       sessions: list[aiohttp.ClientSession]) -> WorkerResult:
    delay = spec.start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    measure_from = time.perf_counter() + spec.ramp_s
    _Request.window = (measure_from, measure_from + spec.duration_s)
    deadline = time.time() + spec.ramp_s + spec.duration_s

    first_connected: dict[int, float] = {}  # client index -> time.time() of its first connection

    async def client(i: int) -> None:
        def connected() -> None:
            first_connected.setdefault(i, time.time())

        await asyncio.sleep(spec.ramp_s * i / spec.clients)
        session = sessions[i % len(sessions)]
        if spec.transport == "websocket":
            while time.time() < deadline:
                try:
                    await _ws_client(session, spec, result, f"w{spec.worker_index}c{i}", deadline, connected)
                except TimeoutError:
                    result.timeouts += 1
                except (aiohttp.ClientError, ConnectionError) as err:
                    result.error(f"{type(err).__name__}: {err}")
                    await asyncio.sleep(0.1)
        else:
            await _http_client(session, spec, result, deadline, connected)

    tasks = [asyncio.create_task(client(i)) for i in range(spec.clients)]
    # Every request is bounded, so this is a backstop: a level always ends, whatever the server does.
    _, stuck = await asyncio.wait(tasks, timeout=spec.ramp_s + spec.duration_s + spec.request_timeout_s + 15)
    for task in stuck:
        task.cancel()
    result.timeouts += len(stuck)
    if stuck:
        result.error(f"{len(stuck)} clients still busy past the level's end; cancelled")
    await asyncio.gather(*stuck, return_exceptions=True)
    in_time = [t - spec.start_at for t in first_connected.values() if t <= deadline]
    result.connected_at_s = sorted(in_time)
    result.never_connected = spec.clients - len(in_time)
    result.elapsed_s = spec.duration_s  # the measured window; the last requests drain after it
    return result


def run_worker(spec: WorkerSpec) -> dict:
    """Entry point of one load process: raise the fd limit, run the clients on uvloop, return samples."""
    import uvloop

    raise_nofile_limit()
    # No garbage collection during the level. Thousands of clients' sockets, tasks and buffers are ~100 tracked
    # objects each, and every full collection walked them all: 2-3.5 s pauses, 13-14 s of a load process's 60 s
    # at 10,000 clients (loaded box), its handshakes and reads stalled behind them; with the heap frozen every
    # second instead, the young collections still took ~8 s. A level is a minute: its cyclic garbage can wait.
    gc.disable()
    try:
        return asdict(uvloop.run(_run(spec)))
    finally:
        gc.enable()
