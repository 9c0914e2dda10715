"""Prompts that mix token ids and embedding rows (issue #17): the rows are spliced into the model's input
embeddings where they stand, everything else (scheduling, chunked prefill, preemption, paged KV) works on
token positions as before.

Each embedding row takes one prompt position whose token id is a *content id*: a negative number derived from
a BLAKE3 hash of the segment's bytes and the row's index in it. So every piece of the engine that reasons on
token ids (the prefix cache's hash chain and its block check, a session pin's continuation check) tells two
different embeddings apart and finds the same embedding again, without knowing about embeddings at all.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Literal

import blake3
import numpy as np

from seedance.engine.errors import InvalidRequest
from seedance.engine.payload import payload_bytes

if TYPE_CHECKING:  # torch is imported where rows are handled, not with the module: `--engine process`'s
    # gateway imports this for its types and must stay torch-free until a prompt actually carries rows
    import torch

ACCEPTED_DTYPE_NAMES = ("float32", "bfloat16", "float16")  # by name: the wire's and the gateway's view
_ID_SPACE = 2**62  # content ids lie in [-2**62, -1]: far from any vocabulary, and int64-safe


@cache
def _exponent_masks() -> dict:
    """dtype -> (integer view, exponent mask): a value is NaN or infinite exactly when its exponent bits are all
    set. Checked in numpy on the bits, so the check runs off the engine thread without starting a torch thread
    pool."""
    import torch

    return {torch.float32: (torch.int32, 0x7F800000), torch.bfloat16: (torch.int16, 0x7F80),
            torch.float16: (torch.int16, 0x7C00)}


def _is_tensor(value: object) -> bool:
    """A torch tensor, without importing torch for a value that cannot be one (torch is loaded if it is)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _is_rows(value: object) -> bool:
    """Embedding rows: a tensor, or a numpy array (decode_rows(as_tensor=False): the process mode's gateway)."""
    return isinstance(value, np.ndarray) or _is_tensor(value)


@dataclass(frozen=True, slots=True)
class EncodedRows:
    """Embedding rows as they came on the wire, decoded on the engine's tokenizer thread (not the event loop).
    f32le: raw little-endian float32, row after row; torch: a torch.save'd tensor, as vLLM's prompt_embeds."""

    data: bytes | str  # the bytes, or their standard base64
    format: Literal["f32le", "torch"] = "f32le"


@dataclass(frozen=True, slots=True)
class EmbedSegment:
    start: int  # the prompt position of its first row
    # [n, hidden_size], CPU, one of ACCEPTED_DTYPE_NAMES; a float32 numpy array where the rows only pass through
    # on their way to an engine process (the gateway of `--engine process` has no torch)
    rows: torch.Tensor | np.ndarray
    digest: bytes  # BLAKE3 of dtype, shape and bytes
    kind: str = "embedding"  # "embedding" (sent by the client) or "image" (features of an image encoder)

    @property
    def end(self) -> int:
        return self.start + self.rows.shape[0]


@dataclass(frozen=True, slots=True)
class PromptEmbeds:
    """The embedding segments of one prompt, in position order, never overlapping."""

    segments: tuple[EmbedSegment, ...]

    @property
    def num_rows(self) -> int:
        return sum(s.rows.shape[0] for s in self.segments)

    def count(self, kind: str) -> int:
        return sum(s.rows.shape[0] for s in self.segments if s.kind == kind)

    @staticmethod
    def join(head: PromptEmbeds | None, offset: int, tail: PromptEmbeds | None) -> PromptEmbeds | None:
        """The embeddings of a prompt made of head's prompt and, from position offset on, tail's (a session's
        history and its new turn): tail's segments move by offset."""
        moved = tuple(EmbedSegment(s.start + offset, s.rows, s.digest, s.kind) for s in tail.segments) if tail else ()
        segments = (head.segments if head else ()) + moved
        return PromptEmbeds(segments) if segments else None

    def rows_in(self, start: int, end: int) -> list[tuple[int, torch.Tensor]]:
        """(offset from start, rows) for every row whose position lies in [start, end)."""
        found = []
        for seg in self.segments:
            lo, hi = max(start, seg.start), min(end, seg.end)
            if lo < hi:
                found.append((lo - start, seg.rows[lo - seg.start : hi - seg.start]))
        return found


def check_rows(rows: torch.Tensor, hidden_size: int | None, what: str = "prompt embedding") -> torch.Tensor:
    """The rows as a contiguous CPU tensor, or InvalidRequest saying what is wrong with them."""
    if hidden_size is None:
        raise InvalidRequest("this model takes no prompt embeddings")
    if not _is_tensor(rows):
        raise InvalidRequest(f"{what} must be a tensor")
    import torch

    masks = _exponent_masks()
    if rows.dtype not in masks:
        raise InvalidRequest(f"{what} has dtype {str(rows.dtype).removeprefix('torch.')}; "
                             "accepted: float32, bfloat16, float16")
    if rows.dim() == 3 and rows.shape[0] == 1:  # a batch of one, as vLLM's clients often send
        rows = rows[0]
    if rows.dim() != 2 or rows.shape[0] < 1 or rows.shape[1] != hidden_size:
        raise InvalidRequest(f"{what} has shape {list(rows.shape)}; expected [n, {hidden_size}] with n >= 1")
    if rows.is_sparse or rows.layout is not torch.strided:
        raise InvalidRequest(f"{what} must be a dense tensor")
    rows = rows.detach().to("cpu").contiguous()
    view, mask = masks[rows.dtype]
    if bool((rows.view(view).numpy() & mask == mask).any()):
        raise InvalidRequest(f"{what} has NaN or infinite values")
    return rows


def decode_rows(encoded: EncodedRows, hidden_size: int | None, max_bytes: int, what: str,
                as_tensor: bool = True) -> torch.Tensor | np.ndarray:
    """The tensor that encoded holds, bounded by max_bytes before anything is parsed; never unpickles anything
    but tensors (torch.load weights_only, as vLLM does). InvalidRequest for anything else. as_tensor False: f32le
    rows stay a float32 numpy array (checked the same way), for a gateway that only sends them on; a torch.save'd
    tensor is a tensor either way."""
    if hidden_size is None:
        raise InvalidRequest("this model takes no prompt embeddings")
    data = payload_bytes(encoded.data, max_bytes, what)
    if encoded.format == "f32le":
        width = 4 * hidden_size
        if not data or len(data) % width:
            raise InvalidRequest(f"{what}: {len(data)} bytes is not a whole number of rows of {hidden_size} "
                                 "float32 values")
        rows = np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(-1, hidden_size)
        if as_tensor:
            import torch

            return check_rows(torch.from_numpy(rows), hidden_size, what)
        if not np.isfinite(rows).all():
            raise InvalidRequest(f"{what} has NaN or infinite values")
        return rows
    import torch

    try:
        with torch.sparse.check_sparse_tensor_invariants():
            rows = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as err:  # untrusted bytes: whatever the parser makes of them, the request is what is wrong
        raise InvalidRequest(f"{what} is not a torch.save'd tensor ({type(err).__name__})") from None
    return check_rows(rows, hidden_size, what)


def digest_of(rows: torch.Tensor | np.ndarray) -> bytes:
    """BLAKE3 of dtype, shape and bytes: equal for a tensor and a numpy array of the same values (the content ids,
    the prefix cache and session hashes are the same whichever engine mode built the prompt)."""
    if isinstance(rows, np.ndarray):
        raw = rows.view(np.int16 if rows.itemsize == 2 else np.int32).tobytes()
        dtype = f"torch.{rows.dtype}"
    else:
        import torch

        raw = rows.view(torch.int16 if rows.element_size() == 2 else torch.int32).numpy().tobytes()
        dtype = str(rows.dtype)
    header = f"{dtype}:{list(rows.shape)}:".encode()
    return blake3.blake3(header + raw).digest(length=16)


def content_ids(digest: bytes, n: int) -> list[int]:
    """The n negative ids standing for a segment's rows (consecutive from a point its digest picks)."""
    base = int.from_bytes(digest[:8], "little") % (_ID_SPACE - n)
    return (-(np.arange(base, base + n, dtype=np.int64) + 1)).tolist()


def assemble_prompt(
    parts: Iterable[list[int] | torch.Tensor | tuple[str, torch.Tensor]],
) -> tuple[list[int], PromptEmbeds | None]:
    """Token-id lists and checked embedding tensors (bare, or (kind, tensor)), in order, as one prompt: its ids
    (content ids for the rows) and its embeddings (None when it has none)."""
    ids: list[int] = []
    segments: list[EmbedSegment] = []
    for part in parts:
        kind, part = part if isinstance(part, tuple) else ("embedding", part)
        if _is_rows(part):
            digest = digest_of(part)
            segments.append(EmbedSegment(len(ids), part, digest, kind))
            ids += content_ids(digest, part.shape[0])
        else:
            ids += part
    return ids, (PromptEmbeds(tuple(segments)) if segments else None)
