#!/usr/bin/env bash
# The c1int8 quiet window (docs/benchmarks.md, "int8 in the compiled decode step"): engine alone, SmolLM2's
# compiled decode step against the eager one in one engine (alternating step by step) at 1 / 8 streams, fp16
# (the float32 directory, --quantize fp16) and int8 (the Q8_0 GGUF under auto: fbgemm Int8Linear, one-row steps
# on int8_gemv's GEMV); then served, one server at a time, C = 1, 8, 32, 64: Seedance int8 compiled on one
# thread, fp16 and int8 compiled with large_step_threads = 2, llama-server's Q8_0; nothing new starts after $UNTIL (UTC). The inductor cache must be warm (a cold compile of
# a 1 GiB pool's graphs takes minutes): run it once before the window.
# Run from the repository root: PYTHONPATH=$PWD bench/c1int8_window.sh
OUT=${OUT:-bench/results/peers-c1int8}
UNTIL=${UNTIL:-05:21}
PY=${PY:-python}
M=${MODELS:-/work/peers/models}
source "$(dirname "$0")/issue14_window_lib.sh"
KV=$((1 << 30))  # the served runs' pool: their graphs, so one warm cache serves both
run $PY scripts/c1_compile_ab.py "$M/smollm2-135m-instruct-q8_0.gguf" --quantize auto --streams 1,8 --steps 16 \
    --kv-cache-bytes $KV 2> "$OUT/compile-ab-int8.log" | tee "$OUT/compile-ab-int8.jsonl"
run $PY scripts/c1_compile_ab.py "$M/smollm2-135m-instruct-f32" --quantize fp16 --streams 1,8 --steps 16 \
    --kv-cache-bytes $KV 2> "$OUT/compile-ab-fp16.log" | tee "$OUT/compile-ab-fp16.jsonl"
run $PY scripts/compare_peers.py --out "$OUT" --until "$UNTIL" \
    --only seedance-int8-compile,seedance-fp16-large2-compile,seedance-int8-large2-compile,llama-q8_0
run $PY scripts/peers_table.py "$OUT"
