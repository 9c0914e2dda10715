"""Multimodal benchmark (issue #17): the per-image encode cost, the ITL of running text streams while images
arrive, and streaming vision (video frames sent one by one on a session vs re-sending all frames each time).

    python -m seedance.bench.multimodal [--model-dir DIR] [--streams 3] [--tokens 96] [--image-gap-s 0.25]
        [--max-num-batched-tokens 256] [--frames 6] [--engine thread|process]

The model is a randomly initialised LLaVA of realistic shape (seedance/bench/llava_checkpoint.py BENCH: a
ViT-B/16 tower at 224 px, 196 feature rows per image, and a SmolLM2-135M-shaped language model), built once into
--model-dir; random weights cost what trained ones cost. Bounded: a fixed number of requests, each with a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from seedance.bench.llava_checkpoint import BENCH, TINY, build_llava
from seedance.bench.server_process import launch


def png(seed: int, side: int = 224) -> bytes:
    """A random-noise PNG (any size works: the model's image processor resizes it)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((side, side, 3)) * 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(data).decode()}}


def messages_of(raw: str | bytes) -> list[dict]:
    """A text frame holds one message, or an array of them when the server batched an engine step."""
    parsed = json.loads(raw)
    return parsed if isinstance(parsed, list) else [parsed]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def encode_cost(model_dir: Path, repeats: int = 5) -> dict:
    """ms per vision.encode call (tower + projector), one image and a batch of 4, in this process."""
    import torch

    from seedance.models.llava import decode_image
    from seedance.models.loader import load_model

    torch.set_num_threads(1)  # as the server's vision thread runs beside the engine's
    vision = load_model(str(model_dir), dtype="float32").vision
    images = [decode_image(png(i), 1 << 30) for i in range(4)]
    vision.encode(images[:1])
    out = {}
    for n in (1, 4):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            vision.encode(images[:n])
            times.append(time.perf_counter() - start)
        out[f"encode_{n}_ms"] = statistics.median(times) * 1000
    return out


async def _stream(ws_url: str, request: dict, gaps: list[float]) -> float:
    """Send one request, note the gaps between its chunks; its seconds from send to done."""
    from websockets.asyncio.client import connect

    async with connect(ws_url, max_size=None) as ws:
        start = time.perf_counter()
        await ws.send(json.dumps({"type": "generate", **request}))
        last = None
        async with asyncio.timeout(300):
            while True:
                for msg in messages_of(await ws.recv()):
                    if msg["type"] == "chunk":
                        now = time.perf_counter()
                        if last is not None:
                            gaps.append(now - last)
                        last = now
                    elif msg["type"] in ("done", "error"):
                        return time.perf_counter() - start


async def itl_under_images(ws_url: str, streams: int, tokens: int, image_gap_s: float | None) -> dict:
    """ITL of `streams` text streams; with image_gap_s, 1-image requests (1 output token) arrive one after
    another, image_gap_s after the previous one was answered (closed loop: a rate the server sustains)."""
    gaps: list[float] = []
    text = {"prompt": "And God said unto Moses,", "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    tasks = [asyncio.create_task(_stream(ws_url, {"id": f"t{i}", **text}, gaps)) for i in range(streams)]
    sent, answers = 0, []
    while image_gap_s is not None and not all(t.done() for t in tasks):
        await asyncio.sleep(image_gap_s)
        request = {"id": f"img{sent}", "max_tokens": 1, "messages": [
            {"role": "user", "content": [image_part(png(100 + sent)), {"type": "text", "text": "What?"}]}]}
        answers.append(await _stream(ws_url, request, []))
        sent += 1
    await asyncio.gather(*tasks)
    return {"itl_p50_ms": pct(gaps, 50), "itl_p99_ms": pct(gaps, 99), "itl_max_ms": pct(gaps, 100),
            "images_sent": sent, "gaps": len(gaps), "image_answer_p50_ms": pct(answers, 50)}


async def streaming_vision(ws_url: str, frames: int) -> dict:
    """Per-frame answer latency: each frame a session turn (earlier frames' KV kept) vs one request with every
    frame so far (all re-encoded; the prefix cache may still hold their KV)."""
    from websockets.asyncio.client import connect

    question = {"type": "text", "text": "What changed?"}
    name = f"video-{uuid.uuid4().hex}"  # a new session: a restored one keeps no image rows (docs/multimodal.md)
    session, resend = [], []
    async with connect(ws_url, max_size=None) as ws:
        async def ask(request: dict) -> float:
            start = time.perf_counter()
            await ws.send(json.dumps({"type": "generate", "max_tokens": 4, "temperature": 0, **request}))
            async with asyncio.timeout(300):
                while True:
                    for msg in messages_of(await ws.recv()):
                        if msg["type"] == "error":
                            raise RuntimeError(msg["message"])
                        if msg["type"] == "done":
                            return time.perf_counter() - start

        for k in range(frames):
            turn = [{"role": "user", "content": [image_part(png(200 + k)), question]}]
            session.append(await ask({"id": f"s{k}", "session": name, "messages": turn}))
        for k in range(frames):
            everything = [image_part(png(200 + j)) for j in range(k + 1)]
            resend.append(await ask({"id": f"r{k}", "messages": [{"role": "user", "content": [*everything,
                                                                                                  question]}]}))
    return {"session_ms": [round(s * 1000) for s in session], "resend_ms": [round(s * 1000) for s in resend]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "seedance-llava-bench")
    ap.add_argument("--streams", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--image-gap-s", type=float, default=0.25)
    ap.add_argument("--max-num-batched-tokens", type=int, default=256)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--shape", choices=("bench", "tiny"), default="bench", help="tiny: the tests' checkpoint (smoke)")
    ap.add_argument("--engine", choices=("thread", "process"), default=None,
                    help="the server's engine mode (default: the server's default)")
    args = ap.parse_args(argv)
    if not (args.model_dir / "config.json").is_file():
        build_llava(args.model_dir, BENCH if args.shape == "bench" else TINY)
    result = {"encode": encode_cost(args.model_dir)}
    server = launch({"model": args.model_dir, "dtype": "float32", "max_message_bytes": 8 << 20,
                     "max_images_per_prompt": max(16, args.frames),
                     "max_num_batched_tokens": args.max_num_batched_tokens,
                     **({"engine_mode": args.engine} if args.engine else {})},
                    Path(tempfile.gettempdir()) / "seedance-mm-bench.log", ready_timeout_s=300)
    try:
        result["text_only"] = asyncio.run(itl_under_images(server.ws, args.streams, args.tokens, None))
        result["with_images"] = asyncio.run(itl_under_images(server.ws, args.streams, args.tokens,
                                                             args.image_gap_s))
        result["streaming_vision"] = asyncio.run(streaming_vision(server.ws, args.frames))
    finally:
        server.stop()
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
