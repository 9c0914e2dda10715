"""The writer task started on demand (server/transports/writer_wake.py): an idle /v1/stream connection holds no
writer task, yet its heartbeat still pings through one and closes a peer that stops answering; a turn's wake-ups
are one turn; the task ends when idle unless the connection has live requests."""

from __future__ import annotations

import asyncio

from seedance.engine.events import FinishReason
from seedance.protocol import CloseCode
from seedance.protocol.flow import FlowLimits
from seedance.server.transports.writer_wake import WriterWake
from tests.server.test_ws_direct_write import Engine, connection, event, open_request, texts


async def test_set_starts_one_task_whose_turn_takes_every_set_before_it_runs():
    turns = []
    linger = [False]

    async def turn() -> None:
        turns.append(len(turns))
        await asyncio.sleep(0)

    wake = WriterWake(turn, lambda: linger[0], "w")
    assert not wake.running
    wake.set()
    wake.set()  # before the task ran: the same turn
    assert wake.is_set() and wake.running
    await asyncio.sleep(0.01)
    assert turns == [0] and not wake.running  # nothing set, nothing lingering: the task ended
    linger[0] = True
    wake.set()
    await asyncio.sleep(0.01)
    assert turns == [0, 1] and wake.running and not wake.is_set()  # it waits for the next set
    wake.set()
    await asyncio.sleep(0.01)
    assert turns == [0, 1, 2]
    await wake.stop()
    assert not wake.running
    wake.set()  # stopped: no turn, no task
    await asyncio.sleep(0.01)
    assert turns == [0, 1, 2] and not wake.running and not wake.is_set()


async def test_a_set_during_a_turn_runs_another_turn():
    turns = []

    async def turn() -> None:
        turns.append(1)
        if len(turns) == 1:
            wake.set()  # e.g. a step delivered while the turn awaits
        await asyncio.sleep(0)

    wake = WriterWake(turn, lambda: False, "w")
    wake.set()
    await asyncio.sleep(0.01)
    assert len(turns) == 2 and not wake.running


async def test_an_idle_connection_has_no_writer_task_until_its_heartbeat_and_closes_on_no_pong():
    engine = Engine()
    conn, ws = connection(engine, FlowLimits(heartbeat_interval_s=0.05, heartbeat_max_missed=2))
    conn.heartbeat.arm()
    assert not conn.wake.running  # idle since the handshake: no task
    await asyncio.sleep(0.08)  # one heartbeat due
    assert [kind for kind, _ in ws.sent] == ["ping"]
    assert not conn.wake.running  # the ping's turn ran and its task ended
    conn.protocol.receive_pong(ws.sent[0][1])  # answered: it stays open
    await asyncio.sleep(0.25)  # two more pings unanswered, then the third due closes it
    assert [kind for kind, _ in ws.sent] == ["ping", "ping", "ping"]
    assert ws.closed and ws.close_code == CloseCode.HEARTBEAT_TIMEOUT
    await conn.wake.stop()
    conn.heartbeat.cancel()


async def test_the_task_lingers_while_requests_are_live_and_ends_after_the_last():
    engine = Engine()
    conn, ws = connection(engine)
    rid = open_request(engine, conn, "1")
    conn.direct = None  # an aiohttp socket: every step goes through the task
    engine._deliver_step([event(rid, 11, "x")], 0.0)
    await asyncio.sleep(0.01)
    assert conn.wake.running  # a live request: it waits for the next step rather than ending
    engine._deliver_step([event(rid, 12, "y", FinishReason.LENGTH)], 0.0)
    await asyncio.sleep(0.01)
    sent = [m for body in texts(ws) for m in (body if isinstance(body, list) else [body])]
    assert [m["type"] for m in sent] == ["chunk", "chunk", "done"]
    assert not conn.protocol.requests and not conn.wake.running  # the last one ended: so did the task


async def test_stop_does_not_swallow_a_cancellation_of_its_caller():
    """A connection's end waits in stop() for the writer task; the caller's own cancellation (aiohttp cancels a
    handler whose transport closed) must reach the caller, not vanish with the writer's."""

    async def turn() -> None:
        await asyncio.sleep(0)

    wake = WriterWake(turn, lambda: True, "w")
    wake.set()
    await asyncio.sleep(0.01)
    assert wake.running  # lingering: stop() has a task to cancel and wait for

    async def ending() -> str:
        await wake.stop()
        await asyncio.sleep(1)
        return "went on"

    caller = asyncio.ensure_future(ending())
    await asyncio.sleep(0)  # caller waits in stop() for the cancelled writer
    caller.cancel()
    done, _ = await asyncio.wait([caller], timeout=2)
    assert done and caller.cancelled()
    assert not wake.running
