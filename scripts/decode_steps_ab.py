"""Engine alone: decode steps of N greedy streams (distinct 64-token prompts) per stream count, ms a step and tok/s,
for a before/after between source trees (run it once per tree with PYTHONPATH, interleaved):

    PYTHONPATH=/tmp/before python scripts/decode_steps_ab.py MODEL before 2 1,8,16,32,64
    PYTHONPATH=$PWD python scripts/decode_steps_ab.py MODEL after 2 1,8,16,32,64     # ONEDNN=on|off|auto

Arguments: the model, a label, torch threads (every step, large ones too), stream counts. Each count's streams
are added to the same engine after the last count's have finished; 60 steps are timed at 1-8 streams, 30 above.
"""

from __future__ import annotations

import os
import random
import sys
import time

from seedance.engine.config import EngineConfig
from seedance.engine.llm_engine import LLMEngine
from seedance.engine.sampling_params import SamplingParams


def main() -> None:
    model, label, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    counts = [int(s) for s in sys.argv[4].split(",")]
    engine = LLMEngine.from_config(EngineConfig(model=model, dtype="bfloat16", kv_cache_bytes=512 << 20,
                                                threads=threads, max_num_seqs=64, large_step_threads=threads,
                                                onednn_linear=os.environ.get("ONEDNN", "auto")))
    rng = random.Random(0)
    for streams in counts:
        steps = 60 if streams <= 8 else 30
        params = SamplingParams(max_tokens=steps + 20, temperature=0, ignore_eos=True)
        for i in range(streams):
            engine.add_request(f"{streams}-{i}", [rng.randrange(10, 40000) for _ in range(64)], params)
        for _ in range(streams * 64 // 256 + 8):  # the prefills, then a few decode steps
            engine.step()
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        step = (time.perf_counter() - start) / steps
        print(f"{label} threads {threads} {streams} streams: {step * 1e3:.2f} ms/step {streams / step:.1f} tok/s",
              flush=True)
        while engine.has_work():
            engine.step()


if __name__ == "__main__":
    main()
