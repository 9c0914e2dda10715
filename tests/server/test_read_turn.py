"""A connection's reader gives the event loop back during a burst of buffered messages (read_turn.py): a socket
returns a buffered message without suspending, so before, a client's whole burst (the fuzz harness's 50 between
pings) ran in one task step while every other connection, the engine's step deliveries and a canary's tokens
waited. Real WsConnection, protocol and WsCommands; the socket hands out a burst already buffered."""

from __future__ import annotations

import asyncio
import collections
import json

import pytest
from aiohttp import WSMessage, WSMsgType

from seedance.engine.config import EngineConfig
from seedance.engine.engine_front import EngineFront
from seedance.protocol.flow import FlowLimits
from seedance.protocol.scopes import ALL_SCOPES
from seedance.protocol.server_connection import ServerConnection
from seedance.server.transports import read_turn
from seedance.server.transports.read_turn import ReadTurn
from seedance.server.transports.ws import WsConnection
from seedance.server.transports.ws_commands import WsCommands


class BufferedSocket:
    """A burst already received: receive() returns each message without suspending, as aiohttp's and picows's
    queues do; then the close. Records what is sent, and what else the loop ran meanwhile."""

    def __init__(self, messages: list[str], log: list) -> None:
        self.queue = collections.deque(WSMessage(WSMsgType.TEXT, m, None) for m in messages)
        self.log = log
        self.closed = False
        self.close_code = None

    async def receive(self) -> WSMessage:
        if self.queue:
            return self.queue.popleft()
        return WSMessage(WSMsgType.CLOSE, 1000, None)

    async def send_frame(self, message: bytes, opcode: WSMsgType) -> None:
        self.log.append(json.loads(message).get("type"))

    async def ping(self, message: bytes = b"") -> None:
        pass

    async def pong(self, message: bytes = b"") -> None:
        pass

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        self.closed, self.close_code = True, code
        return True


class NoLimit:
    def rate_exceeded(self) -> None:
        return None


def reader_of(ws: BufferedSocket) -> WsConnection:
    conn = WsConnection(ws, None)
    conn.protocol = ServerConnection(max_message_bytes=4096, max_requests=8, scopes=ALL_SCOPES, flow=FlowLimits(),
                                     now=asyncio.get_running_loop().time())
    conn.commands = WsCommands(conn.protocol, EngineFront(EngineConfig(), None, 2048), None, None, conn.wake,
                               conn._send_batch, lambda: ws.closed)
    conn.guard = NoLimit()
    return conn


async def burst_with_a_neighbour(n: int) -> list:
    """n pings buffered on one connection; a neighbour's callback (another connection's data, a step's delivery)
    is queued on the loop as the reader starts. Where does it run among the pongs?"""
    log: list = []
    ws = BufferedSocket([json.dumps({"type": "ping", "ts": i}) for i in range(n)], log)
    reader = asyncio.create_task(reader_of(ws)._reader())
    asyncio.get_running_loop().call_soon(log.append, "neighbour")
    await reader
    return log


async def test_a_burst_of_buffered_messages_lets_the_loop_run_others_between_them(monkeypatch):
    monkeypatch.setattr(read_turn, "READ_TURN_S", 0.0)  # every message is a whole turn: a yield after each
    log = await burst_with_a_neighbour(50)
    assert log.count("pong") == 50
    assert log.index("neighbour") <= 1  # before: after all 50 pongs, the burst in one task step


async def test_within_its_turn_a_burst_is_not_interrupted(monkeypatch):
    monkeypatch.setattr(read_turn, "READ_TURN_S", 3600.0)  # the turn never runs out: no yield, no cost
    log = await burst_with_a_neighbour(50)
    assert log.index("neighbour") == 50


@pytest.mark.parametrize("turn_s, yields", [(0.0, 5), (3600.0, 0)])
async def test_read_turn_yields_once_its_turn_has_run_out(monkeypatch, turn_s, yields):
    monkeypatch.setattr(read_turn, "READ_TURN_S", turn_s)
    ran: list[int] = []
    turn = ReadTurn()
    for i in range(5):
        asyncio.get_running_loop().call_soon(ran.append, i)
        await turn.handled()
    assert len(ran) == yields
