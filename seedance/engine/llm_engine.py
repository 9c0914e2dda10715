"""The synchronous engine core: admission, one step at a time, events out. Not thread-safe by design:
AsyncEngine owns it and calls it from one thread at a time."""

from __future__ import annotations

import dataclasses
import logging
import time

from seedance.engine.block_manager import BlockManager
from seedance.engine.config import EngineConfig
from seedance.engine.errors import EngineOverloaded, InvalidRequest, RequestNotFound
from seedance.engine.events import FinishReason, TokenEvent
from seedance.engine.model_runner import ModelRunner
from seedance.engine.output_processor import RequestOutputState
from seedance.engine.prompt_embeds import PromptEmbeds
from seedance.engine.sampling_params import SamplingParams
from seedance.engine.scheduler import Scheduler
from seedance.engine.sequence import Sequence, SequenceStatus
from seedance.engine.stats import EngineStats
from seedance.models.tokenizer import TextTokenizer

log = logging.getLogger(__name__)


class LLMEngine:
    def __init__(
        self, config: EngineConfig, runner: ModelRunner, tokenizer: TextTokenizer | None, max_model_len: int
    ) -> None:
        self.config = config
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.block_manager = BlockManager(runner.num_kv_blocks, config.block_size, config.enable_prefix_caching)
        self.block_manager.max_pinned_blocks = int(runner.num_kv_blocks * config.max_pinned_kv_fraction)
        self.scheduler = Scheduler(
            self.block_manager, config.max_num_seqs, config.max_num_batched_tokens, config.aging_interval_s,
            config.max_embed_chunk_tokens, config.max_running_per_client, config.decode_step_prefill_tokens,
        )
        self.requests: dict[str, RequestOutputState] = {}
        self.eos_token_ids = tokenizer.eos_token_ids if tokenizer else frozenset()
        self.guides = getattr(runner, "guides", None)  # engine/guided.py GuideCompiler; None: no constrained decoding
        self.steps = 0
        self.generated_tokens = 0
        # time_ns() when each load phase ended, taken on the engine thread: config_loaded, weights_loaded,
        # tokenizer_loaded, kv_allocated (from_config), warmup_done (warmup); the server's cold-start marks.
        self.load_times: dict[str, int] = {}
        self.model_name: str | None = None  # the model's own name (models/loader.py served_name); None: synthetic
        # Width of the prompt embedding rows the model takes (its hidden size); None: it takes none (synthetic).
        self.hidden_size: int | None = getattr(runner, "hidden_size", None)
        # A LLaVA-family model's image encoder (models/llava.py VisionEncoder); None: the model takes no images.
        self.vision = None

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLMEngine:
        from seedance.models.precision import resolve_dtype

        requested = config.dtype  # a model's "auto" is the loader's: it knows the kernels its projections take
        config = dataclasses.replace(config, dtype=resolve_dtype(config.dtype, config.device))
        if config.synthetic_rate:
            from seedance.engine.synthetic_runner import SyntheticRateRunner

            start = time.time_ns()  # no config or weights: the tokenizer is all it loads
            runner, tokenizer, max_len = SyntheticRateRunner.create(config)
            times = {"config_loaded": start, "weights_loaded": start, "tokenizer_loaded": time.time_ns()}
            engine = cls(config, runner, tokenizer, max_len)
        else:
            from seedance.engine.model_runner import TorchModelRunner, set_engine_threads
            from seedance.models.loader import load_model

            set_engine_threads(config)
            loaded = load_model(config.model, config.device, requested, config.max_model_len, config.quantize,
                                config.onednn_linear)
            config = dataclasses.replace(config, dtype=loaded.dtype)
            times = dict(loaded.timings)
            engine = cls(config, TorchModelRunner(loaded, config), loaded.tokenizer, loaded.max_model_len)
            engine.model_name = loaded.name
            engine.vision = loaded.vision
        engine.load_times = {**times, "kv_allocated": time.time_ns()}  # the runner's KV pool + the block table
        return engine

    @property
    def embedding_shape(self) -> tuple[int, int] | None:
        """(vector size, vocabulary size) of the model /v1/embeddings pools; None: no model (synthetic)."""
        model = getattr(self.runner, "model", None)
        return (int(model.config.hidden_size), int(model.config.vocab_size)) if model is not None else None

    @property
    def takes_images(self) -> bool:
        """The served model is multimodal (images in chat content parts); transports and /v1/models show it."""
        return self.vision is not None

    def warmup(self, prompt_tokens: int = 16, decode_steps: int = 3) -> None:
        """Run one dummy request (a prefill, then decode_steps decodes, sampled with temperature / top-k / top-p)
        through the real runner, so the first user request does not pay first-call costs. Its KV blocks are freed
        (the prefix cache may keep them, as after any request); the counters and the unseeded sampling generator
        are as they were, so a run's outputs do not depend on it."""
        n = max(1, min(prompt_tokens, self.max_model_len - decode_steps - 2))
        # Through the tokenizer when there is one: its first encode has a first-call cost of its own.
        ids = (self.tokenizer.encode(" warm up" * n) if self.tokenizer else [])[:n] or list(range(1, n + 1))
        params = SamplingParams(max_tokens=decode_steps + 1, temperature=1.0, top_k=40, top_p=0.95, ignore_eos=True)
        generator = getattr(getattr(self.runner, "sampler", None), "generator", None)
        state = generator.get_state() if generator is not None else None
        request_id = "seedance-warmup"
        try:
            self.add_request(request_id, ids, params)
            for _ in range(64 + n):  # bounded: a prefill in chunks, then the decodes
                if request_id not in self.requests:
                    break
                self.step()
            self.load_times["warmup_done"] = time.time_ns()
        except (InvalidRequest, EngineOverloaded) as err:  # a tiny KV pool or token limit: start cold
            log.warning("engine warm-up skipped: %s", err)
        finally:
            self.abort(request_id)
            if state is not None:
                generator.set_state(state)
            self.steps = self.generated_tokens = 0
            self.block_manager.stats.query_tokens = self.block_manager.stats.hit_tokens = 0
            self.scheduler.num_preemptions = 0

    # ---- admission --------------------------------------------------------------------------------
    def check_admission(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        pending: int = 0,
        prompt_embeds: PromptEmbeds | None = None,
    ) -> None:
        """Raise InvalidRequest / EngineOverloaded now rather than let a request grow memory later. Embedding
        rows count as prompt tokens; their positions hold content ids (prompt_embeds.py), the only negative ids
        a prompt may have."""
        params.validate()
        if request_id in self.requests:
            raise InvalidRequest(f"duplicate request id {request_id!r}")
        if not prompt_token_ids:
            raise InvalidRequest("prompt is empty")
        if params.max_tokens > self.config.max_tokens_limit:
            raise InvalidRequest(f"max_tokens {params.max_tokens} exceeds the limit {self.config.max_tokens_limit}")
        if self.config.max_prompt_tokens is not None and len(prompt_token_ids) > self.config.max_prompt_tokens:
            raise InvalidRequest(
                f"prompt has {len(prompt_token_ids)} tokens; the limit is {self.config.max_prompt_tokens}"
            )
        if len(prompt_token_ids) >= self.max_model_len:
            raise InvalidRequest(
                f"prompt has {len(prompt_token_ids)} tokens; the model's context is {self.max_model_len}"
            )
        num_rows = prompt_embeds.num_rows if prompt_embeds is not None else 0
        if num_rows and self.hidden_size is None:
            raise InvalidRequest("this model takes no prompt embeddings")
        negatives = sum(t < 0 for t in prompt_token_ids) if min(prompt_token_ids) < 0 else 0
        if negatives != num_rows:  # content ids without their rows (or forged ones)
            raise InvalidRequest("prompt token id out of the vocabulary (a negative id stands for an embedding row "
                                 "this request does not carry)")
        vocab = self.tokenizer.vocab_size if self.tokenizer else None
        if vocab is not None and max(prompt_token_ids) >= vocab:
            raise InvalidRequest("prompt token id out of the vocabulary")
        if params.logit_bias and vocab is not None and max(params.logit_bias) >= vocab:
            raise InvalidRequest("logit_bias token id out of the vocabulary")
        if params.guided is not None and self.guides is None:
            raise InvalidRequest("this backend has no constrained decoding (response_format, guided_*)")
        if self.block_manager.blocks_needed(len(prompt_token_ids) + 1) > self.block_manager.num_blocks:
            raise InvalidRequest("prompt does not fit in the KV cache")
        if len(self.scheduler.waiting) + pending >= self.config.max_waiting:
            raise EngineOverloaded(f"waiting queue is full ({self.config.max_waiting} requests); retry later")

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        priority: int = 0,
        arrival_time: float | None = None,
        pin_key: str | None = None,
        prompt_embeds: PromptEmbeds | None = None,
        client: str | None = None,
    ) -> None:
        """client: whose request it is (max_running_per_client).
        pin_key: when the request completes, keep its KV pinned under this key (a session) so the
        conversation's next turn reuses it instead of recomputing. prompt_embeds: the embedding rows of a
        prompt built by prompt_embeds.assemble_prompt (prompt_token_ids then holds their content ids)."""
        self.check_admission(request_id, prompt_token_ids, params, prompt_embeds=prompt_embeds)
        seq = Sequence(
            request_id,
            prompt_token_ids,
            params,
            priority,
            time.monotonic() if arrival_time is None else arrival_time,
            prompt_embeds,
        )
        seq.pin_key = pin_key
        seq.client = client
        self.requests[request_id] = RequestOutputState(
            seq, self.tokenizer.backend if self.tokenizer else None, self.eos_token_ids, self.max_model_len
        )
        self.scheduler.add(seq)

    def _seq(self, request_id: str) -> Sequence:
        state = self.requests.get(request_id)
        if state is None:
            raise RequestNotFound(f"no active request {request_id!r}")
        return state.seq

    # ---- control ----------------------------------------------------------------------------------
    def abort(self, request_id: str, reason: FinishReason = FinishReason.CANCELLED,
              keep_tokens: int | None = None) -> TokenEvent | None:
        """End a request wherever it is and free its KV blocks at once. keep_tokens: a session turn cut short
        keeps the KV of that many of its tokens pinned for the next turn (realtime barge-in)."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return None
        seq = state.seq
        if keep_tokens is not None and seq.pin_key is not None:
            self.block_manager.pin(seq.pin_key, seq, keep_tokens)
        self.scheduler.finish(seq, reason)
        self.runner.forget(request_id)
        return TokenEvent(
            request_id,
            seq.num_output_tokens,
            -1,
            "",
            finish_reason=reason,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_tokens,
            num_embedding_tokens=seq.num_prompt_rows("embedding"),
            num_image_tokens=seq.num_prompt_rows("image"),
        )

    def pause(self, request_id: str) -> None:
        self.scheduler.pause(self._seq(request_id))

    def resume(self, request_id: str) -> None:
        self.scheduler.resume(self._seq(request_id))

    def set_priority(self, request_id: str, priority: int) -> None:
        self.scheduler.set_priority(self._seq(request_id), priority)

    def unpin(self, key: str) -> None:
        self.block_manager.unpin(key)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def status_of(self, request_id: str) -> SequenceStatus:
        return self._seq(request_id).status

    # ---- the step ---------------------------------------------------------------------------------
    def step(self, now: float | None = None) -> list[TokenEvent]:
        out = self.scheduler.schedule(time.monotonic() if now is None else now)
        if not out:
            return []
        try:
            results = self.runner.execute(out.chunks)
        except Exception:
            log.exception("model step failed; failing the %d requests in it", len(out.chunks))
            return [ev for c in out.chunks if (ev := self.abort(c.seq.request_id, FinishReason.ERROR))]
        self.steps += 1
        bm = self.block_manager
        block_size = bm.block_size if bm.enable_prefix_caching else 0
        for chunk in out.chunks:
            seq = chunk.seq
            seq.num_computed_tokens += chunk.num_tokens
            if block_size and seq.num_computed_tokens // block_size > seq.num_committed_blocks:
                bm.commit(seq)  # a block completed in this step: publish it to the prefix cache
        events: list[TokenEvent] = []
        requests = self.requests
        try:
            for chunk, sampled in results:
                seq = chunk.seq
                seq.token_ids.append(sampled.token_id)
                state = requests[seq.request_id]
                if state.direct:  # no stop strings: one event per token, nothing held back
                    event = state.direct_event(sampled)
                    events.append(event)
                    if event.finish_reason is not None:
                        self._finish(seq, event)
                    continue
                ready = state.process(sampled)
                events += ready
                if ready and ready[-1].finished:
                    self._finish(seq, ready[-1])
        finally:
            self.scheduler.drop_finished()
        self.generated_tokens += len(results)
        return events

    def _finish(self, seq: Sequence, event: TokenEvent) -> None:
        """The step's last event of seq ended it: the request leaves, its KV is freed (or pinned for a session).
        It leaves the running list with the step's other finished ones (Scheduler.drop_finished)."""
        del self.requests[seq.request_id]
        if seq.pin_key is not None:
            self.block_manager.pin(seq.pin_key, seq)
        self.scheduler.finish(seq, event.finish_reason, batched=True)
        self.runner.forget(seq.request_id)

    def stats(self) -> EngineStats:
        bm, sch = self.block_manager, self.scheduler
        return EngineStats(
            len(sch.waiting),
            len(sch.running),
            len(sch.paused),
            bm.num_free_blocks,
            bm.num_blocks,
            bm.stats.query_tokens,
            bm.stats.hit_tokens,
            sch.num_preemptions,
            bm.num_pinned_blocks,
            self.steps,
            self.generated_tokens,
            self.runner.kv_bytes_per_token * self.config.block_size,
        )
