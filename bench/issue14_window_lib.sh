# Sourced by issue 14's quiet-window scripts (bench/issue14_window.sh, bench/c1speed_window.sh,
# bench/c1fuse_window.sh): makes $OUT, logs the load average and the three busiest processes every 10 s to
# $OUT/load.log (stopped on exit), and defines `run CMD...`, which prints the time and load before running CMD.
set -uo pipefail
mkdir -p "$OUT"
(while sleep 10; do echo "$(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg) $(ps -eo pcpu,args --sort=-pcpu --no-headers \
    | head -3 | cut -c1-90 | tr '\n' '|')"; done > "$OUT/load.log") &
LOADLOG=$!
trap 'kill $LOADLOG' EXIT
run() { echo "== $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg): $*"; "$@"; }
