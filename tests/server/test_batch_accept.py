"""The listening socket accepts every waiting connection per readable event (batch_accept.py), on uvloop as the
server runs: a loop whose every turn is long (streaming to thousands of clients) still takes a burst at once."""

from __future__ import annotations

import asyncio
import errno
import socket
import time

import uvloop

from seedance.server.http.batch_accept import EMFILE_PAUSE_S, BatchAcceptServer, listening_sockets


class Counting(asyncio.Protocol):
    made: list[asyncio.BaseTransport]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(transport)


def _counting() -> tuple[type[Counting], list]:
    made: list = []
    return type("C", (Counting,), {"made": made}), made


def _connect(port: int, n: int) -> list[socket.socket]:
    """n TCP connections the kernel completes (they wait in the accept queue until the server accepts)."""
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]


def test_a_busy_loop_accepts_a_burst_in_a_few_turns():
    """Each turn of the loop blocks 20 ms (as a step written to thousands of connections does); 300 clients
    arrive at once. One accept per turn (libuv's own: uvloop's create_server took 302 turns, 6.3 s, here) would
    take 300 turns; a batch takes a few (5 turns, 0.12 s)."""

    async def main() -> tuple[int, float, int]:
        loop = asyncio.get_running_loop()
        proto, made = _counting()
        sockets = listening_sockets("127.0.0.1", 0, backlog=1024)
        server = BatchAcceptServer(sockets, proto)
        turns = 0
        stop = False

        def busy() -> None:
            nonlocal turns
            turns += 1
            time.sleep(0.02)
            if not stop:
                loop.call_soon(busy)

        port = sockets[0].getsockname()[1]
        busy()  # busy from before the first client arrives
        t0 = time.monotonic()
        clients = await asyncio.to_thread(_connect, port, 300)
        while len(made) < 300 and time.monotonic() - t0 < 5:
            await asyncio.sleep(0)
        stop = True
        took, at = time.monotonic() - t0, turns
        for t in made:
            t.close()
        for c in clients:
            c.close()
        server.close()
        return len(made), took, at

    accepted, took, turns = uvloop.run(main())
    assert accepted == 300
    assert took < 2.0 and turns < 60, (took, turns)


def test_one_readable_event_accepts_at_most_the_batch():
    async def main() -> list[int]:
        proto, made = _counting()
        sockets = listening_sockets("127.0.0.1", 0, backlog=128)
        server = BatchAcceptServer(sockets, proto, batch=10)
        server.loop.remove_reader(sockets[0].fileno())  # the test calls the reader itself
        clients = await asyncio.to_thread(_connect, sockets[0].getsockname()[1], 25)
        counts = []
        for _ in range(4):
            server._on_readable(sockets[0])
            counts.append(server.accepted)
        await asyncio.sleep(0.05)  # the transports' starts
        assert len(made) == 25
        for t in made:
            t.close()
        for c in clients:
            c.close()
        server.close()
        return counts

    assert uvloop.run(main()) == [10, 20, 25, 25]


def test_out_of_descriptors_pauses_accepting_instead_of_spinning():
    class NoFds:
        calls = 0

        def __init__(self, real: socket.socket) -> None:
            self.real = real

        def fileno(self) -> int:
            return self.real.fileno()

        def accept(self):
            NoFds.calls += 1
            raise OSError(errno.EMFILE, "Too many open files")

    async def main() -> tuple[int, int]:
        sockets = listening_sockets("127.0.0.1", 0, backlog=16)
        fake = NoFds(sockets[0])
        server = BatchAcceptServer([], asyncio.Protocol)
        server.loop.add_reader(fake.fileno(), server._on_readable, fake)
        client = await asyncio.to_thread(socket.create_connection, sockets[0].getsockname(), 5)
        await asyncio.sleep(EMFILE_PAUSE_S / 2)
        during = NoFds.calls  # one try, then the reader is off for the pause
        await asyncio.sleep(EMFILE_PAUSE_S * 1.5)
        after = NoFds.calls  # back on: it tries again
        server.loop.remove_reader(fake.fileno())
        client.close()
        sockets[0].close()
        return during, after

    during, after = uvloop.run(main())
    assert during == 1 and after >= 2


def test_close_stops_listening():
    async def main() -> bool:
        proto, _made = _counting()
        sockets = listening_sockets("127.0.0.1", 0, backlog=16)
        port = sockets[0].getsockname()[1]
        server = BatchAcceptServer(sockets, proto)
        server.close()
        await server.wait_closed()
        assert server.sockets == [] and not server.is_serving()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return True
        return False

    assert uvloop.run(main())

