#!/usr/bin/env bash
# Issue #16's before/after matrix, as run for docs/benchmarks.md ("Gateway cost per token"). ~18 min on 2 cores.
#   before: main at 3a1ea7a, unpacked with `git archive 3a1ea7a | tar -x -C /tmp/before`, its server run
#           with this tree's load generator (--server-path), so both sides are measured the same way
#   after:  this tree: --engine process (with the bare picows baseline and the memory probe), --engine
#           thread, --workers 2; SSE and polling; the built-in model against the engine alone
#   aiohttp: --engine process with /v1/stream on aiohttp (--ws-stack aiohttp; the other legs run the default,
#           picows), the stack decision's A/B
# LEGS picks legs (default: all): before process thread workers2 aiohttp http model
# Run from the repository root with this tree importable: PYTHONPATH=$PWD bench/issue16_matrix.sh
set -euo pipefail
BEFORE=${BEFORE:-/tmp/before}
OUT=${OUT:-bench/results}
LEVELS=${LEVELS:-1000,2000,5000,10000}
HTTP_LEVELS=${HTTP_LEVELS:-1000,2000}
DUR=${DUR:-15s}
RAMP=${RAMP:-10s}
MEM=${MEM:-2000}
LEGS=${LEGS:-before process thread workers2 aiohttp http model}
S="seedance bench transports --backend synthetic --rate 50 --max-tokens 32 --ramp $RAMP --duration $DUR --processes 2"
run() { echo "== $(date -u +%T) $*"; "$@"; }
want() { [[ " $LEGS " == *" $1 "* ]]; }
want before && run $S --concurrency "$LEVELS" --transports websocket --memory-connections 0 --server-path "$BEFORE" \
    --output "$OUT/issue16-before-ws.json" --plots ''
want process && run $S --concurrency "$LEVELS" --transports websocket --memory-connections "$MEM" --engine process \
    --baseline picows --output "$OUT/issue16-after-ws-process.json" --plots ''
want thread && run $S --concurrency "$LEVELS" --transports websocket --memory-connections 0 --engine thread \
    --output "$OUT/issue16-after-ws-thread.json" --plots ''
want workers2 && run $S --concurrency "$LEVELS" --transports websocket --memory-connections 0 --workers 2 \
    --source-addresses 64 --output "$OUT/issue16-after-ws-workers2.json" --plots ''
want aiohttp && run $S --concurrency "$LEVELS" --transports websocket --memory-connections "$MEM" --engine process \
    --ws-stack aiohttp --output "$OUT/issue16-after-ws-aiohttp.json" --plots ''
want http && run $S --concurrency "$HTTP_LEVELS" --transports sse,polling --memory-connections 0 --engine process \
    --output "$OUT/issue16-after-http.json" --plots ''
M="seedance bench transports --backend model --max-tokens 32 --ramp 2s --duration $DUR --processes 1 --concurrency 32"
want model && run $M --transports websocket --memory-connections 0 --engine process --engine-alone \
    --output "$OUT/issue16-model-process.json" --plots ''
want model && run $M --transports websocket --memory-connections 0 --engine thread \
    --output "$OUT/issue16-model-thread.json" --plots ''
echo "== $(date -u +%T) done"
