#!/usr/bin/env bash
# Issue #16's accepts while streaming, before / after branch accepts, for its quiet window (02:05-02:20 UTC, ~12 min).
#   before: main at 2420ef6, unpacked with `git archive main | tar -x -C /tmp/accepts-before`
#   after:  this tree (batch accepts, full collections deferred in a burst), with the bare picows baseline;
#           then main's server again, main's whole tree (its load generator too) at 2,000, --workers 2 at 10,000
# Every server runs with this tree's load generator (no GC during a level) and CPU split (--server-path).
# Run from the repository root: PATH=/work/venv/bin:$PATH PYTHONPATH=$PWD bench/accepts_window.sh
set -euo pipefail
BEFORE=${BEFORE:-/tmp/accepts-before}
OUT=${OUT:-bench/results/accepts}
LEGS=${LEGS:-after before oldtree workers2}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
S="seedance bench transports --backend synthetic --rate 50 --max-tokens 32 --ramp 10s --duration 15s --processes 2"
S="$S --memory-connections 0 --engine process --plots '' --transports websocket"
run() { echo "== $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg): $*"; eval nice -n 19 "$@"; }
want() { [[ " $LEGS " == *" $1 "* ]]; }
want after && run $S --concurrency 2000,10000 --baseline picows --output "$OUT/after-ws.json"
want before && run $S --concurrency 2000,10000 --server-path "$BEFORE" --output "$OUT/before-ws.json"
# main's tree entirely (its load generator too): what the load generator's own collections cost
want oldtree && (cd "$BEFORE" && export PYTHONPATH="$BEFORE" && run $S --concurrency 2000 --output "$OUT/oldtree-ws.json")
want workers2 && run $S --concurrency 10000 --workers 2 --source-addresses 64 --output "$OUT/after-ws-workers2.json"
want memory && run seedance bench transports --backend synthetic --rate 50 --max-tokens 32 --ramp 2s --duration 5s \
    --processes 2 --engine process --plots "''" --transports websocket --concurrency 100 --memory-connections 2000 \
    --output "$OUT/after-memory.json"
echo "== $(date -u +%T) done"
