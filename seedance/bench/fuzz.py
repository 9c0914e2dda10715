"""`seedance bench fuzz`: throw malformed input at a running server while a canary stream measures the damage.

Four fuzzers run at once against one server: WebSocket JSON messages (mutated `generate`, `cancel`, `credit`,
`priority`, `ping`, `resume`, `reauth`, and byte-level corruptions of them), client binary frames (random and
MTF1-shaped bytes), OpenAI Realtime events on /v1/realtime (mutated `session.update`, `input_audio_buffer.*`,
`conversation.item.*`, `response.create`, `response.cancel`, random binary messages), and HTTP bodies on every
route (mutated OpenAI, polling and ticket bodies, query strings, methods, content types). A canary WebSocket
connection runs the same greedy request over and over; its text must equal what it was on a quiet server, and its
latency (time to each message) is compared with the quiet run.

The canary runs in a process of its own, a user apart from the attacker: in the fuzz client's event loop its
timings waited for the fuzzers' turns. The fuzz client shares the machine's cores with the server, so the report
also has the canary measured quiet again beside a burner that takes the CPU the fuzz client took (its cores' worth,
`fuzz_client_cores`): the quiet latency on a machine as loaded by the client, without the attack.

A maximum grows with the number of samples, so the quiet reference for the canary's max is a quiet run of as many
requests as the canary made under fuzz (`quiet_matched`, after the fuzz; the 8-request quiet run before it is the
reference text). `attacker="idle"` runs the fuzzers on a thread of SCHED_IDLE policy (and the burner likewise),
the canary and the server at their normal priority: on a machine where the attacker has to share the server's
cores, the attacker then takes only the CPU the server leaves. That models an attacker on other hardware (the
messages and bodies are the same, their rate is what the server leaves room for: `fuzz_rate_per_s`); it is the
harness's setting, not the server's, and the report says which ran.

What is counted as a defect (docs/reliability.md): the server process exiting, any HTTP 5xx or a non-JSON error
body, an error code or close code the protocol does not document, and a hang (a request without an answer, or a
connection that does not answer a ping, within `hang_timeout_s`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing as mp
import os
import random
import resource
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from seedance.bench.server_process import ServerProcess, launch
from seedance.bench.stats import percentiles_ms
from seedance.protocol import CloseCode
from seedance.protocol.errors import ERROR_CODES
from seedance.protocol.realtime_events import REALTIME_ERROR_CODES
from seedance.server.http.config import ServerConfig
from seedance.server.http.http_errors import HTTP_ERROR_CODES

CANARY = {"type": "generate", "prompt": "And God said unto Moses,", "max_tokens": 16, "temperature": 0,
          "ignore_eos": True}
# The server the harness starts: rate limits off so the fuzz reaches the parsers, small generations so the
# engine is not the bottleneck on a small machine; everything else is the default.
SERVER_SETTINGS = {"ws_messages_per_s": 0, "http_requests_per_s": 0, "max_connections_per_ip": 0,
                   "max_tokens_limit": 16, "max_prompt_tokens": 256, "num_kv_blocks": 512, "max_jobs": 256,
                   "poll_max_wait_ms": 200, "job_ttl_s": 5}
DOCUMENTED_CLOSE_CODES = frozenset(int(c) for c in CloseCode)
DEEP = "[" * 5000 + "]" * 5000  # deeper than any recursion limit
RAW_VALUES = ["null", "true", "false", "0", "-1", "1", "2147483648", "9223372036854775808", "1" * 400,
              "-" + "9" * 400, "1e308", "1e400", "-0.0", "0.5", "NaN", "Infinity", '""', '"x"',
              json.dumps("y" * 5000), '"\\ud800"', '"\\udc00x"', '"\\u0000"', json.dumps("☃ \U0001f600"), "[]", "{}",
              '[1,2,3]', '["a"]', '{"a":{"b":{"c":1}}}', DEEP]
WS_TEMPLATES = [
    {"type": "generate", "id": "g", "prompt": "In the beginning", "max_tokens": 4},
    {"type": "generate", "id": "m", "messages": [{"role": "user", "content": "Amen"}], "max_tokens": 4,
     "binary": True, "credit": 2, "stop": ["."], "seed": 1, "logprobs": 2, "session": "s"},
    {"type": "generate", "id": "b", "prompt_b64": base64.b64encode(struct.pack("<3I", 1, 2, 3)).decode(),
     "max_tokens": 2, "prompt_format": "token_ids_u32le"},
    {"type": "cancel", "id": "g"}, {"type": "credit", "id": "g", "tokens": 4}, {"type": "priority", "id": "g",
                                                                              "priority": -1},
    {"type": "ping", "ts": 1.5}, {"type": "resume", "session": "s", "id": "g", "last_seq": 0},
    {"type": "reauth", "token": "x.y.z"},
]
REALTIME_TEMPLATES = [
    {"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief.", "max_output_tokens": 4,
                                           "output_modalities": ["text"], "temperature": 0.5}},
    {"type": "input_audio_buffer.append", "audio": "AAAA"}, {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"}, {"type": "output_audio_buffer.clear"},
    {"type": "conversation.item.create", "item": {"type": "message", "id": "i1", "role": "user",
                                                  "content": [{"type": "input_text", "text": "Amen"}]}},
    {"type": "conversation.item.create", "previous_item_id": "root", "item": {
        "type": "message", "role": "system", "content": [{"type": "input_text", "text": "In the beginning"}]}},
    {"type": "conversation.item.create", "item": {"type": "message", "id": "open", "role": "user",
                                                  "status": "in_progress", "content": []}},
    {"type": "conversation.item.append", "item_id": "open", "text": "Blessed are", "done": False},
    {"type": "conversation.item.delete", "item_id": "i1"},
    {"type": "conversation.item.truncate", "item_id": "i1", "content_index": 0, "audio_end_ms": 0},
    {"type": "conversation.item.retrieve", "item_id": "i1"},
    {"type": "response.create", "response": {"max_output_tokens": 3, "instructions": "x", "temperature": 0}},
    {"type": "response.create", "response": {"conversation": "none", "max_output_tokens": 2, "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Rain?"}]}]}},
    {"type": "response.create"}, {"type": "response.cancel"}, {"type": "response.cancel", "response_id": "r"},
]
HTTP_TEMPLATES = [
    ("POST", "/v1/completions", {"model": "seedance-tiny", "prompt": "In the beginning", "max_tokens": 4,
                                 "temperature": 0.7, "top_p": 0.9, "stream": False, "logprobs": 1, "seed": 3}),
    ("POST", "/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 3, "stream": True,
                                 "stream_options": {"include_usage": True}, "stop": ["x"], "session": "s"}),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Amen"}], "max_tokens": 4,
                                      "stream": True, "top_logprobs": 2, "logprobs": True, "priority": 0}),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                                      "max_completion_tokens": 2, "n": 1, "stop_token_ids": [5]}),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Rain?"}], "max_tokens": 12,
                                      "tools": [{"type": "function", "function": {"name": "f", "parameters": {
                                          "type": "object", "properties": {"a": {"type": "integer"}}}}}],
                                      "tool_choice": "required", "n": 2, "logit_bias": {"5": 1.5}}),
    ("POST", "/v1/completions", {"prompt": "Amen", "max_tokens": 8, "presence_penalty": 0.5,
                                 "frequency_penalty": 0.5, "repetition_penalty": 1.1, "stream": True,
                                 "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                                     "type": "object", "properties": {"b": {"type": "string"}}}}}}),
    ("POST", "/v1/jobs", {"prompt": "Blessed are", "max_tokens": 4, "temperature": 0}),
    ("POST", "/v1/tickets", {}),
    ("POST", "/v1/embeddings", {"model": "seedance-tiny", "input": ["Amen", [1, 2, 3]], "encoding_format": "base64"}),
    ("POST", "/tokenize", {"prompt": "In the beginning", "return_token_strs": True, "with_pieces": True}),
    ("POST", "/tokenize", {"messages": [{"role": "user", "content": "Amen"}], "add_generation_prompt": True}),
    ("POST", "/detokenize", {"tokens": [1, 2, 3]}),
]
GET_PATHS = ["/v1/jobs/{job}?after={n}&wait_ms={n}", "/v1/models/{s}", "/v1/models", "/healthz", "/readyz", "/health",
             "/stats", "/metrics", "/v1/whoami", "/static/{s}", "/{s}"]
CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded", "", "application/json; "
                 "charset=latin-1", "multipart/form-data; boundary=x"]


@dataclass
class Tally:
    sent: int = 0
    replies: Counter = field(default_factory=Counter)  # error codes (WS) or statuses (HTTP)
    closes: Counter = field(default_factory=Counter)  # WS close codes
    server_errors: int = 0  # HTTP 5xx, or a WS `internal` error
    not_json: int = 0  # an HTTP error body that is not the documented JSON shape
    undocumented: Counter = field(default_factory=Counter)
    hangs: int = 0
    examples: list[str] = field(default_factory=list)  # a few inputs behind the defects, to reproduce them

    def defect(self, what: str, payload: Any) -> None:
        if len(self.examples) < 20:
            self.examples.append(f"{what}: {str(payload)[:300]}")


# ---------------------------------------------------------------------------------------------- inputs


class Mutator:
    """Seeded mutations of valid messages: a field set to an odd JSON value, removed, added, the whole body
    replaced, or the serialized bytes cut, flipped or spliced."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def value(self) -> str:
        rng = self.rng
        if rng.random() < 0.6:
            return rng.choice(RAW_VALUES)
        n = rng.choice([0, 1, 7, 100])
        return json.dumps("".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(n)))

    def body(self, template: dict) -> str:
        rng = self.rng
        fields = {k: json.dumps(v) for k, v in template.items()}
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            if op < 0.55 and fields:
                fields[rng.choice(list(fields))] = self.value()
            elif op < 0.7 and fields:
                del fields[rng.choice(list(fields))]
            elif op < 0.85:
                name = rng.choice(["type", "id", "session", "prompt", "messages", "temperature", "top_p", "top_k",
                                   "max_tokens", "stop", "credit", "priority", "logprobs", "seed", "x" * 300])
                fields[name] = self.value()
            else:
                return self.value()
        text = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"
        if rng.random() < 0.15:
            text = self.corrupt(text.encode()).decode("utf-8", "surrogateescape")
        return text

    def corrupt(self, raw: bytes) -> bytes:
        rng = self.rng
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            if op < 0.3 and data:
                del data[rng.randrange(len(data)):]  # truncated
            elif op < 0.6 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            else:
                at = rng.randrange(len(data) + 1)
                data[at:at] = rng.choice([b"\xff", b"\xed\xa0\x80", b"\x00", b'"', b"{", b"\\u", b",,"])
        return bytes(data)

    def binary(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.5:
            return b"MTF1" + struct.pack("<BBHI", rng.randrange(4), rng.randrange(256), rng.randrange(65536),
                                         rng.randrange(2**32)) + rng.randbytes(rng.randrange(64))
        return rng.randbytes(rng.choice([0, 1, 16, 1000]))


# ---------------------------------------------------------------------------------------------- canary


@dataclass
class CanaryRun:
    texts: list[str] = field(default_factory=list)
    gaps_s: list[float] = field(default_factory=list)  # time to each message of a request (first: from send)
    received: list[float] = field(default_factory=list)  # perf_counter at each message, to line up with traces
    index: list[int] = field(default_factory=list)  # each message's place in its request (0: the first)
    failures: list[str] = field(default_factory=list)
    policy: str = ""  # the canary process's scheduling policy (os.sched_getscheduler), to show it ran normal


def _policy_name(policy: int) -> str:
    names = {getattr(os, n): n[6:].lower() for n in ("SCHED_OTHER", "SCHED_BATCH", "SCHED_IDLE", "SCHED_FIFO",
                                                        "SCHED_RR") if hasattr(os, n)}
    return names.get(policy, str(policy))


def _own_policy() -> str:
    return _policy_name(os.sched_getscheduler(0)) if hasattr(os, "sched_getscheduler") else "unknown"


async def canary(ws_url: str, stop: asyncio.Event, runs: int | None, timeout_s: float,
                 connected: Callable[[], None] | None = None) -> CanaryRun:
    """Greedy requests one after another on their own connection until `stop` (or `runs` of them)."""
    out = CanaryRun(policy=_own_policy())
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0, heartbeat=None) as ws:
        if connected is not None:
            connected()
        i = 0
        while not stop.is_set() and (runs is None or i < runs):
            i += 1
            last = time.perf_counter()
            await ws.send_json({**CANARY, "id": f"canary-{i}"})
            text, done, first = [], False, len(out.index)
            while not done:
                try:
                    msg = await ws.receive(timeout=timeout_s)
                except TimeoutError:
                    out.failures.append(f"request {i}: nothing for {timeout_s} s")
                    return out
                if msg.type != aiohttp.WSMsgType.TEXT:
                    out.failures.append(f"request {i}: connection ended: {msg.type!r} {msg.data!r}")
                    return out
                now = time.perf_counter()
                out.gaps_s.append(now - last)
                out.received.append(now)
                out.index.append(len(out.index) - first)
                last = now
                data = json.loads(msg.data)
                for m in data if isinstance(data, list) else [data]:
                    if m["type"] == "chunk":
                        text.append(m["text"])
                    elif m["type"] == "done":
                        done = True
                    elif m["type"] == "error":
                        out.failures.append(f"request {i}: {m}")
            out.texts.append("".join(text))
    return out


def _canary_main(ws_url: str, runs: int | None, timeout_s: float, stop, started, conn) -> None:
    """The canary process: requests until `stop` is set (or `runs` of them); its CanaryRun back through conn.
    `started` is set once it is connected."""

    async def main() -> CanaryRun:
        done = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.05)
            done.set()

        watcher = asyncio.create_task(watch())
        try:
            return await canary(ws_url, done, runs, timeout_s, started.set)
        finally:
            watcher.cancel()

    conn.send(asdict(asyncio.run(main())))
    conn.close()


class CanaryProcess:
    """canary() in a process of its own (spawned), so the fuzzers' event loop never delays its reads."""

    def __init__(self, ws_url: str, runs: int | None, timeout_s: float) -> None:
        ctx = mp.get_context("spawn")
        self.stop, self.started = ctx.Event(), ctx.Event()
        self.conn, child = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_canary_main, args=(ws_url, runs, timeout_s, self.stop, self.started,
                                                              child), name="seedance-fuzz-canary", daemon=True)
        self.process.start()
        child.close()

    async def connected(self, timeout_s: float = 60) -> None:
        """Wait until the canary is connected (a spawned interpreter takes a second to import its client)."""
        await asyncio.to_thread(self.started.wait, timeout_s)

    async def result(self, stop: bool = True) -> CanaryRun:
        """Stop it (or let it finish its runs) and take its timings."""
        if stop:
            self.stop.set()
        try:
            data = await asyncio.to_thread(self.conn.recv)
        except EOFError:
            return CanaryRun(failures=["the canary process ended without a result"])
        finally:
            await asyncio.to_thread(self.process.join, 10)
        return CanaryRun(**data)


def _burn(cores: float, stop, idle: bool = False) -> None:
    """Take `cores` of one core (0..1) until stop: busy for that share of every 10 ms, asleep the rest. idle: at
    SCHED_IDLE, as the attacker it stands in for ran."""
    if idle:
        _set_idle()
    busy, period = min(max(cores, 0.0), 1.0) * 0.01, 0.01
    while not stop.is_set():
        start = time.perf_counter()
        while time.perf_counter() - start < busy:
            pass
        time.sleep(max(0.0, period - (time.perf_counter() - start)))


async def canary_beside_burner(ws_url: str, runs: int, timeout_s: float, cores: float,
                               idle: bool = False) -> CanaryRun:
    """The quiet canary again, while processes burn `cores` of CPU (the fuzz client's share of the machine) at
    the attacker's scheduling policy."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    burners = [ctx.Process(target=_burn, args=(min(1.0, cores - i), stop, idle), daemon=True)
               for i in range(int(-(-cores // 1)))]
    for b in burners:
        b.start()
    try:
        await asyncio.sleep(0.5)  # the burners are spawned and burning
        return await CanaryProcess(ws_url, runs, timeout_s).result(stop=False)
    finally:
        stop.set()
        for b in burners:
            await asyncio.to_thread(b.join, 5)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _set_idle() -> None:
    """This thread (Linux: the policy is a thread's) to SCHED_IDLE: it runs when nothing else wants the core.
    An unprivileged thread may always lower itself this way (sched(7)); the way back would need privilege, hence
    a thread of its own for the attacker."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _attack_in_thread(attack: Callable[[], Awaitable[Any]], idle: bool) -> tuple[Any, str]:
    """Run the fuzzers' event loop on a thread of its own (SCHED_IDLE when idle); returns their result and the
    thread's policy. The processes the harness spawns meanwhile (the canary) are forked from
    the main thread, so they keep its policy."""
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            if idle:
                _set_idle()
            box["policy"] = _own_policy()
            box["result"] = asyncio.run(attack())
        except BaseException as err:  # re-raised on the caller's side
            box["error"] = err

    thread = threading.Thread(target=main, name="seedance-fuzz-attack", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"], box["policy"]


# ---------------------------------------------------------------------------------------------- fuzzers


async def _answers_ping(ws: aiohttp.ClientWebSocketResponse, tally: Tally, timeout_s: float) -> bool:
    """Send a ping and read (tallying) until its pong; False if the connection ended or stayed silent."""
    ts = time.time()
    await ws.send_json({"type": "ping", "ts": ts})
    return await _read_until(ws, tally, timeout_s, "no pong", lambda data: _tally_ws_text(data, tally, ts))


async def _read_until(ws: aiohttp.ClientWebSocketResponse, tally: Tally, timeout_s: float, silent: str,
                      answered: Callable[[str], bool]) -> bool:
    """Read text messages until `answered` says one is the answer (True); False, counted, if the connection
    ended or stayed silent for timeout_s (the defect `silent`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            tally.hangs += 1
            tally.defect(silent, f"within {timeout_s} s")
            return False
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                        aiohttp.WSMsgType.ERROR):
            _closed(ws, tally)
            return False
        if msg.type == aiohttp.WSMsgType.TEXT and answered(msg.data):
            return True


def _closed(ws: aiohttp.ClientWebSocketResponse, tally: Tally) -> None:
    code = ws.close_code
    tally.closes[code] += 1
    if code not in DOCUMENTED_CLOSE_CODES:
        tally.undocumented[f"close {code}"] += 1


async def fuzz_realtime(url: str, count: int, seed: int, batch: int, hang_timeout_s: float) -> Tally:
    """`count` fuzzed Realtime events on one connection (reconnecting after each close). After every `batch`, a
    `conversation.item.retrieve` of an item that does not exist must come back as its `item_not_found` error:
    events are answered in order, so that is the connection's ping."""
    tally, mutate = Tally(), Mutator(seed)
    probes = 0

    async def send_one(ws: aiohttp.ClientWebSocketResponse) -> None:
        if mutate.rng.random() < 0.03:
            await ws.send_bytes(mutate.binary())
        else:
            await ws.send_str(mutate.body(mutate.rng.choice(REALTIME_TEMPLATES)))

    async def answers(ws: aiohttp.ClientWebSocketResponse) -> bool:
        nonlocal probes
        probes += 1
        return await _realtime_answers(ws, tally, f"probe-{seed}-{probes}", hang_timeout_s)

    return await _fuzz_connection(url, count, batch, hang_timeout_s, tally, send_one, answers)


async def _fuzz_connection(url: str, count: int, batch: int, hang_timeout_s: float, tally: Tally,
                           send_one: Callable[[aiohttp.ClientWebSocketResponse], Awaitable[None]],
                           answers: Callable[[aiohttp.ClientWebSocketResponse], Awaitable[bool]]) -> Tally:
    """The WebSocket fuzzers' loop: `send_one` `batch` times, then `answers` must say the connection still
    answers; reconnect after each close, until `count` are sent."""
    async with aiohttp.ClientSession() as http:
        while tally.sent < count:
            try:
                ws = await asyncio.wait_for(http.ws_connect(url, max_msg_size=0, heartbeat=None), hang_timeout_s)
            except (aiohttp.ClientError, TimeoutError) as err:
                tally.hangs += 1
                tally.defect("connect failed", repr(err))
                await asyncio.sleep(1)
                continue
            async with ws:
                alive = True
                while alive and tally.sent < count:
                    for _ in range(min(batch, count - tally.sent)):
                        tally.sent += 1
                        try:
                            await send_one(ws)
                        except (ConnectionError, aiohttp.ClientError, UnicodeEncodeError):
                            break
                    alive = await answers(ws)
    return tally


async def _realtime_answers(ws: aiohttp.ClientWebSocketResponse, tally: Tally, probe: str, timeout_s: float) -> bool:
    await ws.send_str(json.dumps({"type": "conversation.item.retrieve", "event_id": probe, "item_id": probe}))

    def answered(data: str) -> bool:
        event = json.loads(data)
        if event.get("type") != "error":
            return False
        error = event.get("error") or {}
        code = error.get("code")
        tally.replies[code] += 1
        if code == "internal":
            tally.server_errors += 1
            tally.defect("realtime internal", event)
        if code not in REALTIME_ERROR_CODES and code not in ERROR_CODES:
            tally.undocumented[f"realtime error {code}"] += 1
            tally.defect("undocumented realtime code", event)
        return error.get("event_id") == probe

    return await _read_until(ws, tally, timeout_s, "no answer to the probe", answered)


def _tally_ws_text(raw: str, tally: Tally, pong_ts: float | None = None) -> bool:
    """Count the error codes in one server text message; True when it holds the pong for pong_ts."""
    data = json.loads(raw)
    pong = False
    for m in data if isinstance(data, list) else [data]:
        if m.get("type") == "error":
            code = m.get("code")
            tally.replies[code] += 1
            if code == "internal":
                tally.server_errors += 1
                tally.defect("ws internal", m)
            if code not in ERROR_CODES:
                tally.undocumented[f"error {code}"] += 1
        elif m.get("type") == "pong" and m.get("ts") == pong_ts:
            pong = True
    return pong


async def fuzz_ws(ws_url: str, count: int, binary: bool, seed: int, batch: int, hang_timeout_s: float) -> Tally:
    """`count` fuzzed messages on one connection (reconnecting after each close), a ping check every `batch`."""
    tally, mutate = Tally(), Mutator(seed)

    async def send_one(ws: aiohttp.ClientWebSocketResponse) -> None:
        if binary:
            await ws.send_bytes(mutate.binary())
        else:
            await ws.send_str(mutate.body(mutate.rng.choice(WS_TEMPLATES)))

    async def answers(ws: aiohttp.ClientWebSocketResponse) -> bool:
        return await _answers_ping(ws, tally, hang_timeout_s)

    return await _fuzz_connection(ws_url, count, batch, hang_timeout_s, tally, send_one, answers)


def _http_input(mutate: Mutator, job_ids: list[str]) -> tuple[str, str, bytes, str]:
    rng = mutate.rng
    if rng.random() < 0.8:
        method, path, template = rng.choice(HTTP_TEMPLATES)
        body = mutate.body(template).encode("utf-8", "surrogateescape")
    else:
        method = rng.choice(["GET", "DELETE", "PUT", "PATCH", "POST"])
        path = rng.choice(GET_PATHS).format(job=rng.choice(job_ids or ["job-x"]), s="%00" + str(rng.random()),
                                            n=rng.choice(["-1", "0", "x", "1" * 40, "-5", "%ff"]))
        body = mutate.corrupt(b'{"prompt": "x"}') if method != "GET" else b""
    ctype = "application/json" if rng.random() < 0.8 else rng.choice(CONTENT_TYPES)
    return method, path, body, ctype


async def fuzz_http(base_url: str, count: int, seed: int, concurrency: int, hang_timeout_s: float) -> Tally:
    tally, mutate = Tally(), Mutator(seed)
    job_ids: list[str] = []
    timeout = aiohttp.ClientTimeout(total=hang_timeout_s)

    async def one(http: aiohttp.ClientSession) -> None:
        while tally.sent < count:
            tally.sent += 1
            method, path, body, ctype = _http_input(mutate, job_ids)
            headers = {"Content-Type": ctype} if ctype else {}
            try:
                async with http.request(method, base_url + path, data=body, headers=headers) as reply:
                    raw = await reply.read()
                    status = reply.status
                    is_json = reply.content_type == "application/json"
            except TimeoutError:
                tally.hangs += 1
                tally.defect(f"hang {method} {path}", body)
                continue
            except aiohttp.ClientError as err:
                tally.replies[f"client error {type(err).__name__}"] += 1
                continue
            tally.replies[status] += 1
            if status >= 500:
                tally.server_errors += 1
                tally.defect(f"{status} {method} {path}", body)
            if status >= 400:
                _check_http_error(raw, is_json, status, tally, f"{method} {path}", body)
            elif status == 202 and is_json:
                job_ids.append(json.loads(raw).get("id", ""))
                del job_ids[:-50]

    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(*(one(http) for _ in range(concurrency)))
    return tally


def _check_http_error(raw: bytes, is_json: bool, status: int, tally: Tally, what: str, body: bytes) -> None:
    try:
        code = json.loads(raw)["error"]["code"] if is_json else None
    except (ValueError, KeyError, TypeError):
        code = None
    if code is None:
        tally.not_json += 1
        tally.defect(f"{status} non-JSON error for {what}", body)
    elif code not in HTTP_ERROR_CODES:
        tally.undocumented[f"http {status} {code}"] += 1
        tally.defect(f"undocumented {code} for {what}", body)


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class FuzzReport:
    settings: dict
    quiet: dict  # the quiet canary before the fuzz (quiet_runs requests): the reference text
    loaded: dict
    quiet_beside_fuzz_cpu: dict  # the quiet canary again, beside a burner taking the fuzz client's CPU
    fuzz_client_cores: float  # the fuzz client's CPU seconds over the fuzz's wall seconds
    canary_text_equal: bool
    canary_failures: list[str]
    ws_json: dict
    ws_binary: dict
    http: dict
    realtime: dict
    process_exited: bool
    healthz_after: bool
    duration_s: float
    # the quiet canary after the fuzz, as many requests as under fuzz (quiet_match; else empty): a max over as
    # many samples as the loaded max
    quiet_matched: dict = field(default_factory=dict)
    max_ratio: dict = field(default_factory=dict)  # the canary's max under fuzz over each quiet run's max
    attacker: dict = field(default_factory=dict)  # the fuzzers' scheduling policy and rate, the canary's policy

    @property
    def defects(self) -> dict[str, int]:
        parts = (self.ws_json, self.ws_binary, self.http, self.realtime)
        return {
            "exits": int(self.process_exited or not self.healthz_after),
            "5xx": sum(p["server_errors"] for p in parts),
            "non_json_errors": self.http["not_json"],
            "hangs": sum(p["hangs"] for p in parts),
            "undocumented": sum(sum(p["undocumented"].values()) for p in parts),
            "canary_mismatch": int(not self.canary_text_equal) + len(self.canary_failures),
        }


def _latency(run: CanaryRun) -> dict:
    """p50 / p99 / max of the time to each canary message; and apart, of each request's first message (its
    admission, the step in flight and its prefill) and of the later ones (one decode step each)."""
    p = percentiles_ms(run.gaps_s, (50, 99))
    first = [g for g, i in zip(run.gaps_s, run.index, strict=True) if i == 0]
    later = [g for g, i in zip(run.gaps_s, run.index, strict=True) if i > 0]
    pf, pl = percentiles_ms(first, (50, 99)), percentiles_ms(later, (50, 99))
    return {"requests": len(run.texts), "messages": len(run.gaps_s), "p50_ms": p["p50"], "p99_ms": p["p99"],
            "max_ms": max(run.gaps_s) * 1000 if run.gaps_s else None,
            "first_p50_ms": pf["p50"], "first_max_ms": max(first) * 1000 if first else None,
            "later_p50_ms": pl["p50"], "later_p99_ms": pl["p99"], "later_max_ms": max(later) * 1000 if later else None}


def _ratio(loaded: dict, quiet: dict) -> float | None:
    if not loaded.get("max_ms") or not quiet.get("max_ms"):
        return None
    return round(loaded["max_ms"] / quiet["max_ms"], 2)


def _tally_dict(t: Tally) -> dict:
    d = asdict(t)
    for name in ("replies", "closes", "undocumented"):
        d[name] = {str(k): v for k, v in sorted(getattr(t, name).items(), key=lambda kv: -kv[1])}
    return d


async def run_fuzz(ws_url: str, http_url: str, *, ws_messages: int, binary_frames: int, http_bodies: int,
                   realtime_events: int = 0, seed: int = 0, ws_connections: int = 4, http_concurrency: int = 8,
                   quiet_runs: int = 8, quiet_match: bool = True, attacker: str = "normal",
                   batch: int = 50, hang_timeout_s: float = 20.0, server: ServerProcess | None = None) -> FuzzReport:
    """quiet_match: after the fuzz, the quiet canary (alone, then beside the burner) runs as many requests as it
    did under fuzz, else quiet_runs. attacker: "normal" or "idle" (the fuzzers' thread at SCHED_IDLE)."""
    if attacker not in ("normal", "idle"):
        raise ValueError("attacker must be normal or idle")
    if attacker == "idle" and not hasattr(os, "SCHED_IDLE"):
        raise ValueError("attacker idle needs SCHED_IDLE (Linux)")
    t0 = time.perf_counter()
    quiet = await CanaryProcess(ws_url, quiet_runs, hang_timeout_s).result(stop=False)
    loaded_canary = CanaryProcess(ws_url, None, hang_timeout_s)
    await loaded_canary.connected()

    async def attack() -> list:
        per_conn = -(-ws_messages // ws_connections)
        ws_tasks = [fuzz_ws(ws_url, min(per_conn, ws_messages - i * per_conn), False, seed + i, batch,
                            hang_timeout_s) for i in range(ws_connections) if ws_messages - i * per_conn > 0]
        return await asyncio.gather(
            asyncio.gather(*ws_tasks),
            fuzz_ws(ws_url, binary_frames, True, seed + 1000, batch, hang_timeout_s),
            fuzz_http(http_url, http_bodies, seed + 2000, http_concurrency, hang_timeout_s),
            fuzz_realtime(http_url.replace("http", "ws", 1) + "/v1/realtime", realtime_events, seed + 3000, batch,
                          hang_timeout_s),
        )

    fuzz_t0, fuzz_cpu0 = time.perf_counter(), _cpu_s()
    fuzzers, attack_policy = await asyncio.to_thread(_attack_in_thread, attack, attacker == "idle")
    fuzz_wall = time.perf_counter() - fuzz_t0
    fuzz_cores = (_cpu_s() - fuzz_cpu0) / fuzz_wall
    loaded = await loaded_canary.result()
    matched_runs = max(len(loaded.texts), 1) if quiet_match else quiet_runs
    matched = await CanaryProcess(ws_url, matched_runs, hang_timeout_s).result(stop=False) if quiet_match else None
    beside = await canary_beside_burner(ws_url, matched_runs, hang_timeout_s, fuzz_cores, attacker == "idle")
    ws_json = Tally()
    for t in fuzzers[0]:
        ws_json.sent += t.sent
        ws_json.hangs += t.hangs
        ws_json.server_errors += t.server_errors
        ws_json.replies.update(t.replies)
        ws_json.closes.update(t.closes)
        ws_json.undocumented.update(t.undocumented)
        ws_json.examples += t.examples[: 20 - len(ws_json.examples)]
    healthy = False
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
                http.get(http_url + "/healthz") as reply:
            healthy = reply.status == 200
    except (aiohttp.ClientError, TimeoutError):
        pass
    reference = quiet.texts[0] if quiet.texts else None
    matched_texts = matched.texts if matched is not None else []
    equal = bool(quiet.texts) and all(t == reference for t in quiet.texts + loaded.texts + beside.texts
                                      + matched_texts)
    sent = sum(t.sent for t in fuzzers[0]) + sum(t.sent for t in fuzzers[1:])
    lat = {"quiet": _latency(quiet), "loaded": _latency(loaded), "beside": _latency(beside),
           "matched": _latency(matched) if matched is not None else {}}
    report = FuzzReport(
        settings={"ws_messages": ws_messages, "binary_frames": binary_frames, "http_bodies": http_bodies,
                  "realtime_events": realtime_events, "seed": seed, "ws_connections": ws_connections,
                  "http_concurrency": http_concurrency, "quiet_runs": quiet_runs, "quiet_match": quiet_match,
                  "attacker": attacker, "batch": batch, "hang_timeout_s": hang_timeout_s,
                  "server": SERVER_SETTINGS if server else None},
        quiet=lat["quiet"], loaded=lat["loaded"], quiet_beside_fuzz_cpu=lat["beside"],
        fuzz_client_cores=round(fuzz_cores, 2), canary_text_equal=equal,
        canary_failures=quiet.failures + loaded.failures + beside.failures + (matched.failures if matched else []),
        ws_json=_tally_dict(ws_json),
        ws_binary=_tally_dict(fuzzers[1]), http=_tally_dict(fuzzers[2]), realtime=_tally_dict(fuzzers[3]),
        process_exited=server is not None and server.process.poll() is not None, healthz_after=healthy,
        duration_s=round(time.perf_counter() - t0, 1), quiet_matched=lat["matched"],
        max_ratio={name: _ratio(lat["loaded"], lat[name]) for name in ("quiet", "matched", "beside")},
        attacker={"policy": attack_policy, "canary_policy": loaded.policy, "fuzz_s": round(fuzz_wall, 1),
                  "fuzz_rate_per_s": round(sent / fuzz_wall)})
    report.canary_runs = (quiet, loaded)  # the raw timings, for scripts/fuzz_trace.py (not in the JSON)
    return report


def launch_fuzz_server(log_dir: str | None = None, **overrides: object) -> ServerProcess:
    log_dir = log_dir or tempfile.mkdtemp(prefix="seedance-fuzz-")
    settings = {**SERVER_SETTINGS, "session_store": f"sqlite://{Path(log_dir) / 'sessions.db'}", **overrides}
    return launch(settings, Path(log_dir) / "server.log", ready_timeout_s=120)


def run_fuzz_bench(url: str | None, output: str | None, server_settings: dict | None = None,
                   **kw: Any) -> FuzzReport:
    server = None if url else launch_fuzz_server(**server_settings or {})
    base = url or server.http
    try:
        report = asyncio.run(run_fuzz(base.replace("http", "ws", 1) + "/v1/stream", base, server=server, **kw))
        if server is not None:  # the engine mode in effect, the server's default when not set
            report.settings["server"] = {**SERVER_SETTINGS, "engine_mode": ServerConfig().engine_mode,
                                         **(server_settings or {})}
    finally:
        if server is not None:
            server.stop()
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps({**asdict(report), "defects": report.defects}, indent=2) + "\n")
    return report
