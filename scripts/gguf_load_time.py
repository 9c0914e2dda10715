"""Seconds to load a GGUF file (`load_model`, as `seedance serve` does before its first token), in a fresh process per
run, for one or more checkouts of `seedance/`, alternating (a loaded box swings by 2x between minutes):

    git archive <base-commit> seedance | tar -x -C /tmp/base
    python scripts/gguf_load_time.py /path/model-q8_0.gguf --variant before=/tmp/base --variant after=. --runs 3

Prints each run's phases (reading the file and building the config; the weights; the tokenizer) and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(1)  # as the engine runs its load (model_runner.set_engine_threads)
from seedance.models.loader import load_model
t1 = time.perf_counter()
m = load_model(sys.argv[1], quantize=sys.argv[2])
t2 = time.perf_counter()
ns = m.timings
print(json.dumps({"imports_s": t1 - t0, "load_s": t2 - t1,
                  "weights_s": (ns["weights_loaded"] - ns["config_loaded"]) / 1e9,
                  "tokenizer_s": (ns["tokenizer_loaded"] - ns["weights_loaded"]) / 1e9}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--variant", action="append", default=[], help="NAME=PATH (a checkout holding seedance/)")
    ap.add_argument("--quantize", default="auto")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant) or {"this": "."}
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for run in range(args.runs):
        for name, path in variants.items():
            env = {**os.environ, "PYTHONPATH": os.path.abspath(path)}
            out = subprocess.run([sys.executable, "-c", CHILD, args.model, args.quantize], capture_output=True,
                                 text=True, check=True, cwd=path, env=env)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            results[name].append(got)
            print(f"run {run} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in got.items()), flush=True)
    for name, runs in results.items():
        print(f"{name} medians: " + ", ".join(f"{k} {statistics.median(r[k] for r in runs):.2f} s" for k in runs[0]))


if __name__ == "__main__":
    main()
