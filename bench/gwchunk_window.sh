#!/usr/bin/env bash
# Issue #16's per-chunk path, before / after branch gwchunk, in its quiet window (04:40-04:55 UTC, ~13 min).
#   before: main at 1ddd4d6, unpacked with `git -C /work/main archive 1ddd4d6 seedance | tar -x -C /tmp/gwchunk-before`
#   after:  this tree (max_steps_ahead 8, the default), with the bare picows baseline in its first run; SSE and
#           polling at 1,000; then this tree paced to the gateway (max_steps_ahead 2: one token per chunk), the
#           memory leg (idle / streaming KiB per connection, interleaved pairs); with the time left, a second
#           interleaved pair (LEGS="after2 before2")
# Every server runs with this tree's load generator and CPU split (--server-path; launch runs `python -P` so the
# before tree is the one served even from this checkout's root), --engine process.
# Run from the repository root: PATH=/work/venv/bin:$PATH PYTHONPATH=$PWD bench/gwchunk_window.sh
set -euo pipefail
BEFORE=${BEFORE:-/tmp/gwchunk-before}
OUT=${OUT:-bench/results/gwchunk}
LEGS=${LEGS:-after before http k2 memory}  # then, if the window has time: LEGS="after2 before2"
source "$(dirname "$0")/transports_window_lib.sh"  # $S, $W, run, want and the after/before/after2/before2/http legs
want k2 && SEEDANCE_MAX_STEPS_AHEAD=2 run $S $W --output "$OUT/after-k2-ws.json"
want memory && run python bench/gwchunk_memory.py --before "$BEFORE" --after . --rounds 2 --output "$OUT/memory.json"
echo "== $(date -u +%T) done"
