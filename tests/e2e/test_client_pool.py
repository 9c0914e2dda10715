"""The pool's circuit breakers driven through every transition by a real endpoint that is slowed,
stopped and restarted (a loopback proxy in front of the real server), while another real server serves."""

from __future__ import annotations

import asyncio
import socket

from seedance.client import BreakerState, SeedancePool


class Endpoint:
    """A loopback port that can be slow (accepts, never answers), stopped (refuses) or up (forwards)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server: asyncio.Server | None = None
        self.mode = "stopped"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    async def set(self, mode: str) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        self.mode = mode
        if mode != "stopped":
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _handle(self, reader, writer) -> None:
        if self.mode == "slow":
            await asyncio.sleep(30)  # a wedged server: the handshake never completes
            writer.close()
            return
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(r, w) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except OSError:
                pass
            finally:
                w.close()

        await asyncio.gather(pump(reader, up_w), pump(up_r, writer))


async def run_one(pool: SeedancePool) -> str:
    stream = await pool.generate("Amen", max_tokens=3, temperature=0, resumable=False)
    return await stream.collect()


async def test_breaker_transitions_with_a_slowed_stopped_and_restarted_endpoint(server):
    flaky = Endpoint(server.port)
    await flaky.set("slow")
    pool = SeedancePool([flaky.url, server.ws], connect_timeout=0.3,
                        breaker_options={"probe_base_s": 0.3, "probe_max_s": 1.0})
    try:
        breaker = pool.breakers[flaky.url]
        # Slowed: connection timeouts. Every request is still served, by the healthy server.
        for _ in range(3):
            assert await run_one(pool)
        assert breaker.state is BreakerState.HALF_OPEN
        assert breaker.transitions[-1].reason.endswith("(timeout)")

        # Stopped: refused. Half-open trial traffic fails > 80%: open.
        await flaky.set("stopped")
        for _ in range(12):
            assert await run_one(pool)
            if breaker.state is BreakerState.OPEN:
                break
        assert breaker.state is BreakerState.OPEN
        rejected_before = breaker.calls["rejected"]

        # Restarted: the next due recovery probe succeeds (half-open), then trial traffic closes it.
        await flaky.set("up")
        await asyncio.sleep(0.35)
        for _ in range(20):
            assert await run_one(pool)
            if breaker.state is BreakerState.CLOSED:
                break
        assert breaker.state is BreakerState.CLOSED
        assert [(t.old, t.new) for t in pool.events] == [
            ("closed", "half_open"), ("half_open", "open"), ("open", "half_open"), ("half_open", "closed")]
        metrics = pool.metrics()[flaky.url]
        assert metrics["state"] == "closed" and metrics["failure"] >= 8 and metrics["transitions"] == 4
        assert breaker.calls["rejected"] >= rejected_before
    finally:
        await pool.close()
        await flaky.set("stopped")
