"""Iteration-level scheduler: plain data in (sequences, block pool, time), plain decisions out.

Each step it fills a token budget: first every running sequence (one decode token, or the next chunk of
a prompt still being prefilled), then waiting sequences by effective priority. When KV blocks run out
it preempts by recompute: paused sequences first, then the lowest-priority running one, whose blocks
go back to the pool (and stay in the prefix cache, so recomputation is often cheap).

Two bounds keep one client (a connection) from degrading the others' latency: each client's share of the
batch is `max_running_per_client` sequences (client_share.py; work-conserving: its further ones run only
while no other client's request within its share waits, and they are the first to give way, held back with
their KV or preempted, when one does), and a step that carries decodes carries at most
`decode_step_prefill_tokens` prefill tokens, so arriving prompts cannot stretch the step that every
running stream is waiting on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter

import msgspec

from seedance.engine.block_manager import BlockManager
from seedance.engine.client_share import ClientShare
from seedance.engine.sequence import Sequence, SequenceStatus
from seedance.engine.wait_queue import WaitQueue


class ScheduledChunk(msgspec.Struct, gc=False):
    """One sequence's tokens in one step. Untracked by the collector (it refers to its sequence, never back):
    one is made per running sequence per step."""

    seq: Sequence
    start: int  # first token position computed in this step
    num_tokens: int

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the sequence's last token, so the step yields its next token."""
        return self.start + self.num_tokens == len(self.seq)


@dataclass(slots=True)
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    def __bool__(self) -> bool:
        return bool(self.chunks)


_URGENCY = attrgetter("priority", "arrival")  # the running order, most urgent first (C, no lambda per sequence)


class Scheduler:
    # A decode whose token fits in its sequence's last block skips the block checks (tests turn it off to compare)
    decode_fast_path = True

    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        aging_interval_s: float = 2.0,
        max_embed_chunk_tokens: int | None = None,
        max_running_per_client: int | None = None,
        decode_step_prefill_tokens: int | None = None,
    ) -> None:
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs")
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting = WaitQueue(aging_interval_s)
        self.running: list[Sequence] = []
        self._finished_running = False  # finish(batched=True) left finished sequences in running (drop_finished)
        self.paused: list[Sequence] = []
        self.num_preemptions = 0
        # A prompt with embedding rows / image features is prefilled in chunks of at most this many tokens, so
        # an image's hundreds of rows do not land in one step and stall every running stream for it.
        self.max_embed_chunk_tokens = max_embed_chunk_tokens
        if max_running_per_client is not None and max_running_per_client < 1:
            raise ValueError("max_running_per_client must be >= 1 (or None)")
        if decode_step_prefill_tokens is not None and decode_step_prefill_tokens < 1:
            raise ValueError("decode_step_prefill_tokens must be >= 1 (or None)")
        self.max_running_per_client = max_running_per_client
        self.decode_step_prefill_tokens = decode_step_prefill_tokens

    # ---- commands -------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.push(seq)

    def has_work(self) -> bool:
        return bool(self.running) or bool(self.waiting)

    def finish(self, seq: Sequence, reason: str, batched: bool = False) -> None:
        """Remove seq wherever it is and free its blocks at once (finish, cancel, error). batched: a running seq
        stays in the running list, marked finished, until `drop_finished` takes all of a step's out in one pass
        (a removal each is a scan of the running list: ~27 µs at 2,000 running, for every request's end)."""
        if batched and seq.status is SequenceStatus.RUNNING:
            self._finished_running = True
        else:
            self._detach(seq)
        self.bm.free_sequence(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def drop_finished(self) -> None:
        """Take the sequences `finish(batched=True)` ended out of the running list, keeping its order."""
        if self._finished_running:
            self._finished_running = False
            self.running[:] = [s for s in self.running if s.status is SequenceStatus.RUNNING]

    def pause(self, seq: Sequence) -> None:
        """Take seq out of the batch, keeping its KV blocks so it resumes without recomputation."""
        if seq.status in (SequenceStatus.PAUSED, SequenceStatus.FINISHED):
            return
        self._detach(seq)
        seq.status = SequenceStatus.PAUSED
        self.paused.append(seq)

    def resume(self, seq: Sequence) -> None:
        if seq.status is not SequenceStatus.PAUSED:
            return
        self.paused.remove(seq)
        self.add(seq)  # it keeps its blocks and its arrival order, so it is admitted promptly

    def set_priority(self, seq: Sequence, priority: int) -> None:
        if seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
            seq.priority = priority
            self.waiting.push(seq)
        else:
            seq.priority = priority

    def _detach(self, seq: Sequence) -> None:
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        elif seq.status is SequenceStatus.PAUSED:
            self.paused.remove(seq)

    # ---- the decision -----------------------------------------------------------------------------
    def schedule(self, now: float) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        running = self.running
        running.sort(key=_URGENCY)
        share = None
        if self.max_running_per_client is not None:
            share = ClientShare(self.max_running_per_client, self.running)
            self._hold_back_extras(share)
        # prefill tokens this step may still carry: capped when any running sequence decodes in it
        prefill = budget
        if self.decode_step_prefill_tokens is not None and any(s.num_uncomputed_tokens == 1 for s in self.running):
            prefill = self.decode_step_prefill_tokens

        block_size = self.bm.block_size if self.decode_fast_path else 0
        chunks = out.chunks
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            computed = seq.num_computed_tokens
            want = len(seq.token_ids) - computed
            if want == 1 and computed < len(seq.block_table) * block_size:
                # The common case, a decode whose token fits in its last block: nothing to allocate or check.
                chunks.append(ScheduledChunk(seq, computed, 1))
                budget -= 1
                i += 1
                continue
            n = self._chunk(seq, min(want, budget) if want == 1 else min(want, budget, prefill))
            if n == 0:  # a prompt still prefilling, and this step's prefill share is spent
                i += 1
                continue
            while not self.bm.can_allocate(seq, n):
                if self.bm.release_lru_pin():  # idle conversations' KV goes first: it can be recomputed
                    continue
                victim = self._idle_holder(exclude=seq)
                if victim is None:
                    victim = self._unscheduled_victim(i, share)
                if victim is None:
                    break
                self._preempt(victim, out, share)
            if not self.bm.allocate(seq, n):
                self._preempt(seq, out, share)  # not even room for itself: it waits for memory
                continue
            out.chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, n))
            budget -= n
            if want > 1:
                prefill -= n
            i += 1

        # Every request within its client's share first; then, work-conserving, capped clients' further requests,
        # once none within a share waits, while the batch and the free memory have room.
        budget, prefill, drained = self._admit(out, now, budget, prefill, share, extras=False)
        if share is not None and drained:
            self._admit(out, now, budget, prefill, share, extras=True)
        return out

    def _admit(
        self, out: SchedulerOutput, now: float, budget: int, prefill: int, share: ClientShare | None, extras: bool
    ) -> tuple[int, int, bool]:
        """Admit waiting sequences by effective priority: within their clients' shares, or (extras) beyond them,
        taking only free memory. Returns the budget and prefill share left, and whether the queue ran dry."""
        skip = share.beyond if share is not None and not extras else None
        while budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting.peek(now, skip=skip)
            if seq is None:
                return budget, prefill, True
            if seq.pin_key is not None:
                self.bm.take_pin(seq.pin_key, seq)  # the session's own KV, partial block included
            cached = self.bm.find_cached_prefix(seq)
            computed = seq.num_computed_tokens + len(cached) * self.bm.block_size
            left = len(seq) - computed
            n = self._chunk(seq, min(left, budget) if left == 1 else min(left, budget, prefill))
            if n == 0:
                break  # this step's prefill share is spent; the head is admitted next step
            while not extras and not self.bm.can_allocate(seq, n, cached):
                if self.bm.release_lru_pin():
                    continue
                victim = self._idle_holder(exclude=seq)
                if victim is None and share is not None and share.extras:
                    victim = share.extras[-1]  # the least urgent extra gives way to a request within its share
                if victim is None and self.running:
                    # A more urgent request takes the memory of the least urgent running one. Both sides
                    # use effective (aged) priority, so each preemption strictly improves the batch and
                    # two requests can never evict each other back and forth.
                    urgency = self.waiting.effective_priority
                    lowest = max(self.running, key=lambda s: (urgency(s, now), s.arrival))
                    if urgency(lowest, now) > urgency(seq, now):
                        victim = lowest
                if victim is None:
                    break
                budget += self._preempt(victim, out, share)
            if not self.bm.allocate(seq, n, cached):
                break  # head of line waits for memory; lower priorities must not jump it
            self.waiting.remove(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, n))
            budget -= n
            if left > 1:
                prefill -= n
            if share is not None:
                share.admit(seq)
        return budget, prefill, False

    def _hold_back_extras(self, share: ClientShare) -> None:
        """For each waiting request within its client's share that finds no free place in the batch, the least
        urgent extra leaves the batch and waits again, keeping its KV: an idle holder, whose memory is the first
        taken when a request needs it, and which resumes without recomputation otherwise."""
        if not share.extras:
            return
        free = self.max_num_seqs - len(self.running)
        short = share.waiting_within(self.waiting, free + len(share.extras)) - free
        for seq in share.extras[::-1][: max(short, 0)]:
            share.leave(seq)
            self.running.remove(seq)
            self.add(seq)

    def _unscheduled_victim(self, i: int, share: ClientShare | None) -> Sequence | None:
        """Who gives running[i] its memory: the least urgent extra not yet scheduled this step; else, unless
        running[i] is an extra itself (it gives way instead), the least urgent running sequence after it."""
        if share is not None:
            for seq in reversed(share.extras):
                if self.running.index(seq) > i:
                    return seq
            if self.running[i] in share.extras:
                return None
        return self.running[-1] if len(self.running) > i + 1 else None

    def _chunk(self, seq: Sequence, n: int) -> int:
        """n, capped for a multimodal prompt's prefill (max_embed_chunk_tokens)."""
        cap = self.max_embed_chunk_tokens
        if cap and seq.prompt_embeds is not None and seq.num_computed_tokens < seq.num_prompt_tokens:
            return min(n, cap)
        return n

    def _idle_holder(self, exclude: Sequence) -> Sequence | None:
        """A sequence holding KV blocks without using them this step: paused, or resumed and waiting."""
        for seq in self.paused:
            if seq.block_table:
                return seq
        for seq in self.waiting:
            if seq.block_table and seq is not exclude:
                return seq
        return None

    def _preempt(self, seq: Sequence, out: SchedulerOutput, share: ClientShare | None = None) -> int:
        """Free seq's blocks (recompute later); returns the token budget its dropped chunk held."""
        returned = 0
        for chunk in out.chunks:
            if chunk.seq is seq:
                out.chunks.remove(chunk)
                returned = chunk.num_tokens
                break
        self.bm.free_sequence(seq)
        self.num_preemptions += 1
        out.preempted.append(seq)
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self.add(seq)
            if share is not None:
                share.leave(seq)
        return returned
