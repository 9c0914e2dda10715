#!/bin/bash
# Server CPU per chunk and per token of /v1/stream under `seedance bench transports`' WebSocket load.
#
#   scripts/ws_cpu_per_chunk.sh CODE_DIR LABEL [CLIENTS]
#
# Starts a synthetic `seedance serve` from CODE_DIR (a checkout: compare two commits side by side) with the
# settings the transports bench uses for CLIENTS (and no tokenizer-queue refusals), runs the bench's
# WebSocket load against it (--url, 5 s ramp, 10 s measured), and divides the server's CPU seconds over the
# measured window (/proc/PID/stat) by the chunks and tokens delivered in it. Loopback only.
set -euo pipefail
CODE=$(cd "$1" && pwd); LABEL=$2; N=${3:-1000}; OUT=${OUT:-/tmp/ws-cpu}; PORT=$((18800 + RANDOM % 100))
mkdir -p "$OUT"
big=$((4 * N > 1024 ? 4 * N : 1024))
(cd "$CODE" && exec env PYTHONPATH="$CODE" SEEDANCE_PORT=$PORT SEEDANCE_HOST=127.0.0.1 SEEDANCE_MAX_CONNECTIONS=$big \
  SEEDANCE_MAX_REQUESTS_PER_CONNECTION=64 SEEDANCE_MAX_CONNECTIONS_PER_IP=0 SEEDANCE_MAX_CONNECTIONS_PER_TOKEN=0 \
  SEEDANCE_HTTP_REQUESTS_PER_S=0 SEEDANCE_WS_MESSAGES_PER_S=0 SEEDANCE_MAX_WAITING=$big SEEDANCE_MAX_JOBS=$big \
  SEEDANCE_MAX_NUM_SEQS=$((N + 16)) SEEDANCE_MAX_NUM_BATCHED_TOKENS=$((2 * N + 64)) SEEDANCE_SYNTHETIC_RATE=50 \
  SEEDANCE_MAX_PENDING_TOKENIZE=$big SEEDANCE_SESSION_STORE="sqlite://$OUT/sessions-$LABEL.db" \
  nice -n 19 python -m seedance.cli serve --log-level warning) > "$OUT/serve-$LABEL.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "127.0.0.1:$PORT/readyz" > /dev/null && break; sleep 0.5; done
cpu() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }
( sleep 5; cpu > "$OUT/cpu0-$LABEL"; sleep 10; cpu > "$OUT/cpu1-$LABEL" ) &
SAMPLER=$!
PYTHONPATH="$CODE" nice -n 19 seedance bench transports --url "http://127.0.0.1:$PORT" --transports websocket \
  --concurrency "$N" --duration 10s --ramp 5s --processes 1 --memory-connections 0 \
  --output "$OUT/bench-$LABEL.json" --plots "$OUT/plots" > "$OUT/bench-$LABEL.log" 2>&1
wait $SAMPLER
python - "$OUT" "$LABEL" <<'PY'
import json, os, sys
out, label = sys.argv[1:]
cpu_s = (float(open(f"{out}/cpu1-{label}").read()) - float(open(f"{out}/cpu0-{label}").read())) / os.sysconf("SC_CLK_TCK")
r = json.load(open(f"{out}/bench-{label}.json"))["results"][0]
tokens = r["completed"] * 32  # the bench's requests are 32 tokens each, EOS ignored
print(f"{label}: {r['clients']} clients, {r['chunks_per_s']:.0f} chunks/s, {tokens / 10:.0f} tokens/s, errors "
      f"{r['errors']}, server CPU {cpu_s:.2f} s in 10 s, {cpu_s / r['chunks'] * 1e6:.0f} us/chunk, "
      f"{cpu_s / tokens * 1e6:.0f} us/token")
PY
