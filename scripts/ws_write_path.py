"""CPU per connection per engine step of /v1/stream's write path, in one process, without sockets or load
(issue #16, branch gwcost): the direct write from the step's delivery (`WsConnection.step_ready`, picows)
against the writer task woken per step (the path before, and the one an aiohttp socket still takes).

    PYTHONPATH=$PWD python scripts/ws_write_path.py [--connections 1000] [--steps 200] [--rounds 3]

Each step delivers one token to one request on each of N connections through the real EngineFront step
delivery, WsConnection, ServerConnection (flow control, credit), WsCommands and WsGeneration encoding; the
socket only counts what it is given (and answers flow control's probes at once). `time.process_time` over the
steps, divided by steps x connections; rounds interleave the two paths, the table has their medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import uvloop
from aiohttp import WSMsgType

from seedance.engine.config import EngineConfig
from seedance.engine.engine_front import EngineFront, RequestStream
from seedance.engine.events import TokenEvent
from seedance.protocol.flow import FlowLimits
from seedance.protocol.scopes import ALL_SCOPES
from seedance.protocol.server_connection import ServerConnection
from seedance.server.transports.ws import WsConnection
from seedance.server.transports.ws_commands import WsCommands
from seedance.server.transports.ws_generation import WsGeneration


class CountingSocket:
    """PicowsSocket's calls, counting; a probe's pong comes back at once (a client that reads)."""

    closed = False
    close_code = None

    def __init__(self) -> None:
        self.messages = 0
        self.conn: WsConnection | None = None

    def send_now(self, message: bytes, opcode: WSMsgType) -> None:
        self.messages += 1

    def ping_now(self, message: bytes) -> None:
        self.conn.protocol.receive_pong(message)

    async def send_frame(self, message: bytes, opcode: WSMsgType) -> None:
        self.send_now(message, opcode)

    async def ping(self, message: bytes = b"") -> None:
        self.ping_now(message)


async def one_round(n: int, steps: int, direct: bool) -> tuple[float, int]:
    """(CPU µs per connection-step, messages sent)."""
    loop = asyncio.get_running_loop()
    front = EngineFront(EngineConfig(), None, 2048)
    sockets = []
    for c in range(n):
        ws = CountingSocket()
        conn = ws.conn = WsConnection(ws, None)
        if not direct:
            conn.direct = None  # every step wakes the writer task, as before branch gwcost
        conn.protocol = ServerConnection(max_message_bytes=4096, max_requests=4, scopes=ALL_SCOPES, now=loop.time(),
                                         flow=FlowLimits(heartbeat_interval_s=1e9))
        conn.commands = WsCommands(conn.protocol, front, None, None, conn.wake, conn._send_batch, lambda: False,
                                   step_ready=conn.step_ready)
        stream = RequestStream(front, f"c{c}", 4)
        front._streams[stream.request_id] = stream
        stream.listener = conn.commands.step_ready
        conn.protocol.open("a", WsGeneration("a", stream, front))
        sockets.append(ws)
    await asyncio.sleep(0)
    cpu = 0.0
    for s in range(steps):
        events = [TokenEvent(f"c{c}", 0, 1000 + s, " light") for c in range(n)]
        start = time.process_time()
        front._deliver_step(events, 0.0)
        await asyncio.sleep(0)  # the woken writer tasks run
        await asyncio.sleep(0)
        cpu += time.process_time() - start
    for ws in sockets:
        await ws.conn.wake.stop()
    return 1e6 * cpu / (n * steps), sum(ws.messages for ws in sockets)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for direct in (False, True):
            us, sent = await one_round(args.connections, args.steps, direct)
            assert sent == args.connections * args.steps, sent  # every step reached every connection
            runs[direct].append(us)
    print("| write path | CPU µs per connection-step (median) | rounds |")
    print("|---|---|---|")
    for direct, label in ((False, "writer task woken per step (before)"), (True, "direct write (step_ready)")):
        print(f"| {label} | {statistics.median(runs[direct]):.2f} | {', '.join(f'{x:.2f}' for x in runs[direct])} |")


if __name__ == "__main__":
    uvloop.run(main())
