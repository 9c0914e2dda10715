"""Both stores pass the same suite, each against the real thing (a file-backed SQLite, a real Redis)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import msgspec
import pytest
import torch

from seedance.engine.core_protocol import embeds_to_wire
from seedance.engine.prompt_embeds import PromptEmbeds, assemble_prompt
from seedance.sessions.snapshot import (
    SNAPSHOT_VERSION,
    Snapshot,
    Turn,
    decode_snapshot,
    encode_snapshot,
    kv_cache_hash,
)
from seedance.sessions.store import open_store


def make_snapshot(session_id: str, turn: int, tokens: list[int]) -> Snapshot:
    return Snapshot(
        session_id=session_id, turn=turn, token_ids=tokens, last_token_id=tokens[-1],
        kv_cache_hash=kv_cache_hash(tokens),
        turns=[Turn(request_id="r1", input_text="In the beginning", output_text=" God", finish_reason="stop",
                    prompt_tokens=3, completion_tokens=1, cached_tokens=0)],
        replay={"r1": [(0, False, b'{"type":"chunk","id":"r1","seq":0,"text":" God","token_ids":[9]}'),
                       (1, True, b"MTF1\x01")]},
    )


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'sessions.db'}"
    return request.getfixturevalue("redis_url")


async def test_save_load_roundtrip_and_delete(store_url):
    store = open_store(store_url)
    try:
        snap = make_snapshot("s-roundtrip", 1, [5, 6, 7, 9])
        await store.save(snap)
        loaded = await store.load("s-roundtrip")
        assert loaded == snap
        loaded.verify()
        assert await store.load("nobody") is None
        await store.delete("s-roundtrip")
        assert await store.load("s-roundtrip") is None
    finally:
        await store.close()


async def test_an_older_turn_never_overwrites_a_newer_one(store_url):
    store = open_store(store_url)
    try:
        await store.save(make_snapshot("s-order", 2, [1, 2, 3]))
        await store.save(make_snapshot("s-order", 1, [1]))  # a late write of an older turn
        assert (await store.load("s-order")).turn == 2
        await store.save(make_snapshot("s-order", 3, [1, 2, 3, 4]))
        assert (await store.load("s-order")).token_ids == [1, 2, 3, 4]
    finally:
        await store.close()


def test_tampered_snapshot_fails_verification():
    snap = make_snapshot("s", 1, [1, 2, 3])
    snap.token_ids[1] = 99
    with pytest.raises(ValueError, match="kv_cache_hash"):
        snap.verify()


def test_sqlite_snapshot_survives_kill_9(tmp_path):
    """A save that returned is on disk: kill -9 the writer right after and read it back."""
    db = tmp_path / "s.db"
    script = textwrap.dedent(f"""
        import asyncio, os, signal
        from tests.sessions.test_stores import make_snapshot
        from seedance.sessions.store import open_store
        async def main():
            store = open_store("sqlite://{db}")
            for turn in range(1, 6):
                await store.save(make_snapshot("s-kill", turn, list(range(turn))+[42]))
            print("acknowledged", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        asyncio.run(main())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9 and "acknowledged" in proc.stdout
    import asyncio

    async def read():
        store = open_store(f"sqlite://{db}")
        try:
            return await store.load("s-kill")
        finally:
            await store.close()

    snap = asyncio.run(read())
    assert snap is not None and snap.turn == 5
    snap.verify()


def snapshot_with_rows(session_id: str) -> tuple[Snapshot, PromptEmbeds]:
    """A history of ids, an image's features (bfloat16) and client rows (float32), as a session holds it."""
    torch.manual_seed(0)
    ids, embeds = assemble_prompt([[5, 6], ("image", torch.randn(4, 8).to(torch.bfloat16)), [7],
                                   ("embedding", torch.randn(2, 8)), [9]])
    snap = make_snapshot(session_id, 1, ids)
    snap.version, snap.embeds = SNAPSHOT_VERSION, embeds_to_wire(embeds)
    return snap, embeds


async def test_embedding_and_image_rows_survive_the_store(store_url):
    store = open_store(store_url)
    try:
        snap, embeds = snapshot_with_rows("s-rows")
        await store.save(snap)
        loaded = await store.load("s-rows")
    finally:
        await store.close()
    loaded.verify()
    rebuilt = loaded.prompt_embeds()
    assert [(s.start, s.kind, s.digest) for s in rebuilt.segments] == [(s.start, s.kind, s.digest)
                                                                     for s in embeds.segments]
    assert all(torch.equal(a.rows, b.rows) and a.rows.dtype == b.rows.dtype
               for a, b in zip(rebuilt.segments, embeds.segments, strict=True))


def test_rows_that_do_not_match_the_history_are_refused():
    snap, _ = snapshot_with_rows("s")
    forged = bytearray(snap.embeds[0].data)
    forged[0] ^= 1
    snap.embeds[0].data = bytes(forged)
    with pytest.raises(ValueError, match="do not match"):
        snap.prompt_embeds()
    snap.embeds = []  # the ids without their rows (a format-1 snapshot of an image turn)
    with pytest.raises(ValueError, match="does not hold the embedding rows"):
        snap.prompt_embeds()


def test_format_1_snapshots_still_load_and_newer_ones_are_refused():
    """A format-1 snapshot (written before rows were kept: no version, no embeds) decodes, verifies and restores
    a text history; a snapshot of a format this server does not know is refused, not misread."""
    old = msgspec.msgpack.encode({"session_id": "s", "turn": 1, "token_ids": [5, 6, 7], "last_token_id": 7,
                                  "kv_cache_hash": kv_cache_hash([5, 6, 7]), "model_id": "", "timestamp": 1.0,
                                  "turns": [], "replay": {}})
    snap = decode_snapshot(old)
    assert snap.version == 1 and snap.embeds == []
    snap.verify()
    assert snap.prompt_embeds() is None
    newer = decode_snapshot(encode_snapshot(make_snapshot("s", 1, [5, 6])))
    newer.version = SNAPSHOT_VERSION + 1
    with pytest.raises(ValueError, match="newer than this server"):
        newer.verify()


def test_unknown_store_url_is_refused():
    with pytest.raises(ValueError, match="unknown session store"):
        open_store("mongodb://x")
