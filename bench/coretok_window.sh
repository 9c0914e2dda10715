#!/usr/bin/env bash
# Issue #16's engine-core CPU per token, before / after branch coretok, in its quiet window (01:50-02:05 UTC, ~12 min).
#   before: main at 2420ef6, unpacked with `git archive main | tar -x -C /tmp/coretok-before`
#   after:  this tree, with the bare picows baseline in its first run; then a second interleaved pair, SSE and
#           polling at 1,000, and the fuzz canary (built-in model) if the window has time left
# Every server runs with this tree's load generator and CPU split (--server-path; launch runs `python -P` so the
# before tree is the one served even from this checkout's root), --engine process.
# Run from the repository root: PATH=/work/venv/bin:$PATH PYTHONPATH=$PWD bench/coretok_window.sh
set -euo pipefail
BEFORE=${BEFORE:-/tmp/coretok-before}
OUT=${OUT:-bench/results/coretok}
LEGS=${LEGS:-after before after2 before2 http fuzz}
source "$(dirname "$0")/transports_window_lib.sh"  # $S, run, want and the after/before/http legs
want fuzz && run seedance bench fuzz --seed 0 --hang-timeout 60 --engine process --output "$OUT/fuzz-after.json"
echo "== $(date -u +%T) done"
