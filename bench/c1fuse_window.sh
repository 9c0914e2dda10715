#!/usr/bin/env bash
# The c1fuse quiet window (docs/benchmarks.md, "Compiled decode step"): SmolLM2 --quantize fp16, the compiled
# decode step against the eager one in one engine, alternating step by step, at 1 / 8 / 32 streams; then
# Seedance fp16 served with and without SEEDANCE_COMPILE=1 and llama-server's Q8_0, one server at a time, at
# C = 1, 8, 32, 64; nothing new starts after $UNTIL (UTC).
# Run from the repository root: PYTHONPATH=$PWD bench/c1fuse_window.sh
OUT=${OUT:-bench/results/peers-c1fuse}
UNTIL=${UNTIL:-01:46}
PY=${PY:-python}
M=${MODELS:-/work/peers/models}
source "$(dirname "$0")/issue14_window_lib.sh"
run $PY scripts/c1_compile_ab.py "$M/smollm2-135m-instruct-f32" --quantize fp16 --streams 1,8,32 \
    2> "$OUT/compile-ab.log" | tee "$OUT/compile-ab.jsonl"
run $PY scripts/compare_peers.py --out "$OUT" --until "$UNTIL" \
    --only seedance-fp16-large2-compile,seedance-fp16-large2,llama-q8_0
run $PY scripts/peers_table.py "$OUT"
