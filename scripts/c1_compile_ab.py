"""The compiled decode step (EngineConfig.compile) against the eager one, in one engine, alternating step by step
(so a loaded box slows both alike): per-step wall and thread-CPU medians at each stream count, the compile time,
and whether the greedy tokens of the two paths agree. docs/benchmarks.md ("Compiled decode step") has a run:

    python scripts/c1_compile_ab.py /path/smollm2-135m-instruct-f32 --quantize fp16 --streams 1,8,32
    python scripts/c1_compile_ab.py /path/smollm2-135m-instruct-q8_0.gguf --quantize auto   # int8 (fbgemm)
    python scripts/c1_compile_ab.py /path/smollm2-135m-instruct-bf16 --quantize none --dtype bfloat16 --streams 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from seedance.engine.config import EngineConfig
from seedance.engine.llm_engine import LLMEngine
from seedance.engine.sampling_params import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--quantize", default="fp16")
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16 (a GGUF under --quantize none: dequantized)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--steps", type=int, default=40, help="decode steps timed per path and stream count")
    ap.add_argument("--kv-cache-bytes", type=int, default=256 << 20,
                    help="the pool (its shape is a constant of the graph: the served runs' 1 GiB reuses their cache)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    eng = LLMEngine.from_config(EngineConfig(model=args.model, threads=args.threads, quantize=args.quantize,
                                             dtype=args.dtype, kv_cache_bytes=args.kv_cache_bytes,
                                             compile=True))
    load_s = time.perf_counter() - t0
    runner = eng.runner
    compiled = runner.compiled
    print(json.dumps({"load_and_compile_s": round(load_s, 1), "compiled": compiled is not None}), flush=True)
    if compiled is None:
        raise SystemExit("the decode step did not compile (see the log)")
    for streams in (int(s) for s in args.streams.split(",")):
        for i in range(streams):
            eng.add_request(f"{streams}-{i}", list(range(100 + 7 * i, 164 + 7 * i)),
                            SamplingParams(max_tokens=2 * args.steps + 16, temperature=0, ignore_eos=True))
        for _ in range(max(4, -(-streams * 64 // 256) + 2)):  # the prefills (eager either way; 256-token steps)
            eng.step()
        times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for k in range(2 * args.steps):
            on = k % 2 == 0
            runner.compiled = compiled if on else None
            t, cpu = time.perf_counter(), time.thread_time()
            eng.step()
            times[on].append((time.perf_counter() - t, time.thread_time() - cpu))
        runner.compiled = compiled
        row = {"streams": streams}
        for on, name in ((False, "eager"), (True, "compiled")):
            row[f"{name}_wall_ms"] = round(1000 * statistics.median(w for w, _ in times[on]), 2)
            row[f"{name}_cpu_ms"] = round(1000 * statistics.median(c for _, c in times[on]), 2)
        row["cpu_speedup"] = round(row["eager_cpu_ms"] / row["compiled_cpu_ms"], 3)
        row["wall_speedup"] = round(row["eager_wall_ms"] / row["compiled_wall_ms"], 3)
        print(json.dumps(row), flush=True)
        for request_id in list(eng.requests):
            eng.abort(request_id)
        while eng.has_work():
            eng.step()


if __name__ == "__main__":
    main()
