"""What a 4-image prompt costs on the `--engine process` command channel: the sizes of its EncodeImages (pixels)
and Add (feature rows) frames, and the time to encode and decode each (engine/core_protocol.py), for the
multimodal benchmark's tower and for LLaVA-1.5-7B's shape. Prints one line per shape (docs/multimodal.md).

    python scripts/process_frame_bench.py
"""

from __future__ import annotations

import statistics
import time

import torch

from seedance.engine.core_protocol import (
    Add,
    EncodeImages,
    FrameBuffer,
    decode_commands,
    embeds_to_wire,
    frame,
    tensor_bytes,
)
from seedance.engine.prompt_embeds import assemble_prompt
from seedance.engine.sampling_params import SamplingParams

SHAPES = {  # name: (image side, feature rows per image, language model width)
    "bench ViT-B/16 224 px, 576-wide LM": (224, 196, 576),
    "LLaVA-1.5-7B shape, 336 px": (336, 576, 4096),
}


def median_ms(fn, n: int = 20) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def feed(data: bytes) -> list[bytes]:
    """The core's read path: the frame arriving in 1 MiB reads (core_process.read_commands)."""
    buf = FrameBuffer()
    return [body for i in range(0, len(data), 1 << 20) for body in buf.feed(data[i:i + (1 << 20)])]


def measure(side: int, rows: int, hidden: int) -> str:
    pixels = torch.randn(4, 3, side, side)
    dtype, data = tensor_bytes(pixels)
    encode = [EncodeImages(1, dtype, list(pixels.shape), data)]
    encoded = frame(encode)
    ids, embeds = assemble_prompt([[1] * 20, *[("image", torch.randn(rows, hidden)) for _ in range(4)], [2] * 10])
    add = [Add("r", ids, SamplingParams(), embeds=embeds_to_wire(embeds))]
    added = frame(add)
    return (f"EncodeImages {len(encoded) / 1e6:.2f} MB, encode {median_ms(lambda: frame(encode)):.2f} ms, "
            f"decode {median_ms(lambda: decode_commands(encoded[4:])):.2f} ms; Add {len(added) / 1e6:.2f} MB, "
            f"encode {median_ms(lambda: frame(add)):.2f} ms, "
            f"decode {median_ms(lambda: decode_commands(added[4:])):.2f} ms; "
            f"Add read in 1 MiB pieces {median_ms(lambda: feed(added), 5):.2f} ms")


def main() -> None:
    for name, shape in SHAPES.items():
        print(f"{name}: {measure(*shape)}", flush=True)


if __name__ == "__main__":
    main()
