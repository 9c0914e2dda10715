"""What the tokenizer thread hand-off costs against tokenizing on the event loop (issue #16, branch gwcost).

    PYTHONPATH=$PWD python scripts/tokenize_handoff.py [--model DIR] [--calls 2000]

For prompts of several lengths (the transports bench's prompt repeated), the process CPU per prompt (all threads:
`time.process_time`) and the loop's wall time per prompt, tokenized either inline on the event loop or through
`run_in_executor` on a one-thread pool as EngineFront.tokenize does, with 64 prompts in flight (as a loaded
gateway has), on uvloop as the server runs. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop

from seedance.bench.loadgen import PROMPT
from seedance.models.loader import BUILTIN_MODEL_DIR
from seedance.models.tokenizer import TextTokenizer


async def measure(tokenizer: TextTokenizer, text: str, calls: int, inline: bool) -> tuple[float, float]:
    """(CPU µs per prompt, loop wall µs per prompt)."""
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=1)

    async def one() -> None:
        if inline:
            tokenizer.encode(text)
        else:
            await loop.run_in_executor(pool, tokenizer.encode, text)

    await asyncio.gather(*[one() for _ in range(64)])  # warm
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls // 64):
        await asyncio.gather(*[one() for _ in range(64)])
    n = calls // 64 * 64
    result = (1e6 * (time.process_time() - cpu) / n, 1e6 * (time.perf_counter() - wall) / n)
    pool.shutdown()
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(BUILTIN_MODEL_DIR))
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table has their medians")
    args = parser.parse_args()
    tokenizer = TextTokenizer.from_dir(Path(args.model))
    print("| prompt chars | tokens | inline CPU µs | thread CPU µs | inline loop µs | thread loop µs |")
    print("|---|---|---|---|---|---|")
    for repeat in (1, 4, 16, 64):
        text = " ".join([PROMPT] * repeat)
        runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(args.rounds):
            for inline in (True, False):
                runs[inline].append(await measure(tokenizer, text, args.calls, inline))

        med = {(inline, i): statistics.median(r[i] for r in rs) for inline, rs in runs.items() for i in (0, 1)}
        print(f"| {len(text)} | {len(tokenizer.encode(text))} | {med[True, 0]:.1f} | {med[False, 0]:.1f} | "
              f"{med[True, 1]:.1f} | {med[False, 1]:.1f} |")


if __name__ == "__main__":
    uvloop.run(main())  # the server's loop
