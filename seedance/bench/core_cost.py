"""The engine core's CPU per token with no model and no gateway: the real CoreLoop, LLMEngine, scheduler, block
manager, output processing and Step frames over a real socket, the synthetic runner without its sleep.

N closed-loop streams, the transport benchmark's shape (its prompt, 32 tokens, `ignore_eos`, one client per
stream, the server's batch bounds for N clients): every request that finishes is replaced by a new Add decoded
from a frame as the gateway sends it, so admissions and finishes run at the bench's rate (one in 32 tokens).
Each step is timed by phase in thread CPU time: admit (decode + apply the Adds), schedule, runner, post (commit,
append, detokenize, stop checks, finishes), route + encode (the Step frame), send (into a socket a child `cat`
drains). The gateway's decode of the same frames is timed apart (`gateway_decode`: it is the gateway's CPU, not
the core's). Issue #16's engine share; `--profile` adds cProfile's top functions by own time.

    python -m seedance.bench.core_cost --streams 1000 --streams 2000 --steps 200 --rounds 3
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import socket
import statistics
import subprocess
import time

from seedance.bench.loadgen import PROMPT
from seedance.engine.config import EngineConfig
from seedance.engine.core_process import CoreLoop
from seedance.engine.core_protocol import Add, decode_commands, decode_to_gateway, frame
from seedance.engine.llm_engine import LLMEngine
from seedance.engine.sampling_params import SamplingParams

PHASES = ("admit", "schedule", "runner", "post", "encode", "send")


class _Timed:
    """Wraps one method of one object, adding its thread CPU time to a phase."""

    def __init__(self, fn, totals: dict[str, int], phase: str) -> None:
        self.fn, self.totals, self.phase = fn, totals, phase

    def __call__(self, *args, **kwargs):
        start = time.thread_time_ns()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.totals[self.phase] += time.thread_time_ns() - start


def build(streams: int, max_tokens: int = 32) -> tuple[CoreLoop, socket.socket, subprocess.Popen, list[int]]:
    """A CoreLoop over a synthetic engine with the transport bench's bounds, its gateway socket drained by `cat`."""
    config = EngineConfig(synthetic_rate=1e12, warmup=False, max_num_seqs=max(64, streams + 16),
                          max_num_batched_tokens=max(256, 2 * streams + 64), max_waiting=4 * streams + 1024)
    engine = LLMEngine.from_config(config)
    ours, theirs = socket.socketpair()
    drain = subprocess.Popen(["cat"], stdin=theirs.fileno(), stdout=subprocess.DEVNULL)
    theirs.close()
    prompt = engine.tokenizer.encode(PROMPT)
    gc.collect()
    gc.freeze()  # as the core does once loaded (core_process._load): start-up's objects are never collected
    return CoreLoop(engine, ours), ours, drain, prompt


def run(streams: int, steps: int, max_tokens: int = 32, profile: bool = False, sort: str = "tottime") -> dict:
    """Warm up until every stream is decoding and has finished once, then time `steps` steps."""
    loop, sock, drain, prompt = build(streams, max_tokens)
    engine = loop.engine
    gateway = next(iter(loop.gateways.values()))
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    totals = dict.fromkeys(PHASES, 0)
    engine.scheduler.schedule = _Timed(engine.scheduler.schedule, totals, "schedule")
    engine.runner.execute = _Timed(engine.runner.execute, totals, "runner")
    frames: list[bytes] = []
    real_frame = frame

    frame_ns = [0]

    def encode(message):  # the Step frame, timed and kept for the gateway-side decode
        start = time.thread_time_ns()
        data = real_frame(message)
        spent = time.thread_time_ns() - start
        totals["encode"] += spent
        frame_ns[0] += spent
        frames.append(data)
        return data

    import seedance.engine.core_process as core_process

    core_process.frame = encode
    serial = 0

    def adds(n: int) -> bytes:
        nonlocal serial
        batch = [Add(f"r{serial + i}", prompt, params, arrival=time.monotonic(), client=f"c{serial + i}")
                 for i in range(n)]
        serial += n
        return real_frame(batch)

    def admit(data: bytes) -> None:
        for command in decode_commands(data[4:]):
            loop.apply(gateway, command)

    def one_step(timed: bool) -> int:
        """Replace finished requests (their Adds as the gateway frames them), step, route, send."""
        missing = streams - len(engine.requests)
        start = time.thread_time_ns()
        if missing:
            admit(adds(missing))
        admit_ns = time.thread_time_ns() - start
        step_start = time.thread_time_ns()
        events = engine.step()
        step_ns = time.thread_time_ns() - step_start
        route_start = time.thread_time_ns()
        loop.route(events)
        route_ns = time.thread_time_ns() - route_start
        send_start = time.thread_time_ns()
        loop.send(time.perf_counter(), 0.0)
        send_ns = time.thread_time_ns() - send_start
        if timed:
            totals["admit"] += admit_ns
            totals["post"] += step_ns  # less schedule and runner, below
            totals["encode"] += route_ns
            totals["send"] += send_ns  # less the frame's encoding, below
        return sum(e.token_id >= 0 for e in events)

    collections = {"ns": 0, "full": 0, "started": 0}

    def on_gc(phase: str, info: dict) -> None:  # the collector's own time, wherever it struck
        if phase == "start":
            collections["started"] = time.thread_time_ns()
        else:
            collections["ns"] += time.thread_time_ns() - collections["started"]
            collections["full"] += info["generation"] == 2

    try:
        for _ in range(2 * max_tokens + 4):  # every stream admitted, decoding, and replaced once
            one_step(False)
        for key in totals:
            totals[key] = 0
        frame_ns[0] = 0
        frames.clear()
        profiler = cProfile.Profile() if profile else None
        tokens = 0
        cpu_start = time.thread_time_ns()
        if profiler:
            profiler.enable()
        gc.callbacks.append(on_gc)
        for _ in range(steps):
            tokens += one_step(True)
        gc.callbacks.remove(on_gc)
        if profiler:
            profiler.disable()
        cpu_ns = time.thread_time_ns() - cpu_start
    finally:
        if on_gc in gc.callbacks:
            gc.callbacks.remove(on_gc)
        gc.unfreeze()
        core_process.frame = real_frame
        sock.close()
        drain.wait(timeout=10)
    # post was timed as the whole step; schedule and runner are inside it
    totals["post"] -= totals["schedule"] + totals["runner"]
    totals["send"] -= frame_ns[0]
    frame_bytes = sum(map(len, frames))
    start = time.thread_time_ns()
    for data in frames:
        decode_to_gateway(data[4:])
    decode_ns = time.thread_time_ns() - start
    result = {
        "streams": streams, "steps": steps, "tokens": tokens,
        "core_us_per_token": cpu_ns / 1e3 / tokens,
        "core_us_per_step": cpu_ns / 1e3 / steps,
        "phase_us_per_token": {k: v / 1e3 / tokens for k, v in totals.items()},
        "gc_us_per_token": collections["ns"] / 1e3 / tokens,  # inside the phases, wherever a collection struck
        "full_collections": collections["full"],
        "frame_bytes_per_token": frame_bytes / tokens,
        "gateway_decode_us_per_token": decode_ns / 1e3 / tokens,
    }
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats(sort).print_stats(25)
        result["profile"] = text.getvalue()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, action="append", help="running streams (repeatable; default 1000, 2000)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3, help="runs per stream count; the medians are printed")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--profile", action="store_true", help="cProfile the last round (slower: shares only)")
    ap.add_argument("--sort", default="tottime", help="the profile's order (pstats: tottime, cumulative)")
    ap.add_argument("--json", help="write every round's figures here")
    args = ap.parse_args()
    rows = []
    for streams in args.streams or [1000, 2000]:
        rounds = [run(streams, args.steps, args.max_tokens, profile=args.profile and r == args.rounds - 1,
                      sort=args.sort)
                  for r in range(args.rounds)]
        rows.append({"streams": streams, "rounds": rounds})
        med = {k: statistics.median(r["phase_us_per_token"][k] for r in rounds) for k in PHASES}
        print(f"N={streams}: core {statistics.median(r['core_us_per_token'] for r in rounds):.2f} µs/token, "
              f"{statistics.median(r['core_us_per_step'] for r in rounds) / 1e3:.2f} ms/step; "
              + ", ".join(f"{k} {v:.2f}" for k, v in med.items())
              + f" (of which gc {statistics.median(r['gc_us_per_token'] for r in rounds):.2f}, "
              f"{statistics.median(r['full_collections'] for r in rounds)} full)"
              + f"; frame {statistics.median(r['frame_bytes_per_token'] for r in rounds):.1f} B/token; "
              f"gateway decode {statistics.median(r['gateway_decode_us_per_token'] for r in rounds):.2f} µs/token")
        if args.profile:
            print(rounds[-1]["profile"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
