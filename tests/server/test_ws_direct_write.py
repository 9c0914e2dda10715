"""The direct write of /v1/stream (server/transports/ws.py `WsConnection.step_ready`): on a socket that sends
without awaiting (picows), an engine step's delivery writes each connection's output from its own callback, one
message per connection per read of steps; whatever needs the writer task (a heartbeat ping, a water mark, a turn
already under way) wakes it instead, and messages keep their order. Real engine streams, step delivery
(EngineFront), protocol connection and WsCommands; the socket records what it is given."""

from __future__ import annotations

import asyncio
import json

from aiohttp import WSMsgType

from seedance.engine.config import EngineConfig
from seedance.engine.engine_front import EngineFront, RequestStream
from seedance.engine.events import FinishReason, TokenEvent
from seedance.protocol.flow import FlowLimits
from seedance.protocol.scopes import ALL_SCOPES
from seedance.protocol.server_connection import ServerConnection
from seedance.server.transports.ws import WsConnection
from seedance.server.transports.ws_commands import WsCommands
from seedance.server.transports.ws_generation import WsGeneration


class DirectSocket:
    """What PicowsSocket offers WsConnection, recording the frames (pongs answer probes at once)."""

    def __init__(self) -> None:
        self.closed = False
        self.close_code = None
        self.sent: list[tuple[str, bytes]] = []
        self.conn: WsConnection | None = None

    def send_now(self, message: bytes, opcode: WSMsgType) -> None:
        self.sent.append(("text" if opcode == WSMsgType.TEXT else "binary", message))

    def ping_now(self, message: bytes) -> None:
        self.sent.append(("ping", message))

    async def send_frame(self, message: bytes, opcode: WSMsgType) -> None:
        self.send_now(message, opcode)

    async def ping(self, message: bytes = b"") -> None:
        self.ping_now(message)

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        self.closed, self.close_code = True, code
        return True

    async def receive(self):
        await asyncio.Event().wait()  # the tests drive the writer only


class Engine(EngineFront):
    """The real step delivery; pause and resume recorded."""

    def __init__(self) -> None:
        super().__init__(EngineConfig(), None, 2048)
        self.calls: list[tuple[str, str]] = []

    def pause(self, request_id: str) -> None:
        self.calls.append(("pause", request_id))

    def resume(self, request_id: str) -> None:
        self.calls.append(("resume", request_id))


def connection(engine: Engine, flow: FlowLimits | None = None) -> tuple[WsConnection, DirectSocket]:
    ws = DirectSocket()
    conn = WsConnection(ws, None)
    conn.protocol = ServerConnection(max_message_bytes=4096, max_requests=8, scopes=ALL_SCOPES,
                                     flow=flow or FlowLimits(), now=asyncio.get_running_loop().time())
    conn.commands = WsCommands(conn.protocol, engine, None, None, conn.wake, conn._send_batch, lambda: ws.closed,
                               step_ready=conn.step_ready)
    ws.conn = conn
    return conn, ws


def open_request(engine: Engine, conn: WsConnection, client_id: str, credit: int | None = None) -> str:
    engine_id = conn.commands.engine_id(client_id)
    stream = RequestStream(engine, engine_id, 4)
    engine._streams[engine_id] = stream
    stream.listener = conn.commands.step_ready
    conn.protocol.open(client_id, WsGeneration(client_id, stream, engine), credit=credit)
    return engine_id


def event(engine_id: str, token_id: int, text: str, finish: FinishReason | None = None) -> TokenEvent:
    return TokenEvent(engine_id, 0, token_id, text, finish_reason=finish, num_prompt_tokens=4)


def texts(ws: DirectSocket) -> list:
    return [json.loads(body) for kind, body in ws.sent if kind == "text"]


async def test_a_step_is_written_from_its_delivery_one_message_per_connection():
    engine = Engine()
    (a, ws_a), (b, ws_b) = connection(engine), connection(engine)
    a1, a2, b1 = open_request(engine, a, "1"), open_request(engine, a, "2"), open_request(engine, b, "1")
    engine._deliver_step([event(a1, 11, "x"), event(b1, 21, "y"), event(a2, 12, "z")], 0.0)
    # no await since the delivery: the writer tasks have not run, the callback wrote
    assert not a.wake.is_set() and not b.wake.is_set()
    assert texts(ws_a) == [[{"type": "chunk", "id": "1", "seq": 0, "text": "x", "token_ids": [11]},
                            {"type": "chunk", "id": "2", "seq": 0, "text": "z", "token_ids": [12]}]]
    assert texts(ws_b) == [{"type": "chunk", "id": "1", "seq": 0, "text": "y", "token_ids": [21]}]
    # two steps in one read (ProcessEngine: _queue_step per frame, then the listeners once): one chunk of both
    engine._queue_step([event(a1, 13, "u")], 0.0)
    engine._queue_step([event(a1, 14, "v", FinishReason.LENGTH)], 0.0)
    engine._wake_listeners()
    chunk, done = texts(ws_a)[-1]
    assert chunk == {"type": "chunk", "id": "1", "seq": 1, "text": "uv", "token_ids": [13, 14]}
    assert done["type"] == "done" and done["id"] == "1" and done["usage"]["completion_tokens"] == 3
    assert list(a.protocol.requests) == ["2"]  # the finished one left the table


async def test_credit_spent_in_a_direct_write_pauses_the_request_in_the_engine():
    engine = Engine()
    conn, ws = connection(engine)
    rid = open_request(engine, conn, "1", credit=1)
    engine._deliver_step([event(rid, 11, "x")], 0.0)
    engine._deliver_step([event(rid, 12, "y")], 0.0)
    assert texts(ws) == [{"type": "chunk", "id": "1", "seq": 0, "text": "x", "token_ids": [11]}]
    assert engine.calls == [("pause", rid)]  # once: the second step's event waits in its stream


async def test_a_step_during_the_writer_tasks_turn_wakes_it_and_keeps_the_order():
    engine = Engine()
    conn, ws = connection(engine)
    rid = open_request(engine, conn, "1")
    conn._in_turn = True  # the task took output and awaits (a pump, a close): a direct write would overtake it
    engine._deliver_step([event(rid, 11, "x")], 0.0)
    assert ws.sent == [] and conn.wake.is_set() and conn.wake.running  # the wake started the writer task
    conn._in_turn = False
    await asyncio.sleep(0.01)  # its turn wrote the step
    engine._deliver_step([event(rid, 12, "y")], 0.0)  # the task is idle again: written directly
    await conn.wake.stop()
    assert [m["seq"] for m in texts(ws)] == [0, 1] and [m["token_ids"] for m in texts(ws)] == [[11], [12]]


async def test_a_due_heartbeat_goes_through_the_writer_task_ping_first():
    engine = Engine()
    conn, ws = connection(engine)
    rid = open_request(engine, conn, "1")
    conn.protocol.backpressure.next_heartbeat_at = asyncio.get_running_loop().time()  # due at the next tick
    engine._deliver_step([event(rid, 11, "x")], 0.0)
    assert ws.sent == [] and conn.wake.is_set()  # the ping needs the task's pump
    await asyncio.sleep(0.01)
    await conn.wake.stop()
    kinds = [kind for kind, _ in ws.sent]
    assert kinds[0] == "ping" and "text" in kinds
    assert texts(ws)[0]["token_ids"] == [11]


async def test_a_connection_that_ended_writes_nothing():
    engine = Engine()
    conn, ws = connection(engine)
    rid = open_request(engine, conn, "1")
    conn._ended = True
    engine._deliver_step([event(rid, 11, "x")], 0.0)
    assert ws.sent == [] and not conn.wake.is_set()


async def test_a_listener_that_raises_does_not_keep_the_others_from_their_step(caplog):
    engine = Engine()
    conn, ws = connection(engine)
    rid = open_request(engine, conn, "1")
    broken = RequestStream(engine, "broken", 4)
    engine._streams["broken"] = broken
    broken.listener = lambda: 1 / 0
    engine._deliver_step([event("broken", 1, "a"), event(rid, 11, "x")], 0.0)
    assert texts(ws) == [{"type": "chunk", "id": "1", "seq": 0, "text": "x", "token_ids": [11]}]
    assert "listener failed" in caplog.text
