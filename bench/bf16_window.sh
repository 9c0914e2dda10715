#!/usr/bin/env bash
# Branch bf16's quiet window (17:00-17:13 UTC; docs/benchmarks.md, "SmolLM2 on an AVX-512 + AVX512_BF16 + VNNI
# CPU"): SmolLM2 served at C = 1, 8, 32, 64 through `seedance serve`, one server at a time, at each precision's
# `auto` path on this CPU (Q4_1 GGUF: int4 with bfloat16 activations; the bf16 directory: bfloat16; Q8_0 GGUF:
# fbgemm int8), and llama-server bf16 where the lead's peer run left none; then the kernel table. Nothing new
# starts after $UNTIL (UTC). Run from the repository root: PYTHONPATH=$PWD PY=/work/venv/bin/python bench/bf16_window.sh
OUT=${OUT:-bench/results/bf16}
UNTIL=${UNTIL:-17:10}
PY=${PY:-python}
PEERS=${PEERS:-/work/peers}
LEAD=${LEAD:-/work/peers/results-s10}
source "$(dirname "$0")/issue14_window_lib.sh"
if [ -z "${RUNS:-}" ]; then  # what the peers folder allows, most wanted first
  RUNS=seedance-q4_1,seedance-bf16
  [ -f "$PEERS/models/smollm2-135m-instruct-q8_0.gguf" ] && RUNS="$RUNS,seedance-int8"
  [ -f "$LEAD/llama-bf16.json" ] || { [ -x "$PEERS/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-server" ] \
      && [ -f "$PEERS/models/smollm2-135m-instruct-bf16.gguf" ] && RUNS="$RUNS,llama-bf16"; }
  RUNS="$RUNS,seedance-bf16-large2,seedance-q4_1-large2"
fi
echo "runs: $RUNS"
run $PY scripts/compare_peers.py --peers "$PEERS" --out "$OUT" --until "$UNTIL" --levels "${LEVELS:-1,8,32,64}" \
    --only "$RUNS"
run $PY scripts/peers_table.py "$OUT" | tee "$OUT/table.md"
if [[ $(date -u +%H:%M) < "$UNTIL" ]]; then
  run $PY scripts/fbgemm_linear_bench.py --rows "${ROWS:-1,8,32,64}" --layers "${LAYERS:-30}" \
      --kernels f32,bf16,int8,int8-1f,fp16,wo4b \
      | tee "$OUT/kernels.txt"
fi
