# Sourced by issue 16's quiet-window scripts (bench/gwcost_window.sh, bench/coretok_window.sh), with BEFORE, OUT
# and LEGS set: makes $OUT, defines $S (the synthetic `seedance bench transports` workload, --engine process),
# `run CMD...` (prints the time and load, runs CMD niced), `want LEG`, and runs the shared legs: after (this tree,
# with the bare picows baseline) / before (the $BEFORE tree) at 1,000 and 2,000 WebSocket clients, a second
# interleaved pair (after2, before2), and SSE + polling at 1,000 (http).
mkdir -p "$OUT"
S="seedance bench transports --backend synthetic --rate 50 --max-tokens 32 --ramp 10s --duration 15s --processes 2"
S="$S --memory-connections 0 --engine process --plots ''"
run() { echo "== $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg): $*"; eval nice -n 19 "$@"; }
want() { [[ " $LEGS " == *" $1 "* ]]; }
W="--transports websocket --concurrency 1000,2000"
want after && run $S $W --baseline picows --output "$OUT/after-ws.json"
want before && run $S $W --server-path "$BEFORE" --output "$OUT/before-ws.json"
want after2 && run $S $W --output "$OUT/after-ws-run2.json"
want before2 && run $S $W --server-path "$BEFORE" --output "$OUT/before-ws-run2.json"
want http && run $S --transports sse,polling --concurrency 1000 --output "$OUT/after-http.json"
: # a leg not wanted must not fail the sourcing script (set -e)
