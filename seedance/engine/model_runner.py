"""Runs one scheduled step on the torch model: builds the flattened batch and its paged-attention
metadata from plain scheduler output, executes the model, samples."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from seedance.engine.config import EngineConfig, default_kv_cache_bytes
from seedance.engine.guided import GuideCompiler
from seedance.engine.output_processor import SampledToken
from seedance.engine.sampler import Sampler
from seedance.engine.scheduler import ScheduledChunk
from seedance.models.llama import head_dim_of
from seedance.models.loader import LoadedModel, model_weights
from seedance.models.paged_attention import BMM_MIN_BATCH, AttentionMetadata, PrefillChunk, kv_cache_shape


@dataclass(slots=True)
class StepBatch:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    meta: AttentionMetadata
    sampling: list[ScheduledChunk]  # chunks that yield a token, in output order
    sample_index: torch.Tensor | None  # each sampling chunk's last token in the flattened batch; None: every token
    embeds: tuple[torch.Tensor, torch.Tensor] | None = None  # (batch index, rows) of prompt embedding rows


class ModelRunner(Protocol):
    num_kv_blocks: int
    kv_bytes_per_token: int

    def execute(self, chunks: list[ScheduledChunk]) -> list[tuple[ScheduledChunk, SampledToken]]:
        """Compute the chunks; return a sampled token for each chunk that reaches its sequence's end."""

    def forget(self, request_id: str) -> None:
        """Drop per-request state (seeded generators) once a request ends."""


def default_threads() -> int:
    """torch threads for the engine: every core this process may use but one. The event loop (sockets, SSE
    formatting) and local clients need a core; OpenMP threads that share it spin-wait on each other, and on
    2 cores 2 threads ran single-stream serving at 18-37 tok/s against 200 with 1 (docs/benchmarks.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


def set_engine_threads(config: EngineConfig) -> None:
    """Set torch's thread count before the model loads, not only before it runs: on a busy 2-core box the load's
    copies with 2 spin-waiting OpenMP threads took 215 ms against 7 ms with 1 (the built-in model)."""
    if config.threads or config.device == "cpu":
        torch.set_num_threads(config.threads or default_threads())


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Zeros whose pages the OS supplies on first write (calloc, through numpy) instead of torch.zeros writing
    every byte at start-up: the KV pool (256 MiB by default) costs no start-up time and no resident memory until
    it is used. Zeros, not torch.empty: attention multiplies masked slots by 0, and 0 * NaN garbage is NaN."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    element = torch.empty((), dtype=dtype).element_size()
    count = int(np.prod(shape))
    return torch.from_numpy(np.zeros(count * element, dtype=np.uint8)).view(dtype).view(shape)


class TorchModelRunner:
    def __init__(self, loaded: LoadedModel, config: EngineConfig) -> None:
        set_engine_threads(config)
        self.small_threads = torch.get_num_threads()
        self.large_threads = config.large_step_threads or self.small_threads
        weights = model_weights(loaded.model)
        self.large_step_tokens = max(1, -(-config.large_step_work // max(1, weights)))
        self.model = loaded.model
        self.device = torch.device(config.device)
        self.dtype = loaded.model.norm.weight.dtype  # the KV cache matches the model (quantized ones too)
        self.block_size = config.block_size
        mc = loaded.config
        self.hidden_size = int(mc.hidden_size)  # the width of prompt embedding rows it accepts
        num_kv_heads = mc.num_key_value_heads or mc.num_attention_heads
        head_dim = head_dim_of(mc)
        element = torch.empty((), dtype=self.dtype).element_size()
        self.kv_bytes_per_token = 2 * mc.num_hidden_layers * num_kv_heads * head_dim * element
        pool = config.kv_cache_bytes or default_kv_cache_bytes(config, self.kv_bytes_per_token, loaded.max_model_len)
        self.num_kv_blocks = config.num_kv_blocks or max(1, pool // (self.kv_bytes_per_token * self.block_size))
        slots = self.num_kv_blocks * self.block_size
        shape = kv_cache_shape(slots, num_kv_heads, head_dim)
        self.kv_caches = [lazy_zeros(shape, self.dtype, self.device) for _ in range(mc.num_hidden_layers)]
        self.compiled = None  # decode-only steps through torch.compile (models/compiled_decode.py), opt-in
        if config.compile:
            from seedance.models.compiled_decode import CompiledDecode  # imports torch._dynamo: only when asked

            self.compiled = CompiledDecode.create(self.model, self.kv_caches, self.step_threads, config.max_num_seqs)
        tokenizer = loaded.tokenizer
        self.guides = None  # constrained decoding needs the tokenizer's vocabulary
        if tokenizer is not None:
            vocab = max(mc.vocab_size, tokenizer.vocab_size)
            self.guides = GuideCompiler(tokenizer, vocab, config.max_guided_spec_bytes, config.guided_cache_size,
                                        config.guided_compile_fuel)
        self.sampler = Sampler(config.seed, self.device, guides=self.guides)

    def step_threads(self, tokens: int) -> int:
        """torch threads for a step of this many tokens (large_step_threads from large_step_tokens on)."""
        return self.large_threads if tokens >= self.large_step_tokens else self.small_threads

    def forget(self, request_id: str) -> None:
        self.sampler.forget(request_id)

    @torch.inference_mode()
    def execute(self, chunks: list[ScheduledChunk]) -> list[tuple[ScheduledChunk, SampledToken]]:
        if self.large_threads != self.small_threads:
            want = self.step_threads(sum(c.num_tokens for c in chunks))
            if torch.get_num_threads() != want:
                torch.set_num_threads(want)
        batch = self.prepare(chunks)
        if self.compiled is not None and not batch.meta.prefills and batch.embeds is None:
            logits = self.compiled(batch.input_ids, batch.positions, self.kv_caches, batch.meta)  # every row's
            if batch.sample_index is not None:
                logits = logits[batch.sample_index]
        else:
            hidden = self.model(batch.input_ids, batch.positions, self.kv_caches, batch.meta, batch.embeds)
            if not batch.sampling:
                return []
            logits = self.model.compute_logits(hidden if batch.sample_index is None else hidden[batch.sample_index])
        if not batch.sampling:
            return []
        seqs = [c.seq for c in batch.sampling]
        sampled = self.sampler(logits, [s.request_id for s in seqs], [s.params for s in seqs],
                               [s.token_ids for s in seqs], [s.num_prompt_tokens for s in seqs])
        return list(zip(batch.sampling, sampled, strict=True))

    def prepare(self, chunks: list[ScheduledChunk]) -> StepBatch:
        """Flatten the chunks (decodes first, then prefill chunks) into model inputs and metadata."""
        bs = self.block_size
        decodes = [c for c in chunks if c.num_tokens == 1]
        prefills = [c for c in chunks if c.num_tokens > 1]
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        for c in decodes:
            p, table = c.start, c.seq.block_table
            input_ids.append(c.seq.token_ids[p])
            positions.append(p)
            slots.append(table[p // bs] * bs + p % bs)

        meta = AttentionMetadata(slot_mapping=torch.empty(0), num_decode_tokens=len(decodes))
        ids_parts = [np.asarray(input_ids, dtype=np.int64)]
        pos_parts = [np.asarray(positions, dtype=np.int64)]
        slot_parts = [np.asarray(slots, dtype=np.int64)]
        offset = len(decodes)
        for c in prefills:
            table = np.asarray(c.seq.block_table, dtype=np.int64)
            pos = np.arange(c.start, c.start + c.num_tokens, dtype=np.int64)
            ids_parts.append(np.asarray(c.seq.token_ids[c.start : c.start + c.num_tokens], dtype=np.int64))
            pos_parts.append(pos)
            slot_parts.append(table[pos // bs] * bs + pos % bs)
            context = None
            if c.start:
                ctx = np.arange(c.start + c.num_tokens, dtype=np.int64)
                context = torch.from_numpy(table[ctx // bs] * bs + ctx % bs).to(self.device)
            meta.prefills.append(PrefillChunk(offset, c.num_tokens, c.start, context))
            offset += c.num_tokens

        if decodes:
            # Index math in numpy: a few microseconds for what took ~10 torch ops of ~5 us each per step.
            ctx_lens = np.asarray(positions, dtype=np.int64) + 1
            max_len = int(ctx_lens.max())
            max_blocks = -(-max_len // bs)
            table = np.zeros((len(decodes), max_blocks), dtype=np.int64)
            for i, c in enumerate(decodes):
                row = c.seq.block_table[:max_blocks]
                table[i, : len(row)] = row
            if self.compiled is None:  # whole blocks gathered (paged_attention.py): the length is whole blocks
                meta.decode_slots = torch.from_numpy(table).to(self.device)
                meta.decode_block_size = bs
                meta.decode_bmm = self.device.type == "cpu" and len(decodes) >= BMM_MIN_BATCH
                ar = np.arange(max_blocks * bs)
            else:  # the compiled graphs take the slot table
                ar = np.arange(max_len)
                meta.decode_slots = torch.from_numpy(table[:, ar // bs] * bs + ar % bs).to(self.device)
            if ctx_lens.min() < len(ar):  # padding to mask; with equal lengths (one stream, say) no mask at all
                mask = np.where(ar[None, :] >= ctx_lens[:, None], np.float32(-np.inf), np.float32(0))
                # in the dtype its attention path adds it in (the batched matmuls' float32 scores, else the
                # model's): built once a step, not converted in every layer
                dtype = torch.float32 if meta.decode_bmm else self.dtype
                meta.decode_mask = torch.from_numpy(mask).to(device=self.device, dtype=dtype)

        dev = self.device
        input_t = torch.from_numpy(np.concatenate(ids_parts)).to(dev)
        pos_t = torch.from_numpy(np.concatenate(pos_parts)).to(dev)
        meta.slot_mapping = torch.from_numpy(np.concatenate(slot_parts)).to(dev)

        sampling: list[ScheduledChunk] = []
        last_index: list[int] = []
        embed_index: list[torch.Tensor] = []
        embed_rows: list[torch.Tensor] = []
        end = 0
        for c in decodes + prefills:
            if c.seq.prompt_embeds is not None:
                for offset, rows in c.seq.prompt_embeds.rows_in(c.start, c.start + c.num_tokens):
                    embed_index.append(torch.arange(end + offset, end + offset + rows.shape[0]))
                    embed_rows.append(rows.to(self.dtype))
            end += c.num_tokens
            if c.samples:
                sampling.append(c)
                last_index.append(end - 1)
        embeds = (torch.cat(embed_index).to(dev), torch.cat(embed_rows).to(dev)) if embed_rows else None
        # Every row samples (a decode-only step): no gather of the hidden states.
        sample_index = None if len(last_index) == end else torch.tensor(last_index, dtype=torch.long, device=dev)
        return StepBatch(input_t, pos_t, meta, sampling, sample_index, embeds)
