from seedance.engine.block_manager import BlockManager, hash_block
from tests.engine.helpers import make_seq


def compute(bm: BlockManager, seq, n=None):
    n = len(seq) - seq.num_computed_tokens if n is None else n
    assert bm.allocate(seq, n)
    seq.num_computed_tokens += n
    bm.commit(seq)


def test_allocation_is_all_or_nothing_and_free_returns_blocks():
    bm = BlockManager(num_blocks=4, block_size=4)
    a = make_seq("a", 10)  # 3 blocks
    compute(bm, a)
    assert len(a.block_table) == 3 and bm.num_free_blocks == 1
    b = make_seq("b", 8, first_token=100)  # needs 2, only 1 free
    assert not bm.allocate(b, 8)
    assert b.block_table == [] and bm.num_free_blocks == 1
    bm.free_sequence(a)
    assert bm.num_free_blocks == 4 and a.block_table == []


def test_repeated_prompt_hits_the_prefix_cache():
    bm = BlockManager(num_blocks=32, block_size=4)
    a = make_seq("a", 40)
    compute(bm, a)
    bm.free_sequence(a)
    b = make_seq("b", 40)  # identical prompt
    cached = bm.find_cached_prefix(b)
    assert len(cached) == 9  # 36 tokens: the last token is always recomputed for its logits
    assert bm.allocate(b, 40 - 36, cached)
    assert b.num_computed_tokens == 36 and b.num_cached_tokens == 36
    assert bm.stats.query_tokens == 80 and bm.stats.hit_tokens == 36


def test_shared_prefix_hits_only_whole_matching_blocks():
    bm = BlockManager(num_blocks=32, block_size=4)
    a = make_seq("a", 20)
    compute(bm, a)
    b = make_seq("b", 20)
    b.token_ids[9] = 999  # differs inside the third block
    cached = bm.find_cached_prefix(b)
    assert cached == a.block_table[:2]
    assert bm.allocate(b, 20 - 8, cached)
    assert bm.blocks[cached[0]].ref_count == 2  # shared while both live


def test_same_block_content_after_a_different_prefix_is_not_a_hit():
    assert hash_block(b"p1", [1, 2, 3, 4]) != hash_block(b"p2", [1, 2, 3, 4])
    bm = BlockManager(num_blocks=32, block_size=4)
    a = make_seq("a", 9)
    compute(bm, a)
    b = make_seq("b", 9)
    b.token_ids[:4] = [50, 51, 52, 53]  # second block equal to a's, first differs
    assert bm.find_cached_prefix(b) == []


def test_cached_blocks_are_evicted_lru_when_the_pool_runs_out():
    bm = BlockManager(num_blocks=4, block_size=4)
    a = make_seq("a", 9)  # 2 full blocks cached + 1 partial
    compute(bm, a)
    bm.free_sequence(a)
    assert len(bm.cached) == 2
    b = make_seq("b", 16, first_token=200)  # needs all 4 blocks: must evict a's cached blocks
    compute(bm, b)
    assert all(h not in bm.cached or bm.cached[h] in b.block_table for h in a.block_hashes)
    c = make_seq("c", 9)
    assert bm.find_cached_prefix(c) == []


def test_generated_tokens_are_cached_for_the_next_turn():
    bm = BlockManager(num_blocks=32, block_size=4)
    a = make_seq("a", 6)
    compute(bm, a)
    a.token_ids += [70, 71, 72, 73, 74]  # generated, then computed by decode steps
    compute(bm, a)
    bm.free_sequence(a)
    turn2 = make_seq("t2", 0)
    turn2.token_ids = [*a.token_ids, 80, 81]
    turn2.num_prompt_tokens = len(turn2.token_ids)
    assert len(bm.find_cached_prefix(turn2)) == 2  # 11 tokens computed -> 2 full blocks


def test_pinned_kv_survives_eviction_pressure_and_the_next_turn_takes_it_over():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_seq("a", 13)  # 3 full blocks + 1 token in a partial block
    compute(bm, a)
    assert bm.pin("session-1", a) == 13
    bm.free_sequence(a)
    assert bm.num_free_blocks == 4  # the 4 pinned blocks are held
    b = make_seq("b", 16, first_token=300)  # takes every free block: pinned ones must not be evicted
    compute(bm, b)
    bm.free_sequence(b)
    turn2 = make_seq("t2", 0)
    turn2.token_ids = [*a.token_ids, 99, 98]
    turn2.num_prompt_tokens = len(turn2.token_ids)
    assert bm.take_pin("session-1", turn2) == 13  # all of it, the partial block included
    assert len(turn2.block_table) == 4 and turn2.num_computed_tokens == 13 and not bm.pins
    assert bm.allocate(turn2, 2)  # two new tokens: both fit in the partial block (13, 14 -> block 3)
    assert len(turn2.block_table) == 4


def test_a_diverged_conversation_does_not_reuse_its_pin():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_seq("a", 10)
    compute(bm, a)
    bm.pin("s", a)
    bm.free_sequence(a)
    edited = make_seq("e", 12)
    edited.token_ids[2] = 777
    assert bm.take_pin("s", edited) == 0 and not bm.pins and bm.num_free_blocks == 8


def test_pin_budget_releases_least_recent_pins_first():
    bm = BlockManager(num_blocks=32, block_size=4)
    bm.max_pinned_blocks = 5
    for i, key in enumerate(("old", "new")):
        s = make_seq(key, 9, first_token=100 * (i + 1))  # 3 blocks with KV
        compute(bm, s)
        bm.pin(key, s)
        bm.free_sequence(s)
    assert list(bm.pins) == ["new"] and bm.num_pinned_blocks == 3  # 3 + 3 > 5: the older pin went
    assert bm.release_lru_pin() and not bm.pins and not bm.release_lru_pin()
    bm.unpin("missing")  # unknown keys are a no-op


def test_a_cut_turn_pins_only_the_tokens_it_keeps():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_seq("a", 14)
    compute(bm, a)  # blocks 0-2 full (hashed), block 3 partial
    assert bm.pin("cut", a, num_tokens=13) == 13  # inside the partial block: kept, the next turn overwrites it
    assert bm.pins["cut"].token_ids == tuple(a.token_ids[:13]) and bm.num_pinned_blocks == 4
    assert bm.pin("cut", a, num_tokens=10) == 8  # inside a full, cached block: left out, never written into
    assert bm.num_pinned_blocks == 2
    assert bm.pin("cut", a, num_tokens=99) == 14  # never more than was computed


def test_a_diverged_turn_keeps_the_pinned_kv_of_the_prefix_it_shares():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_seq("a", 14)  # blocks 0-2 full and cached, block 3 partial (2 tokens), owned by the pin
    compute(bm, a)
    bm.pin("s", a)
    bm.free_sequence(a)
    inside_partial = make_seq("p", 0)
    inside_partial.token_ids = [*a.token_ids[:13], 555, 556]  # differs at 13: in the pin's own partial block
    inside_partial.num_prompt_tokens = 15
    assert bm.take_pin("s", inside_partial) == 13 and len(inside_partial.block_table) == 4
    bm.free_sequence(inside_partial)
    b = make_seq("b", 14, first_token=400)  # its own blocks, cached as its own
    compute(bm, b)
    bm.pin("s", b)
    b_blocks = list(b.block_table)
    bm.free_sequence(b)
    inside_full = make_seq("f", 0)
    inside_full.token_ids = [*b.token_ids[:6], 777, 778, 779]  # differs at 6: inside full, cached block 1
    inside_full.num_prompt_tokens = 9
    assert bm.take_pin("s", inside_full) == 4  # block 1 must not be written into: only block 0 is kept
    assert inside_full.block_table == b_blocks[:1] and not bm.pins
    bm.free_sequence(inside_full)
    assert bm.num_free_blocks == 8  # nothing leaked


def test_block_hash_is_blake3_of_the_ids_as_int64_bytes():
    """The prefix cache's key stays what it was with numpy's int64 bytes (content ids are negative, ids large)."""
    import random

    import blake3
    import numpy as np

    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randrange(-(2**63), 2**63) if rng.random() < 0.2 else rng.randrange(50000) for _ in range(16)]
        parent = rng.randbytes(16)
        expect = blake3.blake3(parent + np.asarray(ids, dtype=np.int64).tobytes()).digest(length=16)
        assert hash_block(parent, ids) == hash_block(parent, tuple(ids)) == expect
