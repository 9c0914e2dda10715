"""The wake-up of one WebSocket connection's writer task, which exists only while it has turns to run.

Each /v1/stream connection used to hold a writer task from its handshake on, parked in `asyncio.Event.wait`
(a task, three coroutine frames, an Event and its waiters' deque): most of what an idle connection cost above
the socket itself (issue #16: <= 20 KiB each). On picows a step's output is written from the delivery's
callback (ws.WsConnection.step_ready) and the task only runs the turns that need an await (a heartbeat ping, a
water mark crossed, a close, messages the reader queued), so it is started by the first `set()` and ends once a
turn leaves nothing set and the connection has no live request; while requests are live it waits for the next
`set()` instead (an aiohttp socket wakes it every step, and a task per step would cost more than one that
waits)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol


class Wake(Protocol):
    """What wakes a connection's writer (asyncio.Event offers it too: /v1/realtime's)."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...


class WriterWake:
    """asyncio.Event's set / is_set for one writer whose task is started on demand: `turn` runs once per set()
    (several set() before it runs are one turn), in one task at a time; `linger()` says whether the task waits
    for the next set() (True) or ends (False) when nothing is set."""

    __slots__ = ("_flag", "_linger", "_loop", "_name", "_stopped", "_task", "_turn", "_waiter")

    def __init__(self, turn: Callable[[], Awaitable[None]], linger: Callable[[], bool], name: str) -> None:
        self._turn = turn
        self._linger = linger
        self._name = name
        self._loop = asyncio.get_running_loop()
        self._flag = False
        self._stopped = False
        self._task: asyncio.Task | None = None
        self._waiter: asyncio.Future | None = None

    def set(self) -> None:
        if self._flag or self._stopped:
            return
        self._flag = True
        if self._task is None:
            self._task = self._loop.create_task(self._run(), name=self._name)
        elif (waiter := self._waiter) is not None and not waiter.done():
            waiter.set_result(None)

    def is_set(self) -> bool:
        """A turn is due that has not started yet (it will take whatever is ready by then)."""
        return self._flag

    @property
    def running(self) -> bool:
        """The writer task exists (inside a turn, or waiting for the next set())."""
        return self._task is not None

    async def _run(self) -> None:
        try:
            while True:
                while self._flag:
                    self._flag = False
                    await self._turn()
                if self._stopped or not self._linger():
                    return  # no await between the check and the end: a set() from now on starts a new task
                self._waiter = self._loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        finally:
            self._task = None

    async def stop(self) -> None:
        """No turn from now on; the one under way is cancelled and waited for. A cancellation of the caller
        itself while it waits is not swallowed (it would hide an aiohttp handler's cancellation)."""
        self._stopped = True
        self._flag = False
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if (me := asyncio.current_task()) is not None and me.cancelling():
                    raise
            except Exception:
                pass  # the writer's own failure was logged where it happened
