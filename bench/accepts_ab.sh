#!/usr/bin/env bash
# Interleaved A/B on the loaded box (outside any quiet window): main's server (before) and this tree's (after),
# 2,000 WebSocket clients, PAIRS pairs; this tree's load generator on both sides.
#   PATH=/work/venv/bin:$PATH PYTHONPATH=$PWD bench/accepts_ab.sh ; python bench/accepts_ab_table.py
set -euo pipefail
BEFORE=${BEFORE:-/tmp/accepts-before}
OUT=${OUT:-bench/results/accepts}
PAIRS=${PAIRS:-3}
FIRST=${FIRST:-1}
LEVEL=${LEVEL:-2000}
mkdir -p "$OUT"
S="seedance bench transports --backend synthetic --rate 50 --max-tokens 32 --ramp 10s --duration 15s --processes 2"
S="$S --memory-connections 0 --engine process --plots '' --transports websocket --concurrency $LEVEL"
run() { echo "== $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg): $*"; eval nice -n 19 "$@"; }
for k in $(seq "$FIRST" "$((FIRST + PAIRS - 1))"); do
  run $S --server-path "$BEFORE" --output "$OUT/ab-before-$LEVEL-$k.json"
  run $S --output "$OUT/ab-after-$LEVEL-$k.json"
done
