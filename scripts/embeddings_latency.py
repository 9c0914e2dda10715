"""Latency of `POST /v1/embeddings` (docs/openai-endpoints.md): one `seedance serve` with the built-in model (or
--model), then --requests requests of --inputs copies of a ~110-token passage each, one at a time; the first is
a warm-up. Prints the median and the fastest request and the tokens embedded per second.

    python scripts/embeddings_latency.py [--model smollm2] [--inputs 64] [--requests 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from seedance.bench.server_process import launch

PASSAGE = "And God said, Let there be light: and there was light. " * 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--requests", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="seedance-embeddings-"))
    settings = {"session_store": f"sqlite://{tmp / 's.db'}", **({"model": args.model} if args.model else {})}
    server = launch(settings, tmp / "server.log", ready_timeout_s=300)
    try:
        tokens = httpx.post(f"{server.http}/tokenize", json={"prompt": PASSAGE}, timeout=60).json()["count"]
        seconds = []
        for _ in range(args.requests + 1):
            started = time.perf_counter()
            reply = httpx.post(f"{server.http}/v1/embeddings", json={"input": [PASSAGE] * args.inputs}, timeout=600)
            reply.raise_for_status()
            seconds.append(time.perf_counter() - started)
        median = statistics.median(seconds[1:])
        print(f"{args.inputs} inputs x {tokens} tokens: median {median:.3f} s, fastest {min(seconds[1:]):.3f} s, "
              f"{args.inputs * tokens / median:.0f} tokens/s")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
