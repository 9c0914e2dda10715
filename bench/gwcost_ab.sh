#!/usr/bin/env bash
# Interleaved A/B of the gateway's cost per token (issue #16, branch gwcost): before, after, before, after, ...
# one `seedance bench transports` WebSocket level per run, synthetic backend, --engine process.
#   before: BEFORE (a tree unpacked with `git archive <commit> | tar -x -C /tmp/gwcost-before`); after: this tree
# Run from the repository root: PYTHONPATH=$PWD bench/gwcost_ab.sh; then python bench/gwcost_ab_table.py "$OUT"
set -euo pipefail
BEFORE=${BEFORE:-/tmp/gwcost-before}
OUT=${OUT:-bench/results/gwcost/ab}
PAIRS=${PAIRS:-3}
CLIENTS=${CLIENTS:-1000}
TRANSPORT=${TRANSPORT:-websocket}
mkdir -p "$OUT"
S="seedance bench transports --backend synthetic --rate 50 --max-tokens 32 --ramp 10s --duration 15s --processes 2"
S="$S --memory-connections 0 --engine process --plots '' --transports $TRANSPORT --concurrency $CLIENTS"
for i in $(seq 1 "$PAIRS"); do
  for side in before after; do
    path=""; [[ $side == before ]] && path="--server-path $BEFORE"
    echo "== $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg): $side run $i"
    eval nice -n 19 $S $path --output "$OUT/$side-$TRANSPORT-$CLIENTS-run$i.json" > /dev/null
  done
done
echo "== $(date -u +%T) done"
