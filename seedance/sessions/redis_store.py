"""Redis session store, for several replicas sharing sessions. A save returns once Redis has the
snapshot; if the deployment needs it to survive a Redis crash too, run Redis with `appendonly yes` and
`appendfsync always` and the store then also waits for that fsync via WAITAOF (see docs/sessions.md)."""

from __future__ import annotations

import asyncio

import redis.asyncio as redis
from redis.exceptions import ResponseError

from seedance.sessions.snapshot import Snapshot, decode_snapshot, encode_snapshot

_PREFIX = "seedance:session:"
_THREAD_BYTES = 1 << 20  # a snapshot this large (embedding rows, images) is encoded / decoded off the event loop
# Write only if newer: a late write of an older turn must not overwrite a newer snapshot.
_SAVE_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'turn')
if current and tonumber(current) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'turn', ARGV[1], 'data', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


class RedisStore:
    def __init__(self, url: str, ttl_s: float | None = None) -> None:
        self.client = redis.from_url(url)
        self.ttl_ms = int(ttl_s * 1000) if ttl_s else 0
        self._save_script = self.client.register_script(_SAVE_IF_NEWER)
        self._waitaof: bool | None = None  # whether the server persists with AOF (checked once)

    async def save(self, snapshot: Snapshot) -> None:
        data = await asyncio.to_thread(encode_snapshot, snapshot) if snapshot.embeds else encode_snapshot(snapshot)
        await self._save_script(keys=[_PREFIX + snapshot.session_id], args=[snapshot.turn, data, self.ttl_ms])
        if self._waitaof is None:
            info = await self.client.info("persistence")
            self._waitaof = bool(info.get("aof_enabled"))
        if self._waitaof:
            try:
                await self.client.execute_command("WAITAOF", 1, 0, 1000)
            except ResponseError:  # Redis < 7.2 has no WAITAOF
                self._waitaof = False

    async def load(self, session_id: str) -> Snapshot | None:
        data = await self.client.hget(_PREFIX + session_id, "data")
        if not data:
            return None
        return await asyncio.to_thread(decode_snapshot, data) if len(data) > _THREAD_BYTES else decode_snapshot(data)

    async def delete(self, session_id: str) -> None:
        await self.client.delete(_PREFIX + session_id)

    async def close(self) -> None:
        await self.client.aclose()
