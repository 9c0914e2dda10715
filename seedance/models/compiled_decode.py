"""The decode step through torch.compile (`compile = true` / `SEEDANCE_COMPILE=1`; off by default).

At one row a decode step is ~40 % small per-layer ops (RMSNorm, RoPE, SiLU·mul, residual adds, views), each
paying eager dispatch for microseconds of arithmetic. Inductor (CPU, C++ codegen) fuses them into a few
kernels around the GEMMs and attention, traced once over the whole model and its head (all layers in one graph: a
graph per layer paid more in guards and wrappers than it saved), called from inductor's C++ wrapper. Only
decode-only steps take it; a step with prefill
chunks or prompt embeddings runs eager. The graphs are compiled at start-up (`warm`): one row, and 2+ rows with
the context length and row count dynamic, under each torch thread count the runner uses for them; a 2+-row
step always carries a padding mask (zeros when every context is as long), so equal and unequal lengths share a
graph. After warm-up a step that would recompile
runs eager instead (a recompile mid-serving would stall every stream for a minute), and any failure to compile
leaves the model eager, logged. Torch's int4 kernel is traced as its aten op, oneDNN's reordered bf16 weights
are called by handle (`seedance::packed_linear`), an int4 model's row split (RowSplitLinear) gets a graph per
side, and reordered float projections go back to their plain weights (the one-row GEMV reads them). Inductor's
caches go to ~/.cache/seedance/inductor (SEEDANCE_CACHE moves it; TORCHINDUCTOR_CACHE_DIR wins), so a second
start reuses the compiled kernels.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from seedance.models import float_gemv, int8_gemv, onednn_linear
from seedance.models.fp16_linear import Fp16Linear, register_compile_op, set_handle
from seedance.models.int8_linear import Int8Linear
from seedance.models.onednn_linear import PackedLinear, RowSplitLinear
from seedance.models.paged_attention import AttentionMetadata, cache_slots
from seedance.models.quantized_linear import QuantizedLinear

log = logging.getLogger(__name__)
BACKEND = "inductor"  # torch.compile's backend (tests swap in one that fails)
# Inductor's C++ wrapper: the graph's ~50 kernel and GEMM calls from C++ instead of a Python function (built-in
# model, one row, loaded box: 7.2 -> 6.7 ms CPU per step, docs/benchmarks.md).
OPTIONS = {"cpp_wrapper": True}
_instances = itertools.count()  # the first compiled model of a process numbers its layers from 0


def unsupported_layers(model: nn.Module) -> list[str]:
    """Projections of a kind the compiled graph does not know how to call (anything but these linears)."""
    linears = (nn.Linear, Fp16Linear, Int8Linear, QuantizedLinear, PackedLinear, RowSplitLinear)
    return sorted({type(m).__name__ for name, m in model.named_modules()
                   if name.endswith(("_proj", "lm_head")) and not isinstance(m, linears)})


def row_splits(model: nn.Module) -> set[int]:
    """Row counts from which a layer calls another kernel (RowSplitLinear's bf16 copy, a QuantizedLinear's
    dequantized weight): each starts a graph of its own, so that the guard on the row count tells them apart."""
    dtype = model.norm.weight.dtype
    split = [m for m in model.modules() if isinstance(m, RowSplitLinear)]
    behind = {id(m.small) for m in split}  # a RowSplitLinear's own kernel never sees more than its rows
    splits = {m.above_rows + 1 for m in split}
    limits = {m.kernel_max_rows(dtype) for m in model.modules()
              if isinstance(m, QuantizedLinear) and id(m) not in behind}
    return splits | {int(limit) + 1 for limit in limits if limit != float("inf")}


def plain_float_projections(model: nn.Module) -> int:
    """Undo onednn_linear's reordering of float projections (and the tied head's copy), in place: at one row
    inductor's own GEMV over the plain weight (float_gemv) beats oneDNN's reordered GEMM, and a compiled step's
    2+-row graph takes them as F.linear, as before it. An int4 layer's bf16 copy (RowSplitLinear) stays: its
    2+-row graph calls it. Returns how many."""
    count = 0
    for name, module in list(model.named_modules()):
        if not (isinstance(module, PackedLinear) and module.counted):
            continue
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        plain.weight = nn.Parameter(module.dequantize(torch.bfloat16), requires_grad=False)
        if module.bias is not None:
            plain.bias = nn.Parameter(module.bias, requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain)
        count += 1
    if getattr(model, "tie_word_embeddings", False) and isinstance(getattr(model, "lm_head", None), PackedLinear):
        model.lm_head = None  # compute_logits' tied path: the embedding's own weight
        count += 1
    return count


def inductor_cache_dir() -> str:
    root = os.environ.get("SEEDANCE_CACHE") or Path.home() / ".cache" / "seedance"
    return os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(root) / "inductor"))


def _decode(model, input_ids, positions, kv_caches, slot_mapping, decode_slots, decode_mask) -> torch.Tensor:
    """Logits [B, vocab]: the head in the graph too (its RMSNorm fused, no eager ops between the graph and the
    sampler). decode_mask: [B, L] or None (the graph adds the size-1 axes: their strides are whatever numpy gave)."""
    mask = None if decode_mask is None else decode_mask[:, None, None, :]
    meta = AttentionMetadata(slot_mapping, input_ids.shape[0], decode_slots, mask)
    return model.compute_logits(model(input_ids, positions, kv_caches, meta))


def _dense(t: torch.Tensor, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """t as dtype with row-major strides, size-1 axes included (a few hundred bytes: a copy costs less than a
    check), so every input has the dtype and layout the graphs were compiled for."""
    return torch.empty(t.shape, dtype=dtype).copy_(t)


class CompiledDecode:
    """model.compute_logits(model(input_ids, positions, kv_caches, meta)) for decode-only steps, compiled: the
    logits of every row; `None` from `create` when the model cannot take it (logged)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        register_compile_op()
        int8_gemv.register_compile_op()
        onednn_linear.register_compile_op()
        plain_float_projections(model)  # float ones: the one-row GEMV below reads their plain weights
        number = next(_instances)
        for i, layer in enumerate(m for m in model.modules() if isinstance(m, Fp16Linear | Int8Linear | PackedLinear)):
            set_handle(layer, 100_000 * number + i)
        dtype = model.norm.weight.dtype
        for layer in model.modules():
            if isinstance(layer, QuantizedLinear):
                layer.kernel_max_rows(dtype)  # looked up eagerly: the graph reads the layer's table
        int8_gemv.attach(model)  # int8 projections: inductor's GEMV at one row
        float_gemv.attach(model)  # float ones too (a tied float head: LlamaForCausalLM.compute_logits)
        inductor_cache_dir()
        # Dynamo keeps its graphs per code object: a copy of _decode's for each model, so that the graphs `warm`
        # compiles are all its function may hold, and another shape runs eager (torch logs it) instead of compiling.
        code = _decode.__code__.replace(co_name=f"_decode_{number}")
        self.code = code
        options = {**OPTIONS, **int8_gemv.COMPILE_OPTIONS} if BACKEND == "inductor" else None
        self.fn = torch.compile(types.FunctionType(code, _decode.__globals__), backend=BACKEND, dynamic=True,
                                options=options)

    @classmethod
    def create(cls, model: nn.Module, kv_caches: list[torch.Tensor], threads_for: Callable[[int], int] | None = None,
               max_rows: int = 2) -> CompiledDecode | None:
        """Compile and warm the graphs (one row; 2+ rows, under each torch thread count a step of up to max_rows
        rows runs on: threads_for(rows), the runner's rule), or log why not and return None."""
        if (bad := unsupported_layers(model)):
            log.warning("compile: off, the model has %s layers (float, fp16 and fbgemm int8 only)", ", ".join(bad))
            return None
        try:
            compiled = cls(model)
            start = time.perf_counter()
            compiled.warm(kv_caches, threads_for or (lambda rows: torch.get_num_threads()), max_rows)
        except Exception as err:  # whatever inductor or the C++ compiler raises: serve eager
            log.warning("compile: failed, the decode step runs eager: %s", str(err).splitlines()[0][:300])
            return None
        log.info("compile: decode step compiled in %.1f s (cache %s)", time.perf_counter() - start,
                 os.environ["TORCHINDUCTOR_CACHE_DIR"])
        return compiled

    def warm(self, kv_caches: list[torch.Tensor], threads_for: Callable[[int], int], max_rows: int) -> None:
        """Trace and compile the graphs on the first slots of the (still empty) pool, then zero them again.
        Dynamo guards torch's thread count, so a graph is compiled under each count a decode step can run on (the
        runner's large-step threads for 2+ rows give a second 2+-row graph). The pool's shape is static (else its
        K/V axis of 2 and a batch of 2 would share a symbol, and the graph would be for 2 rows only); rows and
        context length differ, so they get a symbol each, and the context is not 1 long (that would be
        specialized)."""
        shapes, seen = [1], set()
        splits = row_splits(self.model)
        for rows in range(2, max_rows + 1):  # none when a step has one row at most
            if threads_for(rows) not in seen or rows in splits:
                seen.add(threads_for(rows))
                shapes.append(rows)
        shapes = [r for r in shapes if r * (r + 1) <= cache_slots(kv_caches[0])]
        torch._dynamo.config.recompile_limit = len(shapes)
        for cache in kv_caches:
            torch._dynamo.mark_static(cache)
        saved = torch.get_num_threads()
        try:
            with torch.inference_mode():
                for rows in shapes:
                    torch.set_num_threads(threads_for(rows))
                    length = rows + 1
                    ids = torch.zeros(rows, dtype=torch.long)
                    positions = torch.full((rows,), length - 1, dtype=torch.long)
                    slots = torch.arange(rows * length, dtype=torch.long).view(rows, length)
                    meta = AttentionMetadata(slots[:, -1].contiguous(), rows, slots)
                    self.fn(*self.args(ids, positions, kv_caches, meta))
                for cache in kv_caches:
                    cache[:, :, : max(shapes) * (max(shapes) + 1)].zero_()
        finally:
            torch.set_num_threads(saved)
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list

        if len(_debug_get_cache_entry_list(self.code)) != len(shapes):
            raise RuntimeError(f"warm-up did not leave the {len(shapes)} compiled graphs")

    def args(self, input_ids, positions, kv_caches, meta: AttentionMetadata) -> tuple:
        """The graph's inputs in the layout it was compiled for (strides are guarded, those of size-1 axes too,
        and numpy's fancy indexing can hand the runner a column-major slot table), and a mask for every 2+-row
        step."""
        rows, length = meta.decode_slots.shape
        mask = meta.decode_mask
        if mask is not None:
            mask = _dense(mask.reshape(rows, length), kv_caches[0].dtype)
        elif rows > 1:
            mask = torch.zeros(rows, length, dtype=kv_caches[0].dtype)
        return (self.model, _dense(input_ids), _dense(positions), kv_caches, _dense(meta.slot_mapping),
                _dense(meta.decode_slots), mask)

    def __call__(self, input_ids, positions, kv_caches, meta: AttentionMetadata) -> torch.Tensor:
        """The step through a warmed graph, or eager. Dynamo checks only the guards that tell the warmed graphs
        apart (`skip_guard_eval_unsafe`: 0.25-0.44 ms, 4-7 %, of a built-in model step; docs/benchmarks.md): the
        rest hold by construction — `args` gives every input the graphs' dtypes and layout, the weights and the
        pool never change, and a context of one token (a one-token prompt's first step: the graphs were traced
        for 2+, and size 1 is specialized) runs eager here. A step that none of those guards accepts runs eager,
        never compiles (a recompile mid-serving would stall every stream for a minute). A failing kernel fails
        the step, as eager would."""
        if meta.decode_slots.shape[1] < 2:
            return self.model.compute_logits(self.model(input_ids, positions, kv_caches, meta))
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            return self.fn(*self.args(input_ids, positions, kv_caches, meta))
