#!/usr/bin/env bash
# Issue #16's gateway-cost legs, before / after branch chunkcost, as run in its quiet window (~10 min on 2 cores).
#   before:       main, unpacked with `git archive main | tar -x -C /tmp/chunkcost-before`
#   before-synth: the same plus only the synthetic backend's fix (no logprob unless asked), so the bench's
#                 workload change and the gateway's own changes can be told apart
#   after:        this tree, with the bare picows baseline in the same run; SSE and polling; py-spy profiles of
#                 the gateway before and after (scripts/profile_gateway.py); 10,000 clients once
# Every server side runs with this tree's load generator and CPU split (--server-path), --engine process.
# Run from the repository root: PYTHONPATH=$PWD bench/chunkcost_window.sh
set -euo pipefail
BEFORE=${BEFORE:-/tmp/chunkcost-before}
BEFORE_SYNTH=${BEFORE_SYNTH:-/tmp/chunkcost-before-synth}
OUT=${OUT:-bench/results/chunkcost}
LEGS=${LEGS:-after before http before-synth profile-before profile 10k}
mkdir -p "$OUT"
S="seedance bench transports --backend synthetic --rate 50 --max-tokens 32 --ramp 10s --duration 15s --processes 2"
S="$S --memory-connections 0 --engine process --plots ''"
run() { echo "== $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg): $*"; eval "$@"; }
want() { [[ " $LEGS " == *" $1 "* ]]; }
want after && run $S --transports websocket --concurrency 1000,2000 --baseline picows --output "$OUT/after-ws.json"
want before && run $S --transports websocket --concurrency 1000,2000 --server-path "$BEFORE" \
    --output "$OUT/before-ws.json"
want http && run $S --transports sse,polling --concurrency 1000 --output "$OUT/after-http.json"
want before-synth && run $S --transports websocket --concurrency 1000,2000 --server-path "$BEFORE_SYNTH" \
    --output "$OUT/before-synth-ws.json"
P="python scripts/profile_gateway.py --clients 1000 --ramp 10 --duration 15"
want profile-before && run $P --server-path "$BEFORE" --out "$OUT/profile-before" '>' "$OUT/profile-before.txt"
want profile && run $P --out "$OUT/profile-after" '>' "$OUT/profile-after.txt"
want 10k && run $S --transports websocket --concurrency 10000 --output "$OUT/after-ws-10k.json"
echo "== $(date -u +%T) done"
