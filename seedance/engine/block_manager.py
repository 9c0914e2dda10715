"""Paged KV-cache bookkeeping: fixed-size blocks, a block table per sequence, a free list, and
automatic prefix caching (full blocks keyed by a BLAKE3 hash chain over their token prefix).

A freed block keeps its hash and contents until it is reused, so a later request (or the next turn of a
chat) whose prompt starts with the same tokens gets the KV for free. The free list is LRU: blocks
without a hash are reused first, then the least recently released cached blocks.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from dataclasses import dataclass

import blake3

from seedance.engine.sequence import Sequence

_ROOT_HASH = b"seedance-kv-v1"


def hash_block(parent: bytes, token_ids: list[int] | tuple[int, ...]) -> bytes:
    """Hash of a block given its parent's hash, so equal hashes mean equal whole prefixes. The ids as native
    int64 bytes (numpy's int64 bytes, built by `array` without numpy's per-call overhead for a 16-id block)."""
    return blake3.blake3(parent + array("q", token_ids).tobytes()).digest(length=16)


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None
    token_ids: tuple[int, ...] = ()


@dataclass(slots=True)
class Pin:
    block_ids: list[int]
    num_tokens: int  # tokens whose KV the blocks hold
    token_ids: tuple[int, ...]  # those tokens, to check the next turn really continues them


@dataclass(slots=True)
class PrefixCacheStats:
    query_tokens: int = 0  # prompt tokens looked up
    hit_tokens: int = 0  # of those, served from cache

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[bytes, int] = {}
        self.stats = PrefixCacheStats()
        # Pins: block references held for an idle conversation so its next turn finds its KV. LRU order.
        self.pins: OrderedDict[str, Pin] = OrderedDict()
        self.max_pinned_blocks = num_blocks // 2

    @property
    def num_pinned_blocks(self) -> int:
        """Distinct blocks held by pins (sessions with a common history prefix share blocks)."""
        return len({b for p in self.pins.values() for b in p.block_ids})

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _chain_hashes(self, seq: Sequence, num_full_blocks: int) -> list[bytes]:
        """Extend seq.block_hashes to cover its first num_full_blocks blocks."""
        bs = self.block_size
        hashes = seq.block_hashes
        for i in range(len(hashes), num_full_blocks):
            parent = hashes[i - 1] if i else _ROOT_HASH
            hashes.append(hash_block(parent, seq.token_ids[i * bs : (i + 1) * bs]))
        return hashes

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids holding the longest cached prefix of seq. Leaves at least one token to compute,
        since the step that computes it also yields the logits for the next token."""
        if not self.enable_prefix_caching or seq.block_table:
            return []
        bs = self.block_size
        hashes = self._chain_hashes(seq, (len(seq) - 1) // bs)
        found: list[int] = []
        for i, h in enumerate(hashes):
            block_id = self.cached.get(h)
            if block_id is None or self.blocks[block_id].token_ids != tuple(seq.token_ids[i * bs : (i + 1) * bs]):
                break
            found.append(block_id)
        return found

    def can_allocate(self, seq: Sequence, num_new_tokens: int, cached_prefix: list[int] = ()) -> bool:
        need = (
            self.blocks_needed(seq.num_computed_tokens + len(cached_prefix) * self.block_size + num_new_tokens)
            - len(seq.block_table)
            - len(cached_prefix)
        )
        revived = sum(1 for b in cached_prefix if self.blocks[b].ref_count == 0)
        return need <= self.num_free_blocks - revived

    def allocate(self, seq: Sequence, num_new_tokens: int, cached_prefix: list[int] = ()) -> bool:
        """Give seq the blocks to hold num_new_tokens more tokens (after attaching cached_prefix).
        All or nothing: returns False and changes nothing when the pool is too small."""
        if not self.can_allocate(seq, num_new_tokens, cached_prefix):
            return False
        if not seq.block_table:
            for block_id in cached_prefix:
                block = self.blocks[block_id]
                if block.ref_count == 0:
                    del self.free[block_id]
                block.ref_count += 1
                seq.block_table.append(block_id)
            seq.num_computed_tokens = seq.num_committed_blocks = len(cached_prefix)
            seq.num_computed_tokens *= self.block_size
            if not seq.admitted_once:
                seq.admitted_once = True
                seq.num_cached_tokens = seq.num_computed_tokens
                self.stats.query_tokens += seq.num_prompt_tokens
                self.stats.hit_tokens += seq.num_computed_tokens
        total = self.blocks_needed(seq.num_computed_tokens + num_new_tokens)
        while len(seq.block_table) < total:
            seq.block_table.append(self._take_free_block())
        return True

    def _take_free_block(self) -> int:
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:  # evict it from the prefix cache
            if self.cached.get(block.hash) == block_id:
                del self.cached[block.hash]
            block.hash, block.token_ids = None, ()
        block.ref_count = 1
        return block_id

    def commit(self, seq: Sequence) -> None:
        """Publish seq's newly completed full blocks to the prefix cache (call after a step)."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        num_full = min(seq.num_computed_tokens // bs, len(seq.block_table))
        if num_full <= seq.num_committed_blocks:  # no block completed in this step (hashes are chained lazily)
            return
        hashes = self._chain_hashes(seq, num_full)
        for i in range(seq.num_committed_blocks, num_full):
            block = self.blocks[seq.block_table[i]]
            if block.hash is None and hashes[i] not in self.cached:
                block.hash = hashes[i]
                block.token_ids = tuple(seq.token_ids[i * bs : (i + 1) * bs])
                self.cached[block.hash] = block.block_id
        seq.num_committed_blocks = max(seq.num_committed_blocks, num_full)

    def pin(self, key: str, seq: Sequence, num_tokens: int | None = None) -> int:
        """Hold every block with computed KV of seq (the partial last one included) under key, so the
        conversation's next turn continues from it instead of recomputing (see take_pin). Replaces key's
        previous pin. Over the pin budget, the least recently pinned keys are released first. Returns the
        number of tokens pinned.

        num_tokens: pin only that prefix (a cancelled turn keeps what its client was sent). The next turn writes
        into the partial last block, so a block the prefix cache holds as full is left out of it."""
        self.unpin(key)
        n = seq.num_computed_tokens if num_tokens is None else max(0, min(num_tokens, seq.num_computed_tokens))
        if n % self.block_size and self.blocks[seq.block_table[n // self.block_size]].hash is not None:
            n -= n % self.block_size
        blocks = seq.block_table[: self.blocks_needed(n)]
        if not blocks or len(blocks) > self.max_pinned_blocks:
            return 0
        for block_id in blocks:
            self.blocks[block_id].ref_count += 1
        self.pins[key] = Pin(list(blocks), n, tuple(seq.token_ids[:n]))
        while self.num_pinned_blocks > self.max_pinned_blocks:
            self.release_lru_pin()
        return n

    def take_pin(self, key: str, seq: Sequence) -> int:
        """Give a new sequence its conversation's pinned KV for the longest prefix its tokens share with the
        pinned ones: the blocks move to it (no copy; the partial last block is owned by the pin alone, so the
        sequence may write into it). Where the conversation diverged (edited history, a message prefilled while
        it arrived that tokenized differently once complete), the shared part is kept, short of a full cached
        block the sequence would write into. Returns the tokens reused (0 when there is no usable pin)."""
        pin = self.pins.get(key)
        if pin is None or seq.block_table or len(seq) <= 1:
            return 0
        n = pin.num_tokens
        if tuple(seq.token_ids[:n]) != pin.token_ids:
            limit, n = min(len(seq.token_ids), pin.num_tokens), 0
            while n < limit and seq.token_ids[n] == pin.token_ids[n]:
                n += 1
            if n % self.block_size and self.blocks[pin.block_ids[n // self.block_size]].hash is not None:
                n -= n % self.block_size
            keep = self.blocks_needed(n)
            self._release(pin.block_ids[keep:])
            if n == 0:
                del self.pins[key]
                return 0
            pin.block_ids, pin.num_tokens = pin.block_ids[:keep], n
        del self.pins[key]
        seq.block_table = pin.block_ids  # the pin's references become the sequence's
        seq.num_computed_tokens = min(pin.num_tokens, len(seq) - 1)  # recompute >= 1 token for logits
        seq.num_committed_blocks = seq.num_computed_tokens // self.block_size
        if not seq.admitted_once:
            seq.admitted_once = True
            seq.num_cached_tokens = seq.num_computed_tokens
            self.stats.query_tokens += seq.num_prompt_tokens
            self.stats.hit_tokens += seq.num_computed_tokens
        return seq.num_computed_tokens

    def unpin(self, key: str) -> None:
        pin = self.pins.pop(key, None)
        if pin is not None:
            self._release(pin.block_ids)

    def _release(self, block_ids: list[int]) -> None:
        """Drop a pin's references to these blocks."""
        for block_id in reversed(block_ids):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None  # full blocks stay in the prefix cache until reused
                if block.hash is None:
                    self.free.move_to_end(block_id, last=False)

    def release_lru_pin(self) -> bool:
        """Memory pressure: let the least recently pinned conversation's KV become evictable."""
        if not self.pins:
            return False
        self.unpin(next(iter(self.pins)))
        return True

    def free_sequence(self, seq: Sequence) -> None:
        """Release seq's blocks; tail blocks go first so shared prefixes outlive them in the cache."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
                if block.hash is None:  # nothing worth keeping: reuse these first
                    self.free.move_to_end(block_id, last=False)
        seq.block_table = []
        seq.num_computed_tokens = seq.num_committed_blocks = 0
