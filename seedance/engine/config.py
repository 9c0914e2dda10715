"""Engine configuration: every bound the engine enforces lives here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class EngineConfig:
    model: str | None = None  # a local HF model directory, a .gguf file or a pulled name; None: the built-in one
    device: str = "cpu"  # "cpu" or "cuda[:N]"
    # auto: bfloat16 on CPUs with AMX / AVX512_BF16 and on bf16 GPUs, else float32 (models/precision.py)
    dtype: str = "auto"  # auto, float32, bfloat16, float16
    quantize: str = "auto"  # auto (a GGUF on the fastest kernel that holds it), none, int8, int4, fp16 (docs/model.md)
    # Decode-only steps through torch.compile (inductor, CPU): faster steps, a minute or more of compiling at
    # start-up (models/compiled_decode.py, docs/model.md); float, fp16 and fbgemm int8 weights (int8: one-row steps
    # on inductor's own GEMV, models/int8_gemv.py), else (int4) logged and eager.
    compile: bool = False
    # bfloat16 projections on oneDNN with their weights reordered once (models/onednn_linear.py): auto (on CPUs
    # with AMX-BF16 or AVX512_BF16, for a bfloat16 model of 32M+ weights; on AMX an int4 model also keeps a bf16 copy
    # of its weights for steps of more than 6 rows, +2 bytes per weight; `compile` puts float projections back on
    # plain weights), on (the copies on every CPU), off.
    onednn_linear: str = "auto"
    block_size: int = 16  # tokens per KV block
    kv_cache_bytes: int | None = None  # size of the paged KV pool; None: default_kv_cache_bytes (follows the model)
    kv_cache_tokens: int = 32768  # the default pool holds this many tokens, at the model's bytes per token
    kv_cache_max_fraction: float = 0.25  # ... but at most this share of the memory available at start
    num_kv_blocks: int | None = None  # overrides kv_cache_bytes when set
    max_num_seqs: int = 64  # running batch bound
    max_num_batched_tokens: int = 256  # tokens per step: decode tokens + prefill chunks
    max_waiting: int = 256  # waiting-queue bound; beyond it submit() raises EngineOverloaded
    max_model_len: int | None = None  # defaults to the model's max_position_embeddings
    max_tokens_limit: int = 4096  # largest max_tokens a request may ask for
    max_prompt_tokens: int | None = None  # longest prompt a request may send (policy); None: the context length
    # Text prompts are tokenized (and chat-templated) on a worker thread, off the event loop; at most this many
    # wait for it at once, beyond that submit() raises EngineOverloaded.
    max_pending_tokenize: int = 64
    # Process mode (`seedance serve --engine process`): commands waiting to be written to the engine process
    # beyond this many bytes refuse new requests with EngineOverloaded.
    process_channel_bytes: int = 8 << 20
    # Process mode: the engine core runs at most this many steps ahead of a gateway's delivery (each gateway tells
    # the core once it has handed a read's Step frames to its streams: `Delivered`). A gateway that keeps up gets
    # each step's token in its own chunk; one that falls behind gets at most this many steps coalesced per chunk,
    # and beyond that the core waits for it instead of piling steps into the socket. 1 or 2: the engine paces
    # itself to the gateway, one token per chunk (a bare server's ticker pattern), at the price of tokens/s when
    # the gateway is the bottleneck (coalescing amortizes each chunk's fixed cost; docs/server-stack.md).
    # None: no bound but the socket's buffer (~400 KiB of frames: 5 to 100s of steps, by the batch).
    max_steps_ahead: int | None = 8
    # Largest embedding payload one prompt part may carry (decoded bytes: raw f32le or a torch.save'd tensor);
    # checked before it is parsed. The rows also count as prompt tokens against max_prompt_tokens.
    max_prompt_embeds_bytes: int = 32 * 1024 * 1024
    # Images (LLaVA-family models): at most this many per prompt (video frames count one each), each at most
    # max_image_pixels (checked from its header, before decoding) and max_image_bytes (the encoded file).
    max_images_per_prompt: int = 16
    max_image_pixels: int = 4096 * 4096
    max_image_bytes: int = 16 * 1024 * 1024
    # A prompt with embedding rows or images is prefilled at most this many tokens per step (None: the step's
    # budget, max_num_batched_tokens), so one image does not stall the running streams for a whole budget.
    max_embed_chunk_tokens: int | None = 64
    # Fairness between clients (a client: one connection, GenerateRequest.client): this many of one client's
    # running requests are its share of the batch. Work-conserving: its others run while no other client's request
    # within its share waits, and are the first to give way when one does (engine/client_share.py; None: no share).
    max_running_per_client: int | None = 16
    # A step that carries decodes carries at most this many prefill tokens in all, so prompts arriving (a flood of
    # them, or one long one) cannot stretch the step every running stream waits on; a step without decodes takes
    # the whole budget. None (the default): no cap, prefills fill max_num_batched_tokens. Off by default: at 32 it
    # halved prefill throughput under the fuzz load (docs/reliability.md).
    decode_step_prefill_tokens: int | None = None
    # Process mode: a grammar's compile (on the core's guide thread, beside its step loop, without the GIL) runs
    # this much nicer than the loop (Linux, per thread; 0: the same priority), so on a busy machine it takes the CPU
    # the steps leave instead of stretching the step every running stream waits on: it is one request's work, the
    # steps are everyone's.
    beside_nice: int = 10
    # Process mode: an embeddings request's inputs go through the model in the core's loop, at most this many tokens
    # of them between two steps (one input at least, whatever its length), so a large group is spread over turns.
    embedding_tokens_per_turn: int = 128
    aging_interval_s: float = 2.0  # every interval waited raises a request's priority by one level
    enable_prefix_caching: bool = True
    max_pinned_kv_fraction: float = 0.5  # share of the KV pool idle sessions may pin for their next turn
    seed: int = 0  # seeds unseeded sampling, so a whole run is reproducible
    threads: int | None = None  # torch intra-op threads; None on CPU: all cores but one (model_runner.default_threads)
    # A large step, one whose tokens x the model's weights reach large_step_work, runs on large_step_threads torch
    # threads (None: `threads` for every step). Its matmuls split well over cores; a small step's ~250 tiny ops only
    # pay the threads' hand-offs, and an idle core is what the event loop needs meanwhile. The default 64M: every
    # step of a 135M-weight model, steps of 12 or more tokens of the built-in 5.5M one.
    large_step_threads: int | None = None
    large_step_work: int = 64_000_000
    # One dummy request (a short prefill + a few decodes) through the runner at start, so the first user request
    # does not pay first-call costs (allocator growth, kernel selection, lazy imports).
    warmup: bool = True
    # Constrained decoding (response_format, guided_*; engine/guided.py): the longest grammar source a request may
    # send, the compiled grammars kept for reuse, and llguidance's fuel for building one (about 50k per ms, so the
    # default bounds a compile near 20 ms of lexer work).
    max_guided_spec_bytes: int = 65536
    guided_cache_size: int = 64
    guided_compile_fuel: int = 1_000_000
    # Synthetic backend (transport benchmarks): tokens per second per stream, no model compute.
    synthetic_rate: float | None = None


def default_kv_cache_bytes(config: EngineConfig, kv_bytes_per_token: int, max_model_len: int) -> int:
    """The KV pool when kv_cache_bytes is unset: kv_cache_tokens tokens (at least one full-length sequence) of
    this model, capped at kv_cache_max_fraction of available memory, so a 135M model and a 5.5M one differ."""
    import psutil

    tokens = max(config.kv_cache_tokens, min(max_model_len, 8 * config.kv_cache_tokens))
    cap = int(psutil.virtual_memory().available * config.kv_cache_max_fraction)
    return max(kv_bytes_per_token * config.block_size, min(tokens * kv_bytes_per_token, cap))
