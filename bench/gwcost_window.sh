#!/usr/bin/env bash
# Issue #16's gateway cost per token, before / after branch gwcost, as planned for its quiet window (~11 min on 2 cores; only "after before" fitted in the one run).
#   before: main at d3998b3, unpacked with `git archive d3998b3 | tar -x -C /tmp/gwcost-before`
#   after:  this tree, with the bare picows baseline in its first run; then a second interleaved pair, SSE and
#           polling, a py-spy profile of the gateway (scripts/profile_gateway.py), 10,000 clients once
# Every server runs with this tree's load generator and CPU split (--server-path), --engine process.
# Run from the repository root: PATH=/work/venv/bin:$PATH PYTHONPATH=$PWD bench/gwcost_window.sh
set -euo pipefail
BEFORE=${BEFORE:-/tmp/gwcost-before}
OUT=${OUT:-bench/results/gwcost}
LEGS=${LEGS:-after before after2 before2 http profile 10k}
source "$(dirname "$0")/transports_window_lib.sh"  # $S, run, want and the after/before/http legs
want profile && run python scripts/profile_gateway.py --clients 1000 --ramp 10 --duration 15 \
    --out "$OUT/profile-after" '>' "$OUT/profile-after.txt"
want 10k && run $S --transports websocket --concurrency 10000 --output "$OUT/after-ws-10k.json"
echo "== $(date -u +%T) done"
