#!/usr/bin/env bash
# The single quiet window (docs/benchmarks.md, "Single stream on AVX-512"), issue #14's single stream on the
# AVX-512 / AVX512_BF16 box, most wanted first: (1) the built-in model in-process, request by request in one
# process: the default (bf16 here), float32, compiled with and without float_gemv's one-row GEMV; (2) served,
# C = 1, 3 x 128 tokens, one server at a time: default, --compile, llama-server on the f32 and bf16 GGUFs of the
# same weights, float32 eager / compiled; (3) cold start, main's tree against this branch's, rounds alternating;
# (4) SmolLM2 bf16 engine alone, compiled (GEMV) against eager at one stream; (5) SmolLM2 served at C = 1: bf16
# compiled and eager, the Q4_1 GGUF's default; (6) 2 torch threads in-process, the cold start's phases, the
# projections' one-row pass alone (float and int8 GEMVs); (7) the tiny servers again in the other order. Nothing
# new starts after $UNTIL (UTC). Warm inductor's cache first (outside others' windows).
# Run from the repository root: PYTHONPATH=$PWD PY=/work/venv/bin/python bench/single_window.sh
OUT=${OUT:-bench/results/single}
UNTIL=${UNTIL:-17:26}
PY=${PY:-python}
M=${MODELS:-/work/peers/models}
BEFORE=${BEFORE:-/tmp/single-before}  # main's tree: git archive main | tar -x -C /tmp/single-before
ROUNDS=${ROUNDS:-3}
SMOL_GGUF=${SMOL_GGUF:-$HOME/.cache/seedance/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
SMALL=${SMALL:-}  # set: a dry run (fewer rounds, tokens and servers) to test this script on the loaded box
export PEERS_TINY_GGUFS=${PEERS_TINY_GGUFS:-/tmp/single/models}
source "$(dirname "$0")/issue14_window_lib.sh"
late() { [[ ! "$(date -u +%H:%M)" < "$UNTIL" ]] && echo "== past $UNTIL: skipped: $*"; }
TOKENS=128
[[ -n "$SMALL" ]] && TOKENS=16 ROUNDS=1
ENGINES=default,f32,bf16-compile-nogemv,bf16-compile,f32-compile-nogemv,f32-compile
late tiny_step_ab || run $PY scripts/tiny_step_ab.py --engines "$ENGINES" --rounds "$ROUNDS" --max-tokens $TOKENS \
    2> "$OUT/step-ab.log" | tee "$OUT/step-ab.jsonl"
FIRST=tiny-seedance,tiny-seedance-compile,tiny-llama,tiny-llama-bf16,tiny-seedance-f32,tiny-seedance-f32-compile
SECOND=tiny-llama-bf16,tiny-seedance-f32-compile,tiny-seedance-compile,tiny-llama,tiny-seedance
[[ -n "$SMALL" ]] && FIRST=tiny-seedance SECOND=tiny-seedance
run $PY scripts/compare_peers.py --out "$OUT/1" --until "$UNTIL" --only "$FIRST"
late cold_start_ab || run $PY scripts/cold_start_ab.py --rounds "$ROUNDS" main=process@"$BEFORE" branch=process \
    2>&1 | tee "$OUT/cold-start-ab.txt"
# SmolLM2's shipped Q4_1 file dequantized to bf16: the weights of the bf16 directory (docs: "The peers")
late c1_compile_ab || run $PY scripts/c1_compile_ab.py "$SMOL_GGUF" --quantize none --dtype bfloat16 \
    --streams 1 --steps $((TOKENS / 8)) --kv-cache-bytes $((1 << 30)) 2> "$OUT/compile-ab-bf16.log" \
    | tee "$OUT/compile-ab-bf16.jsonl"
SMOL=seedance-bf16-compile,seedance-bf16,seedance-q4_1
[[ -n "$SMALL" ]] && SMOL=seedance-bf16
run $PY scripts/compare_peers.py --out "$OUT/smol" --until "$UNTIL" --only "$SMOL" --levels 1
# 2 torch threads in a process of their own (the thread count is the process's: it would leak into the above)
late tiny_step_ab-t2 || run $PY scripts/tiny_step_ab.py --engines bf16-t2,bf16-compile-t2 --rounds "$ROUNDS" \
    --max-tokens $TOKENS 2> "$OUT/step-ab-t2.log" | tee "$OUT/step-ab-t2.jsonl"
late cold-start || run $PY -m seedance.cli bench cold-start --runs "$ROUNDS" --engine process \
    --output "$OUT/cold-start.json" --plot "$OUT/cold-start.png" > "$OUT/cold-start.txt" 2>&1
for kind in bf16-eager bf16-red f32-eager f32-red; do  # SmolLM2's 120 projections at one row, one pass
  late "gemv $kind" || run $PY scripts/float_gemv_bench.py "$kind" | tee -a "$OUT/gemv.txt"
done
late "gemv bf16-red 2 threads" || run $PY scripts/float_gemv_bench.py bf16-red --threads 2 | tee -a "$OUT/gemv.txt"
late int8_gemv || TORCHINDUCTOR_CPP_ENABLE_FLOATING_POINT_CONTRACT_FLAG=fast run $PY scripts/int8_gemv_bench.py 1 int8 \
    | tee -a "$OUT/gemv.txt"  # the int8 words' GEMV (written for AVX2's loads) on AVX-512
run $PY scripts/compare_peers.py --out "$OUT/2" --until "$UNTIL" --only "$SECOND"
for d in 1 2 smol; do [[ -d "$OUT/$d" ]] && run $PY scripts/peers_table.py "$OUT/$d"; done
