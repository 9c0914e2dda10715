#!/usr/bin/env bash
# The tinyserve quiet window (docs/benchmarks.md, "Built-in tiny model, single stream"): the built-in model
# in-process (float32 / fp16 x eager / compiled, request by request in one process), then through the server
# (the default process engine: eager, --compile, --quantize fp16, both; the thread engine) and llama-server on
# the f32 and f16 GGUFs of the same weights, one server at a time, 3 x 128 tokens at C = 1; then the
# served runs again, in the other order, for a second pair. Nothing new starts after $UNTIL (UTC).
# Warm inductor's cache first (the compiled servers then start in seconds), outside others' windows.
# Run from the repository root: PYTHONPATH=$PWD bench/tinyserve_window.sh
OUT=${OUT:-bench/results/tinyserve}
UNTIL=${UNTIL:-05:08}
PY=${PY:-python}
source "$(dirname "$0")/issue14_window_lib.sh"
run $PY scripts/tiny_step_ab.py --rounds 5 2> "$OUT/step-ab.log" | tee "$OUT/step-ab.jsonl"
FIRST=tiny-seedance,tiny-seedance-compile,tiny-llama,tiny-seedance-fp16,tiny-seedance-fp16-compile,tiny-llama-f16
SECOND=tiny-llama,tiny-seedance-fp16-compile,tiny-seedance-compile,tiny-seedance,tiny-seedance-thread
run $PY scripts/compare_peers.py --out "$OUT/1" --until "$UNTIL" --only "$FIRST"
run $PY scripts/compare_peers.py --out "$OUT/2" --until "$UNTIL" --only "$SECOND"
if [[ "$(date -u +%H:%M)" < "$UNTIL" ]]; then  # the default server's cold start, for the record
  run $PY -m seedance.cli bench cold-start --runs 3 --engine process --output "$OUT/cold-start.json" --plot "$OUT/cold-start.png"
fi
run $PY scripts/peers_table.py "$OUT/1"
run $PY scripts/peers_table.py "$OUT/2"
