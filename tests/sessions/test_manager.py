"""Session bookkeeping with the real engine (synthetic backend: the point is the state, not the model)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from seedance.engine.async_engine import AsyncEngine
from seedance.engine.config import EngineConfig
from seedance.sessions.manager import SessionError, SessionManager
from seedance.sessions.snapshot import Snapshot, kv_cache_hash
from seedance.sessions.store import MemoryStore


@pytest.fixture
async def engine():
    eng = await AsyncEngine.create(EngineConfig(synthetic_rate=1000.0))
    yield eng
    await eng.close()


async def test_lru_eviction_skips_sessions_with_a_turn_in_progress(engine):
    manager = SessionManager(engine, MemoryStore(), max_sessions=2)
    busy = await manager.get("busy")
    manager.begin_turn(busy, SimpleNamespace(id="r", on_finish=None))
    await manager.get("idle-1")
    await manager.get("idle-2")  # over the limit: the least recent idle one goes, never the busy one
    assert list(manager.sessions) == ["busy", "idle-2"]


async def test_idle_ttl_evicts_and_the_snapshot_brings_it_back(engine):
    store = MemoryStore()
    tokens = [5, 6, 7]
    await store.save(Snapshot(session_id="s", turn=1, token_ids=tokens, last_token_id=7,
                              kv_cache_hash=kv_cache_hash(tokens)))
    manager = SessionManager(engine, store, idle_ttl_s=10)
    session = await manager.get("s")
    assert session.restored and session.token_ids == tokens and session.turn == 1
    assert manager.evict_idle(now=session.last_active + 11) == 1 and "s" not in manager.sessions
    assert (await manager.get("s")).token_ids == tokens


async def test_a_corrupt_snapshot_is_refused_not_used(engine):
    store = MemoryStore()
    await store.save(Snapshot(session_id="s", turn=1, token_ids=[1, 2], last_token_id=2, kv_cache_hash="00"))
    manager = SessionManager(engine, store)
    with pytest.raises(SessionError, match="kv_cache_hash"):
        await manager.get("s")


async def test_one_turn_at_a_time(engine):
    manager = SessionManager(engine, MemoryStore())
    session = await manager.get("s")
    manager.begin_turn(session, SimpleNamespace(id="a", on_finish=None))
    with pytest.raises(SessionError, match="turn in progress"):
        manager.begin_turn(session, SimpleNamespace(id="b", on_finish=None))
    await asyncio.sleep(0)


async def test_a_snapshot_from_another_model_is_refused_clearly(engine):
    store = MemoryStore()
    tokens = [5, 6, 7]
    await store.save(Snapshot(session_id="s", turn=1, token_ids=tokens, last_token_id=7, model_id="aaaa/float32",
                              kv_cache_hash=kv_cache_hash(tokens, "aaaa/float32")))
    with pytest.raises(SessionError, match=r"another model \(aaaa/float32; this server runs bbbb/bfloat16\)"):
        await SessionManager(engine, store, model_id="bbbb/bfloat16").get("s")
    assert (await SessionManager(engine, store, model_id="aaaa/float32").get("s")).token_ids == tokens


def test_the_kv_cache_hash_binds_the_model_and_its_encoding_is_the_documented_one():
    import blake3
    import numpy as np

    assert kv_cache_hash([1, 2], "m/float32") != kv_cache_hash([1, 2], "m/bfloat16")
    expected = blake3.blake3(b"m/float32\n" + np.array([1, 2], "<i8").tobytes()).hexdigest()
    assert kv_cache_hash([1, 2], "m/float32") == expected
    # a forged snapshot that names this model but was hashed for another fails the hash check
    forged = Snapshot(session_id="s", turn=1, token_ids=[1, 2], last_token_id=2, model_id="m/float32",
                      kv_cache_hash=kv_cache_hash([1, 2], "other/float32"))
    with pytest.raises(ValueError, match="kv_cache_hash mismatch"):
        forged.verify("m/float32")


async def test_a_snapshot_without_the_rows_of_its_history_is_refused_at_restore(engine):
    """A format-1 snapshot of a turn that had embedding rows (their content ids, not the rows): refused with
    invalid_request when the session is used, never a turn the engine cannot compute."""
    store = MemoryStore()
    tokens = [5, -123, -122, 7]
    await store.save(Snapshot(session_id="s", turn=1, token_ids=tokens, last_token_id=7,
                              kv_cache_hash=kv_cache_hash(tokens)))
    with pytest.raises(SessionError, match="does not hold the embedding rows") as info:
        await SessionManager(engine, store).get("s")
    assert info.value.code == "invalid_request" and info.value.status == 400
