#!/usr/bin/env bash
# Issue #14's quiet-window run (docs/benchmarks.md, "Serving side by side"): cold start, the built-in model's single
# stream (in-process engine, through the server in both engine modes, llama-server), then SmolLM2 through
# Seedance and llama-server, one server at a time, at C = 1, 8, 32, 64. ~15 min on 2 cores; nothing new starts
# after $UNTIL (UTC). Run from the repository root: PYTHONPATH=$PWD BASE=/tmp/before bench/issue14_window.sh
OUT=${OUT:-bench/results/peers-window}
UNTIL=${UNTIL:-16:41}
PY=${PY:-python}
BASE=${BASE:-/tmp/before}
ROOT=$(pwd)
source "$(dirname "$0")/issue14_window_lib.sh"
# before (main, unpacked with `git archive <commit> | tar -x -C $BASE`) and after, alternating
for i in 1 2; do
  # from inside $BASE: `python -m` puts the working directory ahead of PYTHONPATH
  (cd "$BASE" && run env PYTHONPATH="$BASE" $PY -m seedance.cli bench cold-start --runs 3 \
      --output "$ROOT/$OUT/cold-start-before-$i.json" --plot "$ROOT/$OUT/cold-start-before-$i.png")
  run $PY -m seedance.cli bench cold-start --runs 3 --output "$OUT/cold-start-after-$i.json" \
      --plot "$OUT/cold-start-after-$i.png"
done
run $PY scripts/engine_ab.py --variant before="$BASE" --variant t1=. --variant t2=.:2 --case tiny:1:300 --rounds 2 \
    | tee "$OUT/engine-tiny.txt"
run $PY scripts/compare_peers.py --out "$OUT" --until "$UNTIL" \
    --only tiny-seedance,tiny-seedance-process,tiny-seedance-2threads,tiny-llama,seedance-f32,llama-f32,seedance-f32-large2,llama-q4_1,llama-bf16,llama-q8_0
run $PY scripts/peers_table.py "$OUT"
