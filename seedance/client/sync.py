"""A blocking client for scripts and notebooks: the async client on a private event-loop thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

from seedance.client.connection import ChunkOut, DoneOut, SeedanceClient

_END = object()


class SyncSeedanceClient:
    def __init__(self, url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="seedance-client", daemon=True)
        self._thread.start()
        self._client = SeedanceClient(url, **options)
        self._call(self._client.connect())
        self.last_done: DoneOut | None = None

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def generate(self, prompt: str | None = None, **params: Any) -> Iterator[ChunkOut]:
        """Chunks as they arrive; `last_done` holds the end. Breaking out early cancels the generation."""
        import queue

        out: queue.Queue = queue.Queue(maxsize=1024)

        async def start():
            return self._client.generate(prompt, **params)

        stream = self._call(start())

        async def pump() -> None:
            try:
                async for chunk in stream:
                    await asyncio.to_thread(out.put, chunk)
                self.last_done = stream.done
                out.put(_END)
            except Exception as err:  # handed to the caller's thread
                out.put(err)

        future = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while (item := out.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            if stream.done is None:  # left early: cancel on the server before anything else happens
                self._call(self._client.cancel(stream.id))
            if not future.done():
                future.cancel()

    def close(self) -> None:
        self._call(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> SyncSeedanceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
