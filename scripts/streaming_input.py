"""What scripts/realtime_latency.py and scripts/ws_append_latency.py share to time streaming input (TTFT after the
end of a ~1,000-token message that arrived in ~50-token pieces, prefilled as they arrived, against the same message
sent at once): their options, the server they start, the message and its pieces, the pace the pieces arrive at, and
the loop over trials that prints the two medians. Each script measures one trial over its own endpoint."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from openai import AsyncOpenAI

from seedance.bench.server_process import ServerProcess, launch

VERSE = "And the LORD spake unto Moses in the wilderness of Sinai, in the tabernacle of the congregation, saying, "

# One trial: (trial number, the pieces, whether they arrive one by one) -> (TTFT s, prompt tokens, cached tokens).
Trial = Callable[[int, list[str], bool], Awaitable[tuple[float, int, int]]]


def arguments(doc: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="seedance serve --model (default: the built-in model)")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--piece", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between pieces")
    return parser.parse_args()


@contextlib.asynccontextmanager
async def served(model: str | None) -> AsyncIterator[tuple[ServerProcess, AsyncOpenAI, str, float]]:
    """A server of our own (sessions in a temporary SQLite file); yields it, an openai client for it, the served
    model's id and its tokenizer's words per token on VERSE (to cut messages of a given token length)."""
    tmp = Path(tempfile.mkdtemp())
    env: dict[str, object] = {"session_store": f"sqlite://{tmp / 's.db'}", "num_kv_blocks": 1024}
    if model:
        env["model"] = model
    srv = launch(env, tmp / "server.log", ready_timeout_s=120, poll_s=0.1)
    try:
        client = AsyncOpenAI(base_url=f"{srv.http}/v1", api_key="unused")
        model_id = (await client.models.list()).data[0].id
        counted = await client.completions.create(model=model_id, prompt=VERSE * 10, max_tokens=1)
        yield srv, client, model_id, len((VERSE * 10).split()) / counted.usage.prompt_tokens
    finally:
        srv.stop()


def message_pieces(words_per_token: float, trial: int, tokens: int, piece: int) -> list[str]:
    """A ~`tokens`-token message (unique per trial from its first word: no prefix-cache help) cut at word ends
    into ~`piece`-token pieces."""
    words = f"Trial {trial}: {VERSE * (tokens // 10)}".split(" ")[: int(tokens * words_per_token)]
    step = max(1, round(piece * words_per_token))
    pieces = [" ".join(words[i:i + step]) + " " for i in range(0, len(words), step)]
    pieces[-1] = pieces[-1].rstrip()
    return pieces


async def arrive(pieces: list[str], incremental: bool, interval_s: float,
                 send_piece: Callable[[str], Awaitable[None]]) -> str:
    """The message arrives at the pace of typing or transcription: every piece but the last sent `interval_s`
    apart (incremental), or nothing for as long (at once). Returns what is left to send at its end: the last
    piece, or the whole message."""
    if not incremental:
        await asyncio.sleep(interval_s * (len(pieces) - 1))
        return "".join(pieces)
    for piece in pieces[:-1]:
        await send_piece(piece)
        await asyncio.sleep(interval_s)
    return pieces[-1]


async def compare(trial: Trial, args: argparse.Namespace, words_per_token: float, model: str, pieces_are: str) -> None:
    """Each trial sent at once, then in pieces (a fresh message each, so no trial reuses another's KV); prints the
    TTFT medians and maxima and the median of the cached prompt tokens."""
    for incremental in (False, True):
        results = []
        for t in range(args.trials):
            pieces = message_pieces(words_per_token, t * 2 + incremental, args.tokens, args.piece)
            results.append(await trial(t, pieces, incremental))
        label = f"in {len(pieces)} {pieces_are}, prefilled as they arrive" if incremental else "sent at once"
        print(f"TTFT after the end of a {results[0][1]}-token prompt, {label} ({model}): median "
              f"{statistics.median(r[0] for r in results) * 1e3:.1f} ms, max {max(r[0] for r in results) * 1e3:.1f}"
              f" ms; cached tokens median {statistics.median(r[2] for r in results):.0f}")
