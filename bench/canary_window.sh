#!/usr/bin/env bash
# Issue #12's fuzz canary at full size (the command's defaults: 100,000 / 10,000 / 50,000 / 20,000), branch canary,
# in its quiet window (17:28-17:41 UTC). Every leg: the engine in its own process (the server's default), the
# quiet reference a run of as many canary requests as under fuzz (--quiet-match, the default now).
#   fuzz        this tree, the attacker at normal priority (the headline: the harness's defaults)
#   fuzz-idle   this tree, the fuzzers on a SCHED_IDLE thread (--attacker idle): the attacker's CPU on the shared
#               2 cores out of the server's way
#   trace       scripts/fuzz_trace.py at the same size, attacker normal: each slow canary gap lined up with the
#               steps (wall and CPU), GC, loop lag and CPU shares in it (a diagnostic's overhead: not the headline)
#   main-idle   main's server (47ed23f: before the readers' turn, read_turn.py) through this harness, attacker idle
#               (one run of a max each: only if the window has room left)
# A leg starts only if its estimate fits before END; each is bounded by timeout (SIGINT first: the harness's
# finally stops its server). Run from the repository root:
#   PATH=/work/venv/bin:$PATH PYTHONPATH=$PWD nice -n 19 bench/canary_window.sh
# Tiny check on a loaded box: SCALE=0.02 END=$(date -u -d '+10 min' +%H:%M) OUT=/tmp/canary-try bench/canary_window.sh
set -uo pipefail
OUT=${OUT:-bench/results/canary}
END=${END:-17:40:30}
SCALE=${SCALE:-1}
MAIN=${MAIN:-/tmp/canary-main}  # git archive 47ed23f seedance | tar -x -C /tmp/canary-main
LEGS=${LEGS:-fuzz fuzz-idle trace main-idle}
mkdir -p "$OUT"
end_s=$(date -u -d "$END" +%s)
sizes=(--ws-messages $(python -c "print(int(100000*$SCALE))") --binary-frames $(python -c "print(int(10000*$SCALE))")
       --http-bodies $(python -c "print(int(50000*$SCALE))") --realtime-events $(python -c "print(int(20000*$SCALE))"))
est() { python -c "print(int(max(60, $1 * $SCALE)))"; }  # seconds a leg takes (full size, measured on a loaded box)

leg() {  # NAME ESTIMATE_S COMMAND...
  local name=$1 need=$2; shift 2
  local left=$(( end_s - $(date -u +%s) ))
  if (( left < need )); then echo "== $(date -u +%T) skip $name: ${left}s left, needs ~${need}s"; return; fi
  echo "== $(date -u +%T) $name (load $(cut -d' ' -f1-3 /proc/loadavg)): $*"
  timeout --signal=INT --kill-after=20 "$left" "$@" > "$OUT/$name.txt" 2>&1
  echo "== $(date -u +%T) $name rc=$? (load $(cut -d' ' -f1-3 /proc/loadavg))"
  for pid in $(pgrep -f "seedance.cli serve"); do  # a server of this run's left running is a leak: say so
    [[ "$(readlink "/proc/$pid/cwd")" == "$PWD" ]] && echo "!! leaked server $pid"
  done
}

for name in $LEGS; do
  case $name in
    fuzz) leg fuzz "$(est 200)" seedance bench fuzz --seed 0 --hang-timeout 60 "${sizes[@]}" \
            --output "$OUT/fuzz.json" ;;
    fuzz-idle) leg fuzz-idle "$(est 370)" seedance bench fuzz --seed 0 --hang-timeout 60 "${sizes[@]}" \
                 --attacker idle --output "$OUT/fuzz-idle.json" ;;
    trace) leg trace "$(est 150)" python scripts/fuzz_trace.py --scale "$SCALE" --output "$OUT/trace.json" ;;
    main-idle) leg main-idle "$(est 230)" python scripts/fuzz_ab.py --variant "main=$MAIN" --scale "$SCALE" \
                 --rounds 1 --attacker idle --output-dir "$OUT/main-idle" ;;
  esac
done
python - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
f = lambda v: "–" if v is None else f"{v:.1f}"
ppm = lambda d: f"{f(d.get('p50_ms'))} / {f(d.get('p99_ms'))} / {f(d.get('max_ms'))} ms"
print("| run | exits / 5xx / non-JSON / undocumented | hangs | canary text = quiet (requests: quiet + fuzz + "
      "matched + beside) | quiet (8) max | quiet, as many requests, p50 / p99 / max | beside the client's CPU "
      "| under fuzz p50 / p99 / max | under fuzz: first / later max | max ÷ matched (÷ beside) | attacker, "
      "messages/s, client cores | took |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for path in sorted([*out.glob("fuzz*.json"), *out.glob("main-idle/*.json")]):
    d = json.loads(path.read_text())
    x, q, m, b, ld = d["defects"], d["quiet"], d.get("quiet_matched") or {}, d["quiet_beside_fuzz_cpu"], d["loaded"]
    r, a = d.get("max_ratio") or {}, d.get("attacker") or {}
    name = path.stem if path.parent == out else f"{path.parent.name}/{path.stem}"
    print(f"| {name} | {x['exits']} / {x['5xx']} / {x['non_json_errors']} / {x['undocumented']} | {x['hangs']} "
          f"| {'yes' if d['canary_text_equal'] else 'NO'} ({q['requests']} + {ld['requests']} + "
          f"{m.get('requests', 0)} + {b['requests']}) | {f(q['max_ms'])} ms | {ppm(m)} | {ppm(b)} | **{ppm(ld)}** "
          f"| {f(ld.get('first_max_ms'))} / {f(ld.get('later_max_ms'))} ms | {r.get('matched')}× ({r.get('beside')}×) "
          f"| {'normal' if a.get('policy') == 'other' else a.get('policy')}, {a.get('fuzz_rate_per_s')}, {d['fuzz_client_cores']} | {d['duration_s']} s |")
EOF
echo "== $(date -u +%T) done"
