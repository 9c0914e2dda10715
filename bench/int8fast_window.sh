#!/usr/bin/env bash
# The int8fast quiet window (docs/benchmarks.md, "fbgemm's int8 and fp16 GEMMs"): Seedance fp16, int8 (the Q8_0
# GGUF) and float32 served, then llama-server's Q8_0 and f32, one server at a time, at C = 1, 8, 32, 64; nothing
# new starts after $UNTIL (UTC). Run from the repository root: PYTHONPATH=$PWD bench/int8fast_window.sh
set -uo pipefail
OUT=${OUT:-bench/results/peers-int8fast}
UNTIL=${UNTIL:-20:01}
PY=${PY:-python}
mkdir -p "$OUT"
(while sleep 10; do echo "$(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg) $(ps -eo pcpu,args --sort=-pcpu --no-headers \
    | head -3 | cut -c1-90 | tr '\n' '|')"; done > "$OUT/load.log") &
LOADLOG=$!
trap 'kill $LOADLOG' EXIT
$PY scripts/compare_peers.py --out "$OUT" --until "$UNTIL" \
    --only seedance-fp16-large2,seedance-int8-large2,seedance-f32-large2,llama-q8_0,seedance-fp16,llama-f32,seedance-q4_1
$PY scripts/peers_table.py "$OUT"
