#!/usr/bin/env bash
# The c1speed quiet window (docs/benchmarks.md, "C = 1 decode"): the engine alone at one stream, before
# ($BASE, `git archive <commit> seedance scripts | tar -x -C $BASE`) and after, alternating, fp16 on 1 and 2
# threads and the Q8_0 GGUF as int8; then Seedance fp16 and int8 served and llama-server's Q8_0, one server at a
# time, at C = 1, 8, 32, 64; nothing new starts after $UNTIL (UTC).
# Run from the repository root: PYTHONPATH=$PWD BASE=/tmp/c1base bench/c1speed_window.sh
OUT=${OUT:-bench/results/peers-c1speed}
UNTIL=${UNTIL:-22:42}
PY=${PY:-python}
BASE=${BASE:-/tmp/c1base}
M=${MODELS:-/work/peers/models}
source "$(dirname "$0")/issue14_window_lib.sh"
run $PY scripts/engine_ab.py --variant before="$BASE:1+fp16" --variant after=".:1+fp16" \
    --variant before2="$BASE:2+fp16" --variant after2=".:2+fp16" \
    --case "$M/smollm2-135m-instruct-f32:1:100" --rounds 2 | tee "$OUT/engine-c1-fp16.txt"
run $PY scripts/engine_ab.py --variant before="$BASE:2" --variant after=".:2" \
    --case "$M/smollm2-135m-instruct-q8_0.gguf:1:100" --rounds 2 | tee "$OUT/engine-c1-int8.txt"
run $PY scripts/compare_peers.py --out "$OUT" --until "$UNTIL" \
    --only seedance-fp16-large2,seedance-int8-large2,llama-q8_0
run $PY scripts/peers_table.py "$OUT"
