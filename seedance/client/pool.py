"""A pool of links to several Seedance endpoints (replicas or gateways), one circuit breaker each.

`await pool.generate(...)` runs on a connected, healthy endpoint: closed breakers first, then half-open
ones, then open ones whose recovery probe is due. A connection attempt that fails or times out counts
against its endpoint; one that succeeds counts for it. Streams already running keep their own
reconnect-and-resume behaviour (SeedanceClient); the pool decides where new work goes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from websockets.exceptions import InvalidHandshake

from seedance.client.breaker import BreakerState, CircuitBreaker, Transition
from seedance.client.connection import GenerationStream, SeedanceClient, SeedanceError


class NoHealthyEndpoint(SeedanceError):
    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


class SeedancePool:
    def __init__(self, urls: list[str], *, connect_timeout: float = 2.0,
                 on_transition: Callable[[Transition], None] | None = None,
                 breaker_options: dict[str, Any] | None = None, **client_options: Any) -> None:
        if not urls:
            raise ValueError("a pool needs at least one endpoint")
        self.connect_timeout = connect_timeout
        self.client_options = client_options
        self.events: list[Transition] = []

        def record(transition: Transition) -> None:
            self.events.append(transition)
            if on_transition is not None:
                on_transition(transition)

        self.breakers = {url: CircuitBreaker(url, on_transition=record, **(breaker_options or {})) for url in urls}
        self.clients: dict[str, SeedanceClient] = {}
        self.calls = 0

    def metrics(self) -> dict[str, dict]:
        """Per endpoint: state, calls by outcome, transitions so far."""
        return {url: {"state": str(b.state), **b.calls, "transitions": len(b.transitions)}
                for url, b in self.breakers.items()}

    async def _connected(self, url: str) -> SeedanceClient | None:
        breaker = self.breakers[url]
        client = self.clients.get(url)
        if client is not None and client.healthy:
            breaker.record_success()
            return client
        if client is not None and client._reader is not None and client._reader.done():
            await client.close()  # gave up reconnecting: replace it
            del self.clients[url]
        if not breaker.allow():
            return None
        client = SeedanceClient(url, open_timeout=self.connect_timeout, **self.client_options)
        try:
            await asyncio.wait_for(client.connect(), self.connect_timeout)
        except (TimeoutError, OSError, InvalidHandshake) as err:
            breaker.record_failure("timeout" if isinstance(err, TimeoutError) else type(err).__name__)
            return None
        breaker.record_success()
        old = self.clients.get(url)
        if old is not None:
            await old.close()
        self.clients[url] = client
        return client

    def _order(self) -> list[str]:
        """Due recovery probes first (an open endpoint only recovers if someone tries it), then every other
        call a half-open endpoint (its trial traffic, which decides whether it opens or closes), then closed
        endpoints, then the remaining half-open ones. Open endpoints without a due probe are skipped."""
        self.calls += 1
        trial = self.calls % 2 == 0

        def rank(url: str) -> int:
            b = self.breakers[url]
            if b.state is BreakerState.OPEN:
                return 0
            if b.state is BreakerState.HALF_OPEN:
                return 1 if trial else 3
            return 2

        return sorted((u for u in self.breakers if self.breakers[u].state is not BreakerState.OPEN
                       or self.breakers[u].probe_due()), key=rank)

    async def client(self) -> SeedanceClient:
        order = self._order()
        for url in order:
            client = await self._connected(url)
            if client is not None:
                return client
        raise NoHealthyEndpoint(f"no endpoint reachable: {self.metrics()}")

    async def generate(self, prompt: str | None = None, **params: Any) -> GenerationStream:
        return (await self.client()).generate(prompt, **params)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
        self.clients.clear()
